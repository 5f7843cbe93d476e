"""Runs one of the project's scripts with a kill point armed, for tests/test_kill_points.py:

    KILL_AT=<what>:<n>[:<where>] python tests/killpoint.py train.py <args...>

<what> is `step` (the n-th training step of this process) or a file name (the
n-th time a file of that name has been fully written to its temporary path by
runfiles.atomic_path, before the rename that would make it visible), counted
in each process on its own; <where> (`trainer`, `worker` or `any`, the
default) says which process's writes count. There the
trainer gets SIGKILL, as from the OOM killer or `kill -9`, whichever process
does the writing: a frame or a page is written by the drawing worker, which
then kills its parent, the trainer, and waits to be ended with it.

A spawned worker imports this file again (as __mp_main__), so the patch below
is in place in the workers too.
"""

import contextlib
import importlib
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clviz import frames, gif, grid, report, runfiles, training  # noqa: E402

TARGET, NTH, WHERE = (os.environ["KILL_AT"].split(":") + ["any"])[:3]
NTH = int(NTH)
seen = 0


def counts_here() -> bool:
    """Whether writes in this process count: `trainer`, `worker` (the drawing worker) or `any`."""
    if WHERE == "any":
        return True
    in_trainer = os.environ.get("KILL_TRAINER") == str(os.getpid())
    return in_trainer == (WHERE == "trainer")


def kill_trainer() -> None:
    trainer = int(os.environ["KILL_TRAINER"])
    os.kill(trainer, signal.SIGKILL)
    time.sleep(60)  # a worker: the trainer's death must end us long before this


def count_and_maybe_kill() -> None:
    global seen
    if not counts_here():
        return
    seen += 1
    if seen == NTH:
        kill_trainer()


write_atomically = runfiles.atomic_path


@contextlib.contextmanager
def atomic_path_with_kill(path):
    with write_atomically(path) as tmp:
        yield tmp
        if Path(path).name == TARGET:
            count_and_maybe_kill()


# Every module that writes through atomic_path holds its own reference to it.
for module in (runfiles, frames, gif, grid, report):
    if hasattr(module, "atomic_path"):
        module.atomic_path = atomic_path_with_kill

if TARGET == "step":
    step = training.forward_backward

    def forward_backward_with_kill(*args, **kwargs):
        count_and_maybe_kill()
        return step(*args, **kwargs)

    training.forward_backward = forward_backward_with_kill

if __name__ == "__main__":
    # Called, not run with runpy: a spawned worker imports the file that sys.modules["__main__"]
    # names, and that must stay this one, with its patch.
    os.environ["KILL_TRAINER"] = str(os.getpid())
    script = importlib.import_module(Path(sys.argv[1]).stem)
    sys.exit(script.main(sys.argv[2:]))
