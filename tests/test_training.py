"""The training step and epoch loop against a plain, independently written
reference loop (conftest.reference_epoch), and the captured-step path against
the eager one."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from centerloss import CenterLoss
from clviz import speed as speedlib
from clviz.config import Config, augments
from clviz.training import augment, build_parts
from tests.conftest import app_epochs, plain, reference_epoch, textbook, tiny_split


def assert_same_as_reference(cfg, run_speed, atol=1e-4):
    split = tiny_split()
    ref_losses, ref_model, ref_centers = reference_epoch(cfg, split)
    (result,), parts, _ = app_epochs(cfg, run_speed, split=split)
    sizes = [len(i) for i in torch.arange(len(split)).split(cfg.batch_size)]
    n = len(split)
    # The epoch's averages are the batch-size-weighted means of the reference's step losses.
    assert result.nll == pytest.approx(sum(s * nll for s, (nll, _) in zip(sizes, ref_losses)) / n, rel=1e-4)
    assert result.center_loss == pytest.approx(sum(s * c for s, (_, c) in zip(sizes, ref_losses)) / n, rel=1e-4)
    for (name, ours), theirs in zip(parts.model.named_parameters(), ref_model.parameters()):
        assert torch.allclose(ours, theirs, atol=atol), name
    assert torch.allclose(parts.center_loss.centers, ref_centers.centers, atol=atol)
    assert result.features.shape == (n, cfg.feat_dim)


@pytest.mark.parametrize("channels_last, extra", [
    (False, {}),
    (True, {}),
    (False, dict(head="cosface", head_scale=10.0, head_margin=0.3, grad_clip=1.0)),  # margin head + clipping
])
def test_epoch_matches_the_reference_loop(channels_last, extra):
    cfg = textbook(Config(), batch_size=50, lr=0.001, center_loss_weight=0.3, channels_last="on" if channels_last else "off",
                   **extra)
    run_speed = speedlib.resolve_speed(cfg, torch.device("cpu"))
    assert run_speed.channels_last == channels_last and not run_speed.bf16
    assert_same_as_reference(cfg, run_speed)


def test_fused_prelu_epoch_matches_the_reference_loop(compiler):
    cfg = textbook(Config(), batch_size=50, lr=0.001, center_loss_weight=0.3, channels_last="on", fused_prelu="on")
    run_speed = speedlib.resolve_speed(cfg, torch.device("cpu"), train_steps=6)
    assert run_speed.fused_prelu and "fused PReLU on" in run_speed.describe()
    _, parts, _ = app_epochs(cfg, run_speed)
    assert all(m.train_kernel is not F.prelu for m in parts.model.modules() if hasattr(m, "train_kernel"))
    assert_same_as_reference(cfg, run_speed)


@pytest.mark.parametrize("channels_last", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fft_conv_epoch_matches_the_reference_loop(channels_last):
    # batch 70 of 300 images: the last batch is a short one
    cfg = textbook(Config(), batch_size=70, lr=0.001, center_loss_weight=0.3, fft_conv="on",
                   channels_last="on" if channels_last else "off")
    run_speed = speedlib.resolve_speed(cfg, torch.device("cpu"))
    assert run_speed.fft_conv and "FFT convs on" in run_speed.describe()
    _, parts, _ = app_epochs(cfg, run_speed)
    kernels = [conv.train_kernel for conv in parts.model.convs()]
    assert [k is not None for k in kernels] == [i in speedlib.FFT_CONV_LAYERS for i in range(6)]
    assert_same_as_reference(cfg, run_speed)


def test_bf16_path_stays_close_to_fp32():
    results = []
    for bf16 in ("off", "on"):  # 3 steps: bf16 is emulated (slow) on CPUs without native support
        cfg = plain(Config(), batch_size=50, bf16=bf16, channels_last="on")
        (result,), _, _ = app_epochs(cfg, speedlib.resolve_speed(cfg, torch.device("cpu")), split=tiny_split(150))
        results.append(result)
    assert results[1].nll == pytest.approx(results[0].nll, rel=0.05)
    assert results[1].accuracy == pytest.approx(results[0].accuracy, abs=5.0)


def test_paper_mode_moves_centers_by_eq4_only():
    cfg = textbook(Config(), batch_size=300, center_update="paper")
    run_speed = speedlib.resolve_speed(cfg, torch.device("cpu"))
    split = tiny_split()
    torch.manual_seed(0)
    parts = build_parts(cfg, torch.device("cpu"), run_speed)
    assert parts.center_optimizer is None
    before = parts.center_loss.centers.detach().clone()
    parts.model.train()
    with torch.no_grad():  # the one step's features, before the weights move
        order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
        features, _ = parts.model(split.images[order])
    expected = CenterLoss(10, 2, update="paper", alpha=cfg.center_alpha)
    expected.centers.data.copy_(before)
    expected.update_centers(features, split.labels[order])
    _, parts, _ = app_epochs(cfg, run_speed, split=split)
    assert torch.allclose(parts.center_loss.centers, expected.centers, atol=1e-5)


# The quick subset (under a minute) keeps the first; the full suite runs all three.
@pytest.mark.parametrize("extra", [dict(center_update="sgd", grad_clip=1.0),
                                   pytest.param(dict(center_update="paper"), marks=pytest.mark.slow),
                                   pytest.param(dict(center_loss_delay=0.5, center_loss_ramp=1.0),  # lambda changes every step
                                                marks=pytest.mark.slow)])
def test_graphed_step_path_is_the_eager_step(extra):
    """On the CPU the graph path runs without recording: warm-up, fixed index
    buffer, persistent sums, recapture on a new lr, eager short batches — it must
    give exactly what the plain loop gives, over two epochs of 330 images."""
    cfg = textbook(Config(), batch_size=50, lr=0.01, lr_step=1, lr_gamma=0.5, center_loss_weight=0.1, **extra)
    cpu = torch.device("cpu")
    eager = speedlib.resolve_speed(cfg, cpu)
    graphed = dataclasses.replace(eager, cuda_graphs=True)
    expected, ref, _ = app_epochs(cfg, eager, cpu, split=tiny_split(330), epochs=2)
    got, parts, runner = app_epochs(cfg, graphed, cpu, split=tiny_split(330), epochs=2)
    assert runner.graph is not None and not runner.graph.record
    assert runner.graph.warm == speedlib.GraphedStep.WARMUP_STEPS
    for a, b in zip(expected, got):
        assert (a.nll, a.center_loss, a.accuracy) == pytest.approx((b.nll, b.center_loss, b.accuracy), rel=1e-6)
        assert torch.equal(a.features, b.features)
    assert not torch.equal(got[0].features, got[1].features)  # each epoch kept its own copy
    for (name, x), y in zip(ref.model.state_dict().items(), parts.model.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-6, atol=1e-7), name
    assert torch.allclose(ref.center_loss.centers, parts.center_loss.centers, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_matches_eager_on_a_gpu():
    cfg = textbook(Config(), batch_size=50, lr=0.01, lr_step=1, lr_gamma=0.5, center_loss_weight=0.1,
                   channels_last="on", device="cuda")
    gpu = torch.device("cuda")
    eager = speedlib.resolve_speed(dataclasses.replace(cfg, cuda_graphs="off"), gpu)
    graphed = speedlib.resolve_speed(dataclasses.replace(cfg, cuda_graphs="on"), gpu)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    expected, ref, _ = app_epochs(cfg, eager, gpu, split=tiny_split(330), epochs=2)
    got, parts, runner = app_epochs(cfg, graphed, gpu, split=tiny_split(330), epochs=2)
    assert runner.graph.record and runner.graph.captures == 2  # one per learning rate
    for a, b in zip(expected, got):
        assert (a.nll, a.center_loss) == pytest.approx((b.nll, b.center_loss), rel=1e-4)
    for x, y in zip(ref.model.parameters(), parts.model.parameters()):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_what_auto_turns_on_for_cuda_trains_as_fp32_does_on_a_gpu():
    """auto turns bf16 and channels_last on for CUDA: eager steps with them follow the fp32
    contiguous steps on the same card within bf16's rounding, and features stay finite."""
    cfg = textbook(Config(), batch_size=50, lr=0.01, center_loss_weight=0.1, device="cuda", cuda_graphs="off")
    gpu = torch.device("cuda")
    auto = speedlib.resolve_speed(cfg, gpu)
    assert auto.bf16 and auto.channels_last and not auto.cuda_graphs  # what a plain CUDA run gets
    fp32 = speedlib.resolve_speed(dataclasses.replace(cfg, bf16="off", channels_last="off"), gpu)
    expected, _, _ = app_epochs(cfg, fp32, gpu, split=tiny_split(300), epochs=2)
    got, _, _ = app_epochs(cfg, auto, gpu, split=tiny_split(300), epochs=2)
    for a, b in zip(expected, got):
        assert torch.isfinite(b.features).all()
        assert b.nll == pytest.approx(a.nll, rel=5e-2) and b.center_loss == pytest.approx(a.center_loss, rel=1e-1)


def bilinear_shift(image, dx, dy):
    """out[i, j] = image[i + dy, j + dx], bilinear between pixels, coordinates clamped to the border."""
    h, w = image.shape
    out = torch.zeros_like(image)
    for i in range(h):
        for j in range(w):
            y, x = min(max(i + dy, 0.0), h - 1.0), min(max(j + dx, 0.0), w - 1.0)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            out[i, j] = (image[y0, x0] * (1 - fy) * (1 - fx) + image[y0, x1] * (1 - fy) * fx
                         + image[y1, x0] * fy * (1 - fx) + image[y1, x1] * fy * fx)
    return out


def test_shift_augmentation_is_a_bilinear_shift_by_the_drawn_amount():
    cfg = Config(augment_shift=2.0)
    images = torch.rand(3, 1, 28, 28)
    got = augment(images, cfg, torch.Generator().manual_seed(7))
    draws = torch.rand(3 * 4, generator=torch.Generator().manual_seed(7)).view(4, 3) * 2 - 1  # angle, zoom, x, y
    for k in range(3):
        dx, dy = float(draws[2, k]) * 2.0, float(draws[3, k]) * 2.0  # pixels
        expected = bilinear_shift(images[k, 0], dx, dy)
        inner = (slice(3, 25), slice(3, 25))  # away from the border, where the two clampings agree
        assert torch.allclose(got[k, 0][inner], expected[inner], atol=1e-5), k
    assert not torch.allclose(got, images)


def test_augmentation_keeps_the_digit_and_is_off_by_default():
    assert not augments(Config())
    cfg = Config(augment_shift=2.0, augment_rotate=10.0, augment_scale=0.1)
    assert augments(cfg)
    images = -torch.ones(4, 1, 28, 28)  # background everywhere ...
    images[:, :, 10:18, 10:18] = 2.0  # ... and a bright square in the middle
    out = augment(images, cfg, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1.0 - 1e-6 and out.max() <= 2.0 + 1e-6
    assert torch.allclose(out[:, :, 0, 0], torch.full((4, 1), -1.0))  # corners stay background
    bright = (out > 0.5).flatten(1).sum(1).float()
    assert ((bright > 40) & (bright < 90)).all()  # the 64-pixel square, moved, turned and zoomed a little
