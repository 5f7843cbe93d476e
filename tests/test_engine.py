"""The training step against a plain, independently written reference loop."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import engine
from centerloss import CenterLoss
from config import Config
from data import Split
from nets import LeNetsPP


def tiny_split(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def reference_losses(cfg, split, steps):
    """The textbook recipe (as in the popular PyTorch repo): loss = nll + lambda * L_c,
    then undo lambda on the center gradients by dividing by it. Contiguous
    memory, fp32, one optimizer call at a time."""
    torch.manual_seed(cfg.seed)
    model = LeNetsPP(feat_dim=cfg.feat_dim, head=cfg.head, head_scale=cfg.head_scale, head_margin=cfg.head_margin)
    centers = CenterLoss(10, cfg.feat_dim)
    net_opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    center_opt = torch.optim.SGD(centers.parameters(), lr=cfg.center_lr)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed))
    losses = []
    model.train()
    for index in order.split(cfg.batch_size)[:steps]:
        features, log_probs = model(split.images[index])
        labels = split.labels[index]
        if cfg.head == "cosface":  # CosFace by hand: s * (cos - m) for the true class
            cos = F.normalize(features, dim=1) @ F.normalize(model.classifier.weight, dim=1).T
            margin = F.one_hot(labels, 10) * cfg.head_margin
            log_probs = F.log_softmax(cfg.head_scale * (cos - margin), dim=1)
        nll = F.nll_loss(log_probs, labels)
        pull = centers(features, labels)
        net_opt.zero_grad()
        center_opt.zero_grad()
        (nll + cfg.center_loss_weight * pull).backward()
        centers.centers.grad /= cfg.center_loss_weight
        if cfg.grad_clip is not None:  # by hand: scale every gradient by clip / total norm when above it
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            total = torch.sqrt(sum((g ** 2).sum() for g in grads))
            for g in grads:
                g.mul_(min(1.0, cfg.grad_clip / (float(total) + 1e-6)))
        net_opt.step()
        center_opt.step()
        losses.append((nll.item(), pull.item()))
    return losses, model, centers


@pytest.mark.parametrize("channels_last, extra", [
    (False, {}),
    (True, {}),
    (False, dict(head="cosface", head_scale=10.0, head_margin=0.3, grad_clip=1.0)),  # margin head + clipping
])
def test_fast_path_matches_the_reference_loop(channels_last, extra):
    cfg = dataclasses.replace(Config(), batch_size=50, center_loss_weight=0.3, bf16="off",
                              channels_last="on" if channels_last else "off", **extra)
    split = tiny_split()
    expected, ref_model, ref_centers = reference_losses(cfg, split, steps=6)
    speed = engine.resolve_speed(cfg, torch.device("cpu"))
    assert speed.channels_last == channels_last and not speed.bf16
    torch.manual_seed(cfg.seed)
    parts = engine.build_parts(cfg, torch.device("cpu"), speed)
    result = engine.train_one_epoch(parts, split, cfg, torch.Generator().manual_seed(cfg.seed), speed, epoch=1,
                                    record_steps=True, show_progress=False)
    got = result.step_losses
    assert len(got) == 6
    for (nll, pull), (ref_nll, ref_pull) in zip(got, expected):
        assert nll == pytest.approx(ref_nll, rel=1e-4, abs=1e-5)
        assert pull == pytest.approx(ref_pull, rel=1e-4, abs=1e-5)
    assert torch.allclose(parts.center_loss.centers, ref_centers.centers, atol=1e-4)
    assert result.features.shape == (300, 2)


def test_bf16_path_stays_close_to_fp32():
    split = tiny_split()
    runs = []
    for bf16 in ("off", "on"):
        cfg = dataclasses.replace(Config(), batch_size=50, bf16=bf16, channels_last="on")
        speed = engine.resolve_speed(cfg, torch.device("cpu"))
        torch.manual_seed(0)
        parts = engine.build_parts(cfg, torch.device("cpu"), speed)
        runs.append(engine.train_one_epoch(parts, split, cfg, torch.Generator().manual_seed(0), speed, epoch=1,
                                           record_steps=True, show_progress=False).step_losses)
    for (nll32, _), (nll16, _) in zip(*runs):
        assert nll16 == pytest.approx(nll32, rel=0.05)


def test_paper_mode_moves_centers_by_eq4_only():
    cfg = dataclasses.replace(Config(), batch_size=300, center_update="paper", bf16="off", channels_last="off")
    speed = engine.resolve_speed(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    parts = engine.build_parts(cfg, torch.device("cpu"), speed)
    assert parts.center_optimizer is None
    before = parts.center_loss.centers.detach().clone()
    split = tiny_split()
    parts.model.train()
    with torch.no_grad():
        order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
        features, _ = parts.model(split.images[order])
    expected = CenterLoss(10, 2, update="paper", alpha=cfg.center_alpha)
    expected.centers.data.copy_(before)
    expected.update_centers(features, split.labels[order])
    engine.train_one_epoch(parts, split, cfg, torch.Generator().manual_seed(0), speed, epoch=1, show_progress=False)
    assert torch.allclose(parts.center_loss.centers, expected.centers, atol=1e-5)


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        engine.pick_device("cuda")


# ---------- the fused PReLU switch ----------

def fused_choice(choice, steps, device="cpu"):
    return engine.resolve_fused_prelu(choice, torch.device(device), False, False, steps)


def test_fused_prelu_auto_rule(monkeypatch):
    assert fused_choice("off", 10**6) == (False, "")
    assert fused_choice("auto", 999) == (False, "run shorter than 1000 steps")
    assert fused_choice("auto", 10**6, device="cuda") == (False, "")  # not where a GPU's time goes
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    assert fused_choice("auto", 10**6) == (False, "no C++ compiler found")


def test_fused_prelu_auto_compiles_without_touching_the_random_draws(compiler):
    state = torch.get_rng_state()
    assert fused_choice("auto", 1000) == (True, "")  # compiles for real
    assert torch.equal(torch.get_rng_state(), state)  # the probe leaves the run's random draws alone


def test_fused_prelu_that_cannot_compile(monkeypatch):
    monkeypatch.setattr(engine, "fused_prelu_problem", lambda *a: "CppCompileError: cannot find Python.h")
    assert fused_choice("auto", 10**6) == (False, "torch.compile failed: CppCompileError: cannot find Python.h")
    with pytest.raises(ValueError, match=r"--fused-prelu on: .*Python.h.*use --fused-prelu off"):
        fused_choice("on", 10**6)


def test_fused_prelu_step_matches_the_reference_loop(compiler):
    cfg = dataclasses.replace(Config(), batch_size=50, center_loss_weight=0.3, bf16="off", channels_last="on",
                              fused_prelu="on")
    split = tiny_split()
    expected, _, ref_centers = reference_losses(cfg, split, steps=6)
    speed = engine.resolve_speed(cfg, torch.device("cpu"), train_steps=6)
    assert speed.fused_prelu and "fused PReLU on" in speed.describe()
    torch.manual_seed(cfg.seed)
    parts = engine.build_parts(cfg, torch.device("cpu"), speed)
    assert all(m.train_kernel is not F.prelu for m in parts.model.modules() if hasattr(m, "train_kernel"))
    got = engine.train_one_epoch(parts, split, cfg, torch.Generator().manual_seed(cfg.seed), speed, epoch=1,
                                 record_steps=True, show_progress=False).step_losses
    for (nll, pull), (ref_nll, ref_pull) in zip(got, expected):
        assert nll == pytest.approx(ref_nll, rel=1e-4, abs=1e-5)
        assert pull == pytest.approx(ref_pull, rel=1e-4, abs=1e-5)
    assert torch.allclose(parts.center_loss.centers, ref_centers.centers, atol=1e-4)


# ---------- the captured (CUDA-graph) step ----------

def two_epochs(cfg, speed, device, n=330, record_steps=False):
    """Two epochs (a StepLR change between them, a short last batch in each); returns results and parts."""
    split = tiny_split(n)
    split = Split(split.images.to(device), split.labels.to(device))
    torch.manual_seed(cfg.seed)
    parts = engine.build_parts(cfg, device, speed)
    generator = torch.Generator().manual_seed(cfg.seed)
    results = []
    for epoch in (1, 2):
        results.append(engine.train_one_epoch(parts, split, cfg, generator, speed, epoch=epoch, show_progress=False,
                                              record_steps=record_steps))
        parts.scheduler.step()
    return results, parts


@pytest.mark.parametrize("extra", [dict(center_update="sgd", grad_clip=1.0), dict(center_update="paper")])
def test_graphed_step_path_is_the_eager_step(extra):
    """On the CPU the graph path runs without recording: warm-up, fixed index
    buffer, persistent sums, recapture on a new lr, eager short batches — it must
    give exactly what the plain loop gives."""
    cfg = dataclasses.replace(Config(), batch_size=50, lr=0.01, lr_step=1, lr_gamma=0.5, center_loss_weight=0.1,
                              bf16="off", channels_last="off", **extra)
    cpu = torch.device("cpu")
    plain = engine.resolve_speed(cfg, cpu)
    graphed = dataclasses.replace(plain, cuda_graphs=True)
    expected, ref = two_epochs(cfg, plain, cpu, record_steps=True)
    sizes = [50] * 6 + [30]
    for result in expected:  # the epoch's sums against its own steps, batch-size weighted
        assert result.nll == pytest.approx(sum(n * nll for n, (nll, _) in zip(sizes, result.step_losses)) / 330, rel=1e-5)
        assert result.center_loss == pytest.approx(sum(n * c for n, (_, c) in zip(sizes, result.step_losses)) / 330, rel=1e-5)
    got, parts = two_epochs(cfg, graphed, cpu)
    assert parts.graph is not None and not parts.graph.record and parts.graph.warm == engine.GraphedStep.WARMUP_STEPS
    for a, b in zip(expected, got):
        assert (a.nll, a.center_loss, a.accuracy) == pytest.approx((b.nll, b.center_loss, b.accuracy), rel=1e-6)
        assert torch.equal(a.features, b.features)
    assert not torch.equal(got[0].features, got[1].features)  # each epoch kept its own copy
    for (name, x), y in zip(ref.model.state_dict().items(), parts.model.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-6, atol=1e-7), name
    assert torch.allclose(ref.center_loss.centers, parts.center_loss.centers, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_matches_eager_on_a_gpu():
    cfg = dataclasses.replace(Config(), batch_size=50, lr=0.01, lr_step=1, lr_gamma=0.5, center_loss_weight=0.1,
                              bf16="off", channels_last="on", device="cuda")
    gpu = torch.device("cuda")
    eager = engine.resolve_speed(dataclasses.replace(cfg, cuda_graphs="off"), gpu)
    graphed = engine.resolve_speed(dataclasses.replace(cfg, cuda_graphs="on"), gpu)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    expected, ref = two_epochs(cfg, eager, gpu)
    got, parts = two_epochs(cfg, graphed, gpu)
    assert parts.graph.record and parts.graph.captures == 2  # one per learning rate
    for a, b in zip(expected, got):
        assert (a.nll, a.center_loss) == pytest.approx((b.nll, b.center_loss), rel=1e-4)
    for x, y in zip(ref.model.parameters(), parts.model.parameters()):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-5)


def test_cuda_graphs_on_the_cpu_is_a_clear_error():
    cfg = dataclasses.replace(Config(), cuda_graphs="on")
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA GPU"):
        engine.resolve_speed(cfg, torch.device("cpu"))
    assert not engine.resolve_speed(dataclasses.replace(cfg, cuda_graphs="auto"), torch.device("cpu")).cuda_graphs


def test_failed_capture_falls_back_to_eager_steps_without_losing_the_batch():
    seen = []
    graphed = engine.GraphedStep(lambda index: seen.append(index.clone()), batch_size=3, device=torch.device("cpu"))
    graphed.warm = engine.GraphedStep.WARMUP_STEPS  # past warm-up: the next call would record

    def broken_capture(lr):
        raise RuntimeError("operation not permitted when stream is capturing")
    graphed._capture = broken_capture
    with pytest.warns(UserWarning, match="CUDA graph capture failed .*not permitted.*goes on without graphs"):
        graphed(torch.tensor([4, 5, 6]), lr=0.1)
    graphed(torch.tensor([7, 8, 9]), lr=0.1)  # no second attempt, no second warning
    assert [t.tolist() for t in seen] == [[4, 5, 6], [7, 8, 9]] and not graphed.record
