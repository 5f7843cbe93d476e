"""A worker process that draws while training goes on.

Frames, the GIF's redraw and the sweep grid are drawn by `BackgroundRenderer`:
matplotlib never holds up a training step, and the worker uses one thread so
it does not take the cores training runs on.
"""

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies


class BackgroundRenderer:
    """Draws frames in worker processes so training never waits for matplotlib.
    A worker uses one thread: it must not take the cores training runs on."""

    def __init__(self, workers: int = 1):
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        # The trainer's pid goes with the worker: if the trainer dies while the worker is still
        # starting (importing takes seconds), the worker must still see that it is orphaned.
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_quiet_worker,
                                        initargs=(os.getpid(),))
        self.pending = []

    def submit(self, function, *args, **kwargs) -> None:
        """Run `function` (picklable, top-level, e.g. frames.render_frame) in the worker."""
        self.pending.append(self.pool.submit(function, *args, **kwargs))

    def wait(self) -> list:
        done = [future.result() for future in self.pending]
        self.pending = []
        return done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


def _quiet_worker(parent: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):  # the kernel ends us with the trainer, whatever kills it
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the trainer died before we got here
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A trainer killed with SIGKILL cannot stop its pool: workers notice it is gone and leave
    (where the kernel's parent-death signal is not available)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
