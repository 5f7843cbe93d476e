"""One member of a sweep, trained in whichever process runs it: the sweep's own
(one member after another), a local worker process (--workers N) or a Ray task
on another machine (--ray-address). In every case the member is an ordinary run
folder under the sweep folder, started fresh or resumed from its last
checkpoint, so a member that is stopped or killed loses at most the epoch it
was in, and the same seed gives the same metrics whichever way it ran.
"""

import contextlib
import dataclasses
import enum
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Optional

import torch

from clviz import config as configlib
from clviz import errors, run, runfiles
from clviz.background import end_with_parent
from clviz.config import Config
from clviz.runfiles import RunError

CONSOLE_DIR = "consoles"  # a sweep's worker processes write their console output here, one file per member

class Status(str, enum.Enum):
    """A member's state; the value is what summary.csv and the pages say."""
    FINISHED = "finished"
    TRAINING = "training"
    NOT_STARTED = "not started"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    FAILED = "failed"
    NO_SPACE = "failed (disk full)"
    FAULT = "failed (machine fault)"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def failed(self) -> bool:
        return self in (Status.FAILED, Status.NO_SPACE, Status.FAULT)

    @classmethod
    def of(cls, code: Optional[int]) -> "Status":
        """The status a member's exit code means: None (it had nothing left to train) and 0 are
        finished; a negative code (killed by that signal) or a stop code is interrupted."""
        if code is None or code == errors.EXIT_OK:
            return cls.FINISHED
        if code < 0 or code in errors.STOPPED:
            return cls.INTERRUPTED
        return {errors.EXIT_DIVERGED: cls.DIVERGED, errors.EXIT_NO_SPACE: cls.NO_SPACE,
                errors.EXIT_FAULT: cls.FAULT}.get(code, cls.FAILED)

    @classmethod
    def parse(cls, text: str) -> Optional["Status"]:
        """summary.csv's text back as a Status; None for an empty cell."""
        if not text:
            return None
        try:
            return cls(text)
        except ValueError:  # written by another version: keep what it means
            return cls.FAILED if text.startswith("failed") else None


def member_config(base: Config, sweep_dir: Path, member: dict) -> Config:
    return dataclasses.replace(base, **member["values"], output_dir=str(sweep_dir), run_name=member["name"])


def data_key(cfg: Config) -> tuple:
    """The settings that decide which data a member trains on: members alike in these share one load."""
    return (cfg.dataset, cfg.data_dir, cfg.train_subset, cfg.allow_sample_fallback, cfg.input_mean, cfg.input_std,
            cfg.unknown_classes)


def epochs_done(member_dir: Path) -> int:
    return len(runfiles.read_metrics(member_dir)) if (member_dir / runfiles.METRICS).is_file() else 0


def train_member(sweep_dir, base: Config, member: dict, overrides: dict, renderer=None,
                 datasets: Optional[dict] = None, expect_dataset: Optional[str] = None) -> Optional[int]:
    """Train (or resume) one member; its exit code as train.py's, None when it had nothing left to do.
    The sequential sweep passes its `renderer` and a `datasets` cache shared by its members.
    `expect_dataset`: the data the sweep found; a worker that finds other data (a node without
    the data folder falls back to the sample) refuses rather than train on it."""
    sweep_dir = Path(sweep_dir)
    member_dir = sweep_dir / member["name"]
    cfg = member_config(base, sweep_dir, member)
    checkpoint = None
    if (member_dir / runfiles.CHECKPOINT).is_file():
        cfg, checkpoint = run.resumed_config(runfiles.existing_run_dir(member_dir), overrides)
        if checkpoint["epoch"] >= cfg.epochs:
            return None
    elif member_dir.exists():  # started, but no epoch finished: nothing in it to keep
        with runfiles.RunFolder.existing(member_dir):  # refuses if a live process still trains it
            shutil.rmtree(member_dir)
    datasets = {} if datasets is None else datasets
    key = data_key(cfg)
    if key not in datasets:
        datasets[key] = run.load_dataset(cfg, resuming=checkpoint is not None)
    found = datasets[key].name
    if expect_dataset is not None and found != expect_dataset:
        raise RunError(f"this worker ({socket.gethostname()}) found {found} in {cfg.data_dir}, the sweep found "
                       f"{expect_dataset}; put the data on a filesystem every node sees, at the same path")
    session = run.open_session(cfg, checkpoint=checkpoint, run_dir=member_dir if checkpoint else None,
                               dataset=datasets[key])
    return run.fit(session, renderer)


def train_member_safely(sweep_dir, base_dict: dict, member: dict, overrides: dict, threads: int,
                        expect_dataset: Optional[str] = None) -> Optional[int]:
    """train_member in a process of its own (a local worker or a Ray task): the config
    travels as a dict, torch gets `threads` unless the config fixes num_threads, and
    what the user or the machine did ends in a one-line message and an exit code."""
    base = configlib.build(base_dict)
    if base.num_threads == 0:
        torch.set_num_threads(max(1, threads))  # open_session keeps torch's current count when num_threads is 0
    try:
        return train_member(sweep_dir, base, member, overrides, expect_dataset=expect_dataset)
    except (Exception, KeyboardInterrupt) as err:  # before its first epoch began: nothing of it to keep
        code, line = errors.explain(err, who=member["name"], kept="its finished epochs are kept",
                                    then=f"resume the sweep with: python train.py --resume {sweep_dir}")
        if code not in errors.STOPPED:  # the sweep says how a stop ends
            print(line, file=sys.stderr, flush=True)
        return code


def console_path(sweep_dir, member: dict) -> Path:
    return Path(sweep_dir) / CONSOLE_DIR / f"{member['name']}.txt"


@contextlib.contextmanager
def console_to(path: Path):
    """This process's stdout and stderr (file descriptors too, so tqdm and torch's
    warnings follow) appended to `path` for the duration, then put back."""
    path.parent.mkdir(exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    saved_streams = sys.stdout, sys.stderr
    with open(path, "a", buffering=1, encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        sys.stdout = sys.stderr = out
        try:
            yield
        finally:
            out.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def worker_main(sweep_dir: str, base_dict: dict, member: dict, overrides: dict, threads: int, parent: int,
                expect_dataset: Optional[str] = None) -> None:
    """Entry point of a local worker process (--workers N): one member, then exit with its code.
    Its console goes to consoles/<member>.txt (N progress bars on one terminal are unreadable);
    the sweep prints each member's epochs from its metrics.csv instead."""
    errors.leave_terminal_group()  # a Ctrl-C on the terminal reaches the sweep only; the sweep passes one on to each member
    end_with_parent(parent)  # a sweep killed outright takes its workers with it
    errors.stop_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # the sweep started us with Ctrl-C and SIGTERM blocked; one sent meanwhile arrives here
        errors.hold_stops(False)
    except KeyboardInterrupt as stop:
        os._exit(errors.stop_code(stop))
    with console_to(console_path(sweep_dir, member)):
        code = train_member_safely(sweep_dir, base_dict, member, overrides, threads, expect_dataset)
    sys.exit(0 if code is None else code)


class Progress:
    """The sweep's console while members train elsewhere: one line per finished
    epoch of any member, read from its metrics.csv (written atomically)."""

    def __init__(self, sweep_dir, members: list):
        self.sweep_dir = Path(sweep_dir)
        self.number = {member["name"]: i for i, member in enumerate(members, start=1)}
        self.total = len(members)
        self.seen = {}

    def started(self, member: dict, note: str = "") -> None:
        self.seen[member["name"]] = epochs_done(self.sweep_dir / member["name"])
        print(f"[{self.number[member['name']]}/{self.total}] {member['name']}: started{note}", flush=True)

    def poll(self, members) -> None:
        for member in members:
            member_dir = self.sweep_dir / member["name"]
            try:
                rows = runfiles.read_metrics(member_dir) if (member_dir / runfiles.METRICS).is_file() else []
            except (RunError, OSError):  # being replaced this instant; the next poll reads it
                continue
            for row in rows[self.seen.get(member["name"], 0):]:
                print(f"[{self.number[member['name']]}/{self.total}] {member['name']}: epoch {row['epoch']} | "
                      f"test acc {float(row['test_acc']):.2f}% | intra/inter {float(row['intra_inter_ratio']):.3f}",
                      flush=True)
            self.seen[member["name"]] = max(self.seen.get(member["name"], 0), len(rows))

    def ended(self, member: dict, status: str, detail: str = "") -> None:
        self.poll([member])
        print(f"[{self.number[member['name']]}/{self.total}] {member['name']}: {status}{detail}", flush=True)
