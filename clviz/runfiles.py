"""Every file of a run folder and of a sweep folder: its name (the constants below),
its format, and how it is written (whole or not at all) and read back. What each
file holds, and the folders' layout: docs/run_folder.md (the one description).

A crash or kill can come at any instant, so each file is written to a
temporary name beside it and renamed into place: the rename is atomic, so a
reader sees the old file or the new one, never half of one. The checkpoint is
written last in an epoch; on resume anything newer than it is discarded.
"""

import contextlib
import csv
import errno
import io
import itertools
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import filelock
import imageio
import matplotlib
import numpy as np
import torch
import torchvision
import yaml
from tqdm import tqdm

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CONFIG = "config.yaml"
EMBEDDINGS = "embeddings"
PAIRS = "verify_pairs.npz"  # the run's fixed verification pairs (indices into the test or unknown split)
FRAMES = "frames"
LOCK = ".lock"  # held (lock_run_dir) while a process trains or redraws the run; empty
CHECKPOINT_FORMAT = 1
SWEEP_FILE = "sweep.yaml"
SUMMARY = "summary.csv"


class RunError(RuntimeError):
    """A run folder cannot be used as asked; one line naming the folder and the fix."""


TEMP_GLOB = ".*.tmp*"  # what atomic_path's temporary names look like


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (matching TEMP_GLOB); on success makes it
    durable (fsync) and renames it onto `path`, then fsyncs the folder so the rename
    itself survives a power cut."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        except (OSError, RuntimeError) as err:
            # torch.save's C++ writer reports a full disk as a RuntimeError ("unexpected pos ..."):
            # ask the file system, so the user hears what really happened.
            if getattr(err, "errno", None) == errno.ENOSPC or disk_is_full(path.parent):
                raise DiskFull(path) from None
            raise
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if tmp.exists():
            tmp.unlink()


class DiskFull(OSError):
    """No space left while writing `path`; whatever was written before is intact."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"no space left on the device holding {path.parent} while writing {path.name}")
        self.path = path

    def __reduce__(self):  # so it crosses from the drawing worker intact
        return DiskFull, (self.path,)

    def __str__(self) -> str:
        return self.strerror


def disk_is_full(folder: Path, reserve: int = 1 << 20) -> bool:
    """Less than `reserve` bytes (1 MiB) free where `folder` lives."""
    try:
        return shutil.disk_usage(folder).free < reserve
    except OSError:
        return False


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def check_writable(folder: Path, fix: str = "choose another --output-dir") -> None:
    """Fail before training, not after the first epoch; `fix` is what to tell the user."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise RunError(f"cannot write to {folder} ({err.strerror}); {fix}") from None


def make_folder(output_dir: str, name: Optional[str], default: str) -> Path:
    """Create outputs/<name> for a new run or sweep; an existing folder is never reused.
    `name` given (--run-name): exactly that, or a RunError. None: `<timestamp>-<default>`,
    with -2, -3, ... when that exists, claimed by an atomic mkdir, so two runs or sweeps
    started in the same second (even in two processes) get a folder each."""
    parent = Path(output_dir)
    check_writable(parent)
    if name is not None:
        folder = parent / name
        try:
            folder.mkdir()
        except FileExistsError:
            raise RunError(f"folder {folder} already exists; pick another --run-name, or continue it with "
                           f"--resume {folder}") from None
        return folder
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{default}"
    for suffix in itertools.count(1):
        folder = parent / (stem if suffix == 1 else f"{stem}-{suffix}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def new_run_dir(output_dir: str, run_name: Optional[str], default: str) -> Path:
    """A new run folder (make_folder) with its embeddings/ and frames/."""
    run_dir = make_folder(output_dir, run_name, default)
    (run_dir / EMBEDDINGS).mkdir()
    (run_dir / FRAMES).mkdir()
    return run_dir


def lock_run_dir(run_dir: Path) -> filelock.BaseFileLock:
    """Hold an exclusive lock on the run folder (its LOCK file, through filelock: flock on
    Linux and macOS, msvcrt on Windows) until `.release()`. The system releases it
    however the process ends, so a lock is never stale. A second process gets a RunError."""
    lock = filelock.FileLock(Path(run_dir) / LOCK, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunError(f"{run_dir} is in use by another train.py right now; wait for it to finish or stop it, "
                       "then resume") from None
    except OSError as err:
        raise RunError(f"cannot lock {run_dir} ({err.strerror or first_line(err)}); make the folder writable") from None
    return lock


class RunFolder:
    """A run folder held under its lock while a run uses it. Used as `with folder:`
    around the start-up steps: if one fails, the lock is released and a folder made
    for this run is removed (an empty folder would only block the next attempt);
    if they all succeed, the run holds the folder until `release()`."""

    def __init__(self, path: Path, made: bool):
        self.path, self.made, self._lock = Path(path), made, None
        try:
            self._lock = lock_run_dir(self.path)
        except BaseException:
            self.discard()
            raise

    @classmethod
    def new(cls, output_dir: str, run_name: Optional[str], default: str) -> "RunFolder":
        """A new run folder, made now (make_folder)."""
        return cls(new_run_dir(output_dir, run_name, default), made=True)

    @classmethod
    def existing(cls, run_dir: Path) -> "RunFolder":
        """A run folder to resume: what it holds stays, whatever happens."""
        return cls(run_dir, made=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def discard(self) -> None:
        """Release the lock; remove the folder if it was made for this run."""
        self.release()
        if self.made:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind, err, trace) -> bool:
        if kind is not None:
            self.discard()
        return False


def existing_run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunError(f"cannot resume {run_dir}: no such folder; pass a folder under outputs/ made by train.py")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunError(f"cannot resume {run_dir}: it has no {CHECKPOINT} (no epoch finished); start a new run instead")
    check_writable(run_dir, fix=f"make it writable (chmod -R u+w {run_dir}), or copy the folder somewhere writable "
                                "and resume the copy")
    return run_dir


def clear_leftovers(run_dir: Path) -> None:
    """A killed run can leave a temporary file mid-write: it was never renamed into
    place, so it holds nothing. Only under the run's lock (another process's
    temporary files are its own)."""
    for stale in [*run_dir.rglob(TEMP_GLOB), *run_dir.glob(f"{EMBEDDINGS}/.epoch_*.frame-only.npz")]:
        stale.unlink()


# ---------- checkpoint ----------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    with atomic_path(run_dir / CHECKPOINT) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(run_dir: Path) -> dict:
    """weights_only=True: tensors, numbers, strings and containers only, so a
    tampered checkpoint cannot run code when loaded."""
    path = run_dir / CHECKPOINT
    damaged = f"the file is damaged: start a new run, or restore {path.name} from a copy"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else was not written by train.py
        raise RunError(f"refusing to load {path}: it is not a checkpoint written by train.py (empty, damaged, or "
                       f"a foreign pickle, which could run code); {damaged}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RunError(f"refusing to load {path}: it holds Python objects other than tensors and plain data "
                       f"(it may run code: {first_line(err)[:60]}); use a checkpoint written by train.py") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as err:
        raise RunError(f"cannot read {path} ({first_line(err)}); {damaged}") from None
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
    """metrics.csv as dicts of strings; a damaged line is a RunError naming the file and line."""
    path = Path(run_dir) / METRICS
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for line, row in enumerate(rows, start=2):
        try:
            int(row["epoch"])
            for key, value in row.items():
                if key not in ("dataset", None) and value not in ("", None):
                    float(value)
        except (ValueError, KeyError, TypeError):
            raise RunError(f"{path} line {line} is damaged; delete that line (python train.py --resume "
                           f"{Path(run_dir)} rewrites the file from the checkpoint)") from None
    return rows


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
    return [
        f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__} | "
        f"numpy {np.__version__} | matplotlib {matplotlib.__version__} | imageio {imageio.__version__}",
        f"git commit {git_commit()}",
        f"device {device_text}",
        f"command {' '.join([Path(sys.executable).name] + sys.argv)}",
    ]


class RunLog:
    """Prints through tqdm (so bars are not broken) and appends to log.txt."""

    def __init__(self, run_dir: Optional[Path]):
        self.path = run_dir / "log.txt" if run_dir else None

    def __call__(self, message: str, console: bool = True) -> None:
        """`console=False`: log.txt only (the full config, which config.yaml also holds)."""
        if console:
            tqdm.write(message)
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(message + "\n")
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise DiskFull(self.path) from None
                raise


# ---------- config.yaml ----------

def write_config(run_dir: Path, values: dict, comment: str = "") -> None:
    """config.yaml: every field's value; `comment` goes on top as a YAML comment (e.g. why some values differ)."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    write_text(Path(run_dir) / CONFIG, header + yaml.safe_dump(values, sort_keys=False))


def read_config(run_dir: Path) -> dict:
    """The saved config as a plain dict ({} when the file is missing)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


# ---------- embeddings/epoch_NNN.npz ----------

def embeddings_path(run_dir: Path, epoch: int, keep: bool = True) -> Path:
    """Kept embeddings, or a hidden frame-only file deleted once its frame is drawn."""
    name = f"epoch_{epoch:03d}.npz" if keep else f".epoch_{epoch:03d}.frame-only.npz"
    return Path(run_dir) / EMBEDDINGS / name


def frame_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / FRAMES / f"epoch_{epoch:03d}.png"


def epoch_of(path: Path) -> int:
    """The epoch number in an embeddings or frame file name (epoch_007.*)."""
    return int(Path(path).stem.split("_")[1])


def save_pairs(path: Path, pairs: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, first=pairs["first"], second=pairs["second"], same=pairs["same"], split=np.str_(pairs["split"]))


def load_pairs(path: Path) -> dict:
    try:
        with np.load(path) as npz:
            return {"first": npz["first"], "second": npz["second"], "same": npz["same"].astype(bool),
                    "split": str(npz["split"])}
    except EMBEDDING_ERRORS as err:
        raise RunError(f"cannot read {path} ({first_line(err)}): the file is damaged; start a new run") from None


def save_embeddings(path: Path, *, epoch: int, epochs: int, train_features, train_labels, test_features,
                    test_labels, centers, test_acc: float, limits, dataset: str, center_loss_weight: float,
                    center_update: str, head: str = "linear", head_scale: float = 1.0, head_margin: float = 0.0,
                    head_weight=None, head_bias=None, class_names: Sequence[str] = tuple(map(str, range(10))),
                    class_ids=None, unknown_features=None, unknown_labels=None, unknown_names: Sequence[str] = (),
                    open_threshold: Optional[float] = None, open_scores: Optional[dict] = None) -> None:
    """One epoch's numbers, with what they are as fields (nothing is parsed from text).
    Features (N, feat_dim) are stored as float16: about 0.35 MB per epoch for 70k
    2-D points. `limits` [xmin, xmax, ymin, ymax] lets the drawing fix a whole
    run's axes without reading every point again; the head's weights
    (num_classes, feat_dim) let it shade the decision regions.
    Open set: `class_ids` (K,) the known classes' original numbers (label k is class
    class_ids[k], which picks its colour); the held-out test images' `unknown_features`
    (M, feat_dim) with their original `unknown_labels` and `unknown_names`; `open_threshold`
    the distance beyond which a point counts as unknown (open_tnr95's); `open_scores` what the
    open-set metrics were computed from, in full precision: {known,unknown}_{distance,confidence}
    (stored as open_known_distance, ...). The verification pairs are not repeated here:
    they are the run's verify_pairs.npz, scored from these features when drawn."""
    arrays = dict(
        train_features=np.asarray(train_features, dtype=np.float16),
        train_labels=np.asarray(train_labels, dtype=np.uint8),
        test_features=np.asarray(test_features, dtype=np.float16),
        test_labels=np.asarray(test_labels, dtype=np.uint8),
        centers=np.asarray(centers, dtype=np.float32),
        limits=np.asarray(limits, dtype=np.float32),
        epoch=np.int32(epoch), epochs=np.int32(epochs), test_acc=np.float32(test_acc), dataset=np.str_(dataset),
        center_loss_weight=np.float64(center_loss_weight), center_update=np.str_(center_update),
        head=np.str_(head), head_scale=np.float64(head_scale), head_margin=np.float64(head_margin),
        class_names=np.array(list(class_names), dtype=np.str_),
    )
    if head_weight is not None:
        arrays["head_weight"] = np.asarray(head_weight, dtype=np.float32)
    if head_bias is not None:
        arrays["head_bias"] = np.asarray(head_bias, dtype=np.float32)
    if class_ids is not None:
        arrays["class_ids"] = np.asarray(class_ids, dtype=np.uint8)
    if unknown_features is not None:
        arrays.update(unknown_features=np.asarray(unknown_features, dtype=np.float16),
                      unknown_labels=np.asarray(unknown_labels, dtype=np.uint8),
                      unknown_names=np.array(list(unknown_names), dtype=np.str_))
    if open_threshold is not None:
        arrays["open_threshold"] = np.float64(open_threshold)
    for key, values in (open_scores or {}).items():
        arrays[f"open_{key}"] = np.asarray(values, dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


EMBEDDING_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


def damaged_embeddings(path: Path, err: BaseException) -> RunError:
    return RunError(f"cannot read {path} ({first_line(err)}): the file is damaged; delete it (its epoch's frame "
                    "and metrics stay) and run the command again")


def load_embeddings(path: Path) -> dict:
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except EMBEDDING_ERRORS as err:
        raise damaged_embeddings(path, err) from None


def read_limits(path: Path) -> np.ndarray:
    """Only the `limits` field of an embeddings file."""
    try:
        with np.load(path) as npz:
            return npz["limits"]
    except EMBEDDING_ERRORS as err:
        raise damaged_embeddings(path, err) from None


def embedding_files(run_dir: Path) -> list:
    """The kept embeddings of a run, in epoch order."""
    return sorted((Path(run_dir) / EMBEDDINGS).glob("epoch_*.npz"))


# ---------- sweep.yaml and summary.csv ----------

def is_sweep(path) -> bool:
    return bool(path) and (Path(path) / SWEEP_FILE).is_file()


def write_sweep_meta(sweep_dir: Path, meta: dict) -> None:
    write_text(Path(sweep_dir) / SWEEP_FILE, yaml.safe_dump(meta, sort_keys=False))


def read_sweep_meta(sweep_dir: Path) -> dict:
    try:
        return yaml.safe_load((Path(sweep_dir) / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RunError(f"cannot read {Path(sweep_dir) / SWEEP_FILE} ({err}); it was not written by train.py --sweep") from None


def read_summary(sweep_dir: Path) -> list:
    path = Path(sweep_dir) / SUMMARY
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_summary(sweep_dir: Path, rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(sweep_dir) / SUMMARY, buffer.getvalue())
