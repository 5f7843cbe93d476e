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
    state = torch.get_rng_state()
    assert fused_choice("auto", 1000) == (True, "")  # compiles for real
    assert torch.equal(torch.get_rng_state(), state)  # the probe leaves the run's random draws alone
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)
    assert fused_choice("auto", 10**6) == (False, "no C++ compiler found")


def test_fused_prelu_that_cannot_compile(monkeypatch):
    monkeypatch.setattr(engine, "fused_prelu_problem", lambda *a: "CppCompileError: cannot find Python.h")
    assert fused_choice("auto", 10**6) == (False, "torch.compile failed: CppCompileError: cannot find Python.h")
    with pytest.raises(ValueError, match=r"--fused-prelu on: .*Python.h.*use --fused-prelu off"):
        fused_choice("on", 10**6)


def test_fused_prelu_step_matches_the_reference_loop():
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
