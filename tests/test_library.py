"""CenterLoss as a library: the README's own-loop example, mixed precision,
torch.compile, DistributedDataParallel on two CPU processes, and the installed
`centerloss-viz` command's dispatch."""

import importlib.util
import os
import socket
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from centerloss import CenterLoss, scale_feature_grad
from clviz import commands, errors
from tests.conftest import REPO


def own_loop():
    spec = importlib.util.spec_from_file_location("own_loop", REPO / "examples" / "own_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_example_exactly():
    """The README's loop is the example's marked block, line for line, so neither can drift."""
    lines = (REPO / "examples" / "own_loop.py").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if "# README: from here" in line)
    end = next(i for i, line in enumerate(lines) if "# README: to here" in line)
    block = textwrap.dedent("\n".join(lines[start + 1:end]))
    assert len(block.splitlines()) > 20 and block in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_example_pulls_features_in_with_either_rule_and_saves_the_centers(tmp_path):
    loop = own_loop()
    features, labels, baseline = loop.train("sgd", weight=0.0, epochs=4)
    softmax_spread = loop.spread(features, labels, baseline.centers.detach())
    for rule in ("sgd", "paper"):
        path = tmp_path / f"{rule}.pt"
        features, labels, center_loss = loop.train(rule, weight=0.5, epochs=4, centers_file=str(path))
        restored = CenterLoss(10, 2, update=rule)
        restored.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(restored.centers, center_loss.centers)
        assert loop.spread(features, labels, restored.centers.detach()) < 0.8 * softmax_spread, rule
    assert [loop.lambda_at(t) for t in (0.0, 0.99, 1.5, 2.0, 7.0)] == pytest.approx([0, 0, 0.05, 0.1, 0.1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_loss_and_center_gradients_stay_fp32(dtype):
    """Features from an autocast region arrive in low precision; the centers and the loss stay fp32."""
    torch.manual_seed(0)
    layer, center_loss = torch.nn.Linear(8, 2), CenterLoss(4, 2)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    with torch.autocast("cpu", dtype=dtype):
        features = layer(x)
        loss = center_loss(features, y)
    assert features.dtype == dtype and loss.dtype == torch.float32
    loss.backward()
    assert center_loss.centers.grad.dtype == torch.float32
    expected = 0.5 * ((features.detach().float() - center_loss.centers.detach()[y]) ** 2).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.slow  # compiles with the C++ compiler: ~20 s the first time
def test_compiled_loss_gives_the_eager_loss_and_gradients(compiler):
    torch.manual_seed(0)
    center_loss = CenterLoss(10, 2, normalize="class")
    features, labels = torch.randn(32, 2, requires_grad=True), torch.randint(0, 10, (32,))

    def step(fn):
        features.grad, center_loss.centers.grad = None, None
        loss = fn(scale_feature_grad(features, 0.3), labels)
        loss.backward()
        return loss.detach(), features.grad.clone(), center_loss.centers.grad.clone()

    eager, compiled = step(center_loss), step(torch.compile(center_loss))
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rank(rank: int, world: int, port: int, out) -> None:
    """One process of the DDP test: half of the same batch per rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        features, labels = torch.randn(40, 2), torch.randint(0, 5, (40,))
        mine = slice(rank * 20, (rank + 1) * 20)
        start = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        # "paper": Eq. 4 over the global batch, through the all-reduce in update_centers.
        paper = CenterLoss(5, 2, update="paper")
        paper.centers.data.copy_(start)
        paper.update_centers(features[mine], labels[mine])
        local = CenterLoss(5, 2, update="paper")
        local.centers.data.copy_(start)
        local.update_centers(features[mine], labels[mine], sync=False)
        # "sgd": the centers as a DDP module, whose gradients DDP averages over the ranks.
        sgd = CenterLoss(5, 2)
        sgd.centers.data.copy_(start)
        wrapped = DistributedDataParallel(sgd)  # kept alive through backward: its reducer does the all-reduce
        wrapped(features[mine], labels[mine]).backward()
        out.put((rank, paper.centers.detach().clone(), local.centers.detach().clone(), sgd.centers.grad.clone()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~15 s on 2 cores
def test_under_ddp_both_rules_see_the_global_batch():
    context = mp.get_context("spawn")
    out = context.Queue()
    port = free_port()
    procs = [context.Process(target=ddp_rank, args=(rank, 2, port, out)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = dict((r[0], r[1:]) for r in (out.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    torch.manual_seed(0)
    features, labels = torch.randn(40, 2), torch.randint(0, 5, (40,))
    start = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    whole = CenterLoss(5, 2, update="paper")
    whole.centers.data.copy_(start)
    whole.update_centers(features, labels)  # one process, the whole batch
    grad = CenterLoss(5, 2)
    grad.centers.data.copy_(start)
    grad(features, labels).backward()
    for rank in (0, 1):
        paper, local, sgd_grad = results[rank]
        assert torch.allclose(paper, whole.centers, atol=1e-6)
        assert torch.allclose(sgd_grad, grad.centers.grad, atol=1e-6)
    assert not torch.allclose(results[0][1], results[1][1])  # sync=False: each rank its own half


def test_sync_without_a_process_group_is_refused():
    loss = CenterLoss(3, 2, update="paper")
    with pytest.raises(RuntimeError, match="init_process_group"):
        loss.update_centers(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), sync=True)


def test_the_console_command_dispatches_and_refuses_unknown_commands(capsys, tmp_path):
    assert commands.main(["--help"]) == 0 and "centerloss-viz train" in capsys.readouterr().out
    assert commands.main([]) == errors.EXIT_BAD_INPUT
    assert commands.main(["trian"]) == errors.EXIT_BAD_INPUT
    assert "unknown command 'trian' (did you mean 'train'?)" in capsys.readouterr().err
    assert commands.main(["show", str(tmp_path)]) == errors.EXIT_BAD_INPUT  # no embeddings there: one line
    assert "no embeddings" in capsys.readouterr().err


ACCELERATORS = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
                pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs Apple's MPS"))]


@pytest.mark.parametrize("device", ACCELERATORS)
def test_on_an_accelerator_both_rules_give_the_cpu_results(device):
    torch.manual_seed(0)
    features, labels = torch.randn(64, 2), torch.randint(0, 10, (64,))
    results = {}
    for where in ("cpu", device):
        for rule in ("sgd", "paper"):
            torch.manual_seed(1)
            loss = CenterLoss(10, 2, update=rule).to(where)
            x = features.to(where).requires_grad_()
            value = loss(scale_feature_grad(x, 0.5), labels.to(where))
            value.backward()
            if rule == "paper":
                loss.update_centers(x.detach(), labels.to(where))
            results[where, rule] = [t.detach().cpu() for t in (value, x.grad, loss.centers)]
    for rule in ("sgd", "paper"):
        for a, b in zip(results["cpu", rule], results[device, rule]):
            assert torch.allclose(a, b, atol=1e-5)
