"""The speed switches' rules: device choice, the fused PReLU's auto rule and
its fallback, the FFT convs' auto rule, CUDA graphs' refusal on the CPU and their capture fallback,
and the folded evaluation against the eval-mode model."""

import dataclasses

import pytest
import torch

from clviz import speed as speedlib
from clviz.config import Config
from clviz.data import Split
from clviz.training import StepBuffers, build_parts, evaluate, forward_backward, update_and_record
from nets import LeNetsPP


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        speedlib.pick_device("cuda")


def test_mps_request_without_mps_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speedlib, "mps_available", lambda: False)
    with pytest.raises(ValueError, match="--device mps was asked for but PyTorch reports no MPS device"):
        speedlib.pick_device("mps")
    monkeypatch.setattr(speedlib, "mps_available", lambda: True)
    assert speedlib.pick_device("mps").type == "mps"
    assert speedlib.pick_device("auto").type in ("cpu", "cuda")  # auto never picks the unmeasured MPS


def test_the_mps_path_turns_off_every_cuda_and_cpu_only_switch():
    run_speed = speedlib.resolve_speed(Config(device="mps"), torch.device("mps"), train_steps=10**6)
    assert not (run_speed.cuda_graphs or run_speed.fused_prelu or run_speed.bf16 or run_speed.channels_last
                or run_speed.fft_conv or run_speed.folded_eval)


def test_fft_conv_auto_rule(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert speedlib.resolve_fft_conv("auto", cpu, bf16=False)  # where it was measured
    assert not speedlib.resolve_fft_conv("auto", cpu, bf16=True)
    assert not speedlib.resolve_fft_conv("auto", gpu, bf16=False)
    assert not speedlib.resolve_fft_conv("off", cpu, bf16=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not speedlib.resolve_fft_conv("auto", cpu, bf16=False)  # unmeasured there: the direct convs
    assert speedlib.resolve_fft_conv("on", cpu, bf16=False)
    with pytest.raises(ValueError, match=r"--fft-conv on needs fp32 training on the CPU \(this run: cpu, bf16 "
                                         r"autocast on\); use --fft-conv auto or off, or --bf16 off"):
        speedlib.resolve_fft_conv("on", cpu, bf16=True)
    with pytest.raises(ValueError, match=r"--fft-conv on needs fp32 training on the CPU \(this run: cuda\)"):
        speedlib.resolve_fft_conv("on", gpu, bf16=False)


def fused_choice(choice, steps, device="cpu"):
    return speedlib.resolve_fused_prelu(choice, torch.device(device), False, False, steps)


def test_fused_prelu_auto_rule(monkeypatch):
    assert fused_choice("off", 10**6) == (False, "")
    assert fused_choice("auto", 999) == (False, "run shorter than 1000 steps")
    assert fused_choice("auto", 10**6, device="cuda") == (False, "")  # not where a GPU's time goes
    monkeypatch.setattr(speedlib.shutil, "which", lambda name: None)
    assert fused_choice("auto", 10**6) == (False, "no C++ compiler found")


def test_fused_prelu_auto_compiles_without_touching_the_random_draws(compiler):
    state = torch.get_rng_state()
    assert fused_choice("auto", 1000) == (True, "")  # compiles for real
    assert torch.equal(torch.get_rng_state(), state)  # the probe leaves the run's random draws alone


def test_fused_prelu_that_cannot_compile(monkeypatch):
    monkeypatch.setattr(speedlib, "fused_prelu_problem", lambda *a: "CppCompileError: cannot find Python.h")
    assert fused_choice("auto", 10**6) == (False, "torch.compile failed: CppCompileError: cannot find Python.h")
    with pytest.raises(ValueError, match=r"--fused-prelu on: .*Python.h.*use --fused-prelu off"):
        fused_choice("on", 10**6)


def test_cuda_graphs_on_the_cpu_is_a_clear_error():
    cfg = dataclasses.replace(Config(), cuda_graphs="on")
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA GPU"):
        speedlib.resolve_speed(cfg, torch.device("cpu"))
    assert not speedlib.resolve_speed(dataclasses.replace(cfg, cuda_graphs="auto"), torch.device("cpu")).cuda_graphs


def test_failed_capture_falls_back_to_eager_steps_without_losing_the_batch():
    seen = []
    graphed = speedlib.GraphedStep(lambda index: seen.append(index.clone()), batch_size=3, device=torch.device("cpu"))
    graphed.warm = speedlib.GraphedStep.WARMUP_STEPS  # past warm-up: the next call would record

    def broken_capture(lr):
        raise RuntimeError("operation not permitted when stream is capturing")
    graphed._capture = broken_capture
    with pytest.warns(UserWarning, match="CUDA graph capture failed .*not permitted.*goes on without graphs"):
        graphed(torch.tensor([4, 5, 6]), lr=0.1)
    graphed(torch.tensor([7, 8, 9]), lr=0.1)  # no second attempt, no second warning
    assert [t.tolist() for t in seen] == [[4, 5, 6], [7, 8, 9]] and not graphed.record


def trained_looking_model(seed=0, **kwargs):
    """A LeNetsPP whose BatchNorms hold non-trivial running statistics and affine
    weights, so folding them into the convs is really exercised."""
    torch.manual_seed(seed)
    model = LeNetsPP(**kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("head", ["linear", "arcface"])
def test_folded_evaluation_equals_the_eval_mode_model(head):
    model = trained_looking_model(head=head)
    images = torch.randn(37, 1, 28, 28)  # an odd batch: no layout may assume a multiple of anything
    with torch.no_grad():
        want_features, want_log_probs = model(images)
        features, log_probs = speedlib.FoldedNet(model)(images)
    torch.testing.assert_close(features, want_features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_probs, want_log_probs, rtol=1e-4, atol=1e-5)
    # The reference really depends on the BatchNorm statistics the fold must carry.
    model.stages[0][1].running_var.mul_(4)
    with torch.no_grad():
        assert not torch.allclose(model(images)[0], want_features, rtol=1e-2, atol=1e-4)


def test_folded_evaluation_gives_the_same_metrics_and_rebuilds_after_an_update():
    model = trained_looking_model()
    split = Split(torch.randn(250, 1, 28, 28), torch.randint(0, 10, (250,)))
    plain = speedlib.Speed(bf16=False, channels_last=False, cuda_graphs=False, threads=1)
    folded = dataclasses.replace(plain, folded_eval=True)
    nll, acc, features, _ = evaluate(model, split, plain, batch_size=64)
    nll_f, acc_f, features_f, _ = evaluate(model, split, folded, batch_size=64)
    assert acc_f == acc and nll_f == pytest.approx(nll, rel=1e-5)
    torch.testing.assert_close(features_f, features, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model.stages[1][0].weight.mul_(-2)  # new weights: the next evaluation must see them
    changed = evaluate(model, split, plain)[2]
    assert not torch.allclose(changed, features, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(evaluate(model, split, folded)[2], changed, rtol=1e-4, atol=1e-5)


def test_folded_evaluation_switch():
    cpu = torch.device("cpu")
    assert speedlib.resolve_speed(Config(bf16="off"), cpu, 10).folded_eval
    assert not speedlib.resolve_speed(Config(bf16="on"), cpu, 10).folded_eval  # bf16 evaluation stays as it was
    assert not speedlib.resolve_speed(Config(folded_eval="off"), cpu, 10).folded_eval
    with pytest.raises(ValueError, match="--folded-eval on needs the CPU"):
        speedlib.resolve_speed(Config(folded_eval="on", device="mps"), torch.device("mps"), 10)


def three_steps(cfg: Config, threads: int) -> list:
    """The network's weights after three training steps on fixed random data, at `threads` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        speed = speedlib.resolve_speed(cfg, torch.device("cpu"), train_steps=3)
        torch.manual_seed(0)
        parts = build_parts(cfg, torch.device("cpu"), speed)
        generator = torch.Generator().manual_seed(1)
        train = Split(torch.randn(150, 1, 28, 28, generator=generator), torch.randint(0, 10, (150,), generator=generator))
        buffers = StepBuffers(train, cfg.feat_dim)
        for step in range(3):
            index = torch.arange(step * 50, step * 50 + 50)
            update_and_record(parts, cfg, buffers, index, forward_backward(parts, train, speed, index, torch.tensor(0.1)))
        return [p.detach().clone() for p in parts.model.parameters()]
    finally:
        torch.set_num_threads(before)


CPU_PATHS = {"fp32 direct": dict(bf16="off", fft_conv="off"), "fp32 FFT convs": dict(bf16="off", fft_conv="on"),
             "bf16": dict(bf16="on", fft_conv="off")}


@pytest.mark.parametrize("path", CPU_PATHS)
def test_the_same_thread_count_gives_the_same_bits_on_every_cpu_path(path):
    """What makes --workers and a one-after-another sweep agree (with --num-threads): a step is a function
    of its inputs and the thread count alone. The two thread counts below may differ, and on oneDNN's
    bf16 and AVX-512 paths they do, which this test records rather than hides."""
    if path == "bf16" and not speedlib.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (emulated: auto never picks it)")
    cfg = Config(fused_prelu="off", **CPU_PATHS[path])
    first, again, one_thread = three_steps(cfg, 2), three_steps(cfg, 2), three_steps(cfg, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.allclose(a, b, rtol=0.05, atol=5e-3) for a, b in zip(first, one_thread))  # close, maybe not equal
