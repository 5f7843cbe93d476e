"""The run folder: every file in it is written whole or not at all.

outputs/<run>/
    config.yaml        resolved config (what to pass to reproduce the run)
    log.txt            library versions, git commit, device, then one line per epoch
    metrics.csv        one row per finished epoch
    checkpoint.pt      model, centers, both optimizers, scheduler, epoch, RNG states, config, metrics
    embeddings/epoch_007.npz   train/test features, labels, centers (float16)
    frames/epoch_007.png       the drawing of that npz
    features.gif       all frames, looping

A crash or kill can come at any instant, so each file is written to a
temporary name beside it and renamed into place: the rename is atomic, so a
reader sees the old file or the new one, never half of one. The checkpoint is
written last in an epoch; on resume anything newer than it is discarded.
"""

import contextlib
import csv
import io
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CHECKPOINT_FORMAT = 1


class RunError(RuntimeError):
    """A run folder cannot be used as asked; one line naming the folder and the fix."""


TEMP_GLOB = ".*.tmp*"  # what atomic_path's temporary names look like


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (matching TEMP_GLOB); on success renames it onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def check_writable(folder: Path) -> None:
    """Fail before training, not after the first epoch."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"cannot write to {folder} ({err.strerror}); choose another --output-dir") from None


def new_run_dir(output_dir: str, run_name: str) -> Path:
    """Create outputs/<run_name>; an existing run is never overwritten."""
    parent = Path(output_dir)
    check_writable(parent)
    run_dir = parent / run_name
    if run_dir.exists():
        raise RunError(f"run folder {run_dir} already exists; pick another --run-name, or continue it with --resume {run_dir}")
    run_dir.mkdir()
    (run_dir / "embeddings").mkdir()
    (run_dir / "frames").mkdir()
    return run_dir


def existing_run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunError(f"cannot resume {run_dir}: no such folder; pass a folder under outputs/ made by train.py")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunError(f"cannot resume {run_dir}: it has no {CHECKPOINT} (no epoch finished); start a new run instead")
    check_writable(run_dir)
    # A killed run can leave a temporary file mid-write: it was never renamed into place, so it holds nothing.
    for stale in [*run_dir.rglob(TEMP_GLOB), *run_dir.glob("embeddings/.epoch_*.frame-only.npz")]:
        stale.unlink()
    return run_dir


# ---------- checkpoint ----------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    import torch
    with atomic_path(run_dir / CHECKPOINT) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(run_dir: Path) -> dict:
    """weights_only=True: tensors, numbers, strings and containers only, so a
    tampered checkpoint cannot run code when loaded."""
    import torch
    path = run_dir / CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"refusing to load {path}: it holds Python objects other than tensors and plain data "
                       "(it may run code); use a checkpoint written by train.py") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise RunError(f"cannot read {path} ({str(err).splitlines()[0]}); the file is damaged, start a new run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a checkpoint of this version of train.py; start a new run")
    return state


# ---------- metrics ----------

def write_metrics(run_dir: Path, rows: list) -> None:
    """The whole table, rewritten atomically each epoch (it is small)."""
    buffer = io.StringIO()
    # Rows written by an older version may lack newer columns: those cells stay empty.
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / METRICS, buffer.getvalue())


def read_metrics(run_dir: Path) -> list:
    with open(run_dir / METRICS, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------- log ----------

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown (not a git checkout)"


def environment_lines(device_text: str) -> list:
    import imageio
    import matplotlib
    import numpy
    import torch
    import torchvision
    return [
        f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__} | "
        f"numpy {numpy.__version__} | matplotlib {matplotlib.__version__} | imageio {imageio.__version__}",
        f"git commit {git_commit()}",
        f"device {device_text}",
        f"command {' '.join([Path(sys.executable).name] + sys.argv)}",
    ]


class RunLog:
    """Prints through tqdm (so bars are not broken) and appends to log.txt."""

    def __init__(self, run_dir: Optional[Path]):
        self.path = run_dir / "log.txt" if run_dir else None

    def __call__(self, message: str) -> None:
        from tqdm import tqdm
        tqdm.write(message)
        if self.path:
            with open(self.path, "a") as handle:
                handle.write(message + "\n")
