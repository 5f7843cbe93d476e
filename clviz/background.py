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
from concurrent.futures.process import BrokenProcessPool

PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for this process when its parent dies
MAX_RESTARTS = 3  # a worker that keeps dying is a problem to report, not to hide


class BackgroundRenderer:
    """Draws frames in worker processes so training never waits for matplotlib.
    A worker uses one thread: it must not take the cores training runs on."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self.pool = self._start()
        self.pending = []  # (future, pool, job); a job is (function, args, kwargs)
        self.restarts = 0

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        # The trainer's pid goes with the worker: if the trainer dies while the worker is still
        # starting (importing takes seconds), the worker must still see that it is orphaned.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_quiet_worker,
                                   initargs=(os.getpid(),))

    def _restart(self) -> None:
        """A worker died (the OOM killer, a stray kill): a new pool takes over, training goes on."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._start()
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise RuntimeError(f"the drawing worker died {self.restarts} times; see the system log (out of memory?)")

    def submit(self, function, *args, **kwargs) -> None:
        """Run `function` (picklable, top-level, e.g. frames.render_frame) in the worker."""
        job = (function, args, kwargs)
        try:
            future = self.pool.submit(function, *args, **kwargs)
        except BrokenProcessPool:
            self._restart()
            future = self.pool.submit(function, *args, **kwargs)
        self.pending.append((future, self.pool, job))

    def wait(self) -> list:
        """Every submitted job's result, in order; a job lost with a dead worker runs again in a new one."""
        done = []
        for future, pool, (function, args, kwargs) in self.pending:
            try:
                done.append(future.result())
            except BrokenProcessPool:
                if pool is self.pool:  # the first job to find this pool dead starts the next one
                    self._restart()
                done.append(self.pool.submit(function, *args, **kwargs).result())
        self.pending = []
        return done

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


def _quiet_worker(parent: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    end_with_parent(parent)


def end_with_parent(parent: int) -> None:
    """Make this process (a child of `parent`) end when its parent ends, however that
    ends: the kernel's parent-death signal where there is one, and a watcher thread."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A trainer killed with SIGKILL cannot stop its pool: workers notice it is gone and leave
    (where the kernel's parent-death signal is not available)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
