"""The one error path. Whatever stops a command early, whether the user (bad input, Ctrl-C,
SIGTERM), the machine (disk full, out of memory, an I/O error) or the training itself
(divergence), ends here as one line and an exit code. Every entry point (train.py,
a sweep, a sweep member in its own process, visualize.py) uses `explain`. Anything
else is a bug, and keeps its traceback.

A line reads `error: <what><when>; <kept>; <then>`: what happened, when (e.g. " after
epoch 2"), what is safe on disk, and the command that carries on from there.
"""

import os
import signal
from typing import Optional

from clviz.config import ConfigError
from clviz.data import DataError
from clviz.runfiles import DiskFull, RunError, first_line

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_NO_SPACE, EXIT_FAULT = 0, 2, 3, 4, 5
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them
STOPPED = (EXIT_INTERRUPTED, EXIT_TERMINATED)
AGAIN = "run the same command again"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Diverged(RuntimeError):
    """Training produced a non-finite loss or features; the message names the step."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes, systemd and `timeout` send), handled as Ctrl-C is."""


def stop_on_sigterm() -> None:
    """From here on SIGTERM raises Terminated in the main thread, so a run stops as on Ctrl-C."""
    def handler(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, handler)


def hold_stops(hold: bool) -> None:
    """Hold back (True) or let through (False) Ctrl-C and SIGTERM in this thread: while a
    sweep starts a worker, a stop waits until the worker is on record. Where the system has
    no signal masks (Windows), stops are never held."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK, STOP_SIGNALS)


def leave_terminal_group() -> None:
    """Move this process out of the terminal's process group, so a Ctrl-C there reaches only
    the sweep, which passes it on. Where there are no process groups (Windows), it stays."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


def stop_code(stop: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED


def machine_fault(err: BaseException) -> Optional[str]:
    """What the machine did, in a few words, for errors that are not the program's
    (out of memory, an I/O error); None for anything else."""
    text = str(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and ("out of memory" in text.lower()
                                                                          or "can't allocate memory" in text)):
        return "out of memory"
    if isinstance(err, OSError):
        where = f" while writing {err.filename}" if err.filename else ""
        return (err.strerror or first_line(err)) + where
    return None


def exit_code(err: BaseException) -> Optional[int]:
    """The exit code for what stopped the command; None for a bug."""
    if isinstance(err, KeyboardInterrupt):
        return stop_code(err)
    if isinstance(err, DiskFull):  # before OSError: it is one, with its own code and remedy
        return EXIT_NO_SPACE
    if isinstance(err, Diverged):
        return EXIT_DIVERGED
    if isinstance(err, (ConfigError, DataError, RunError, ValueError)):
        return EXIT_BAD_INPUT
    if machine_fault(err) is not None:
        return EXIT_FAULT
    return None


def explain(err: BaseException, *, when: str = "", kept: str = "", then: str = AGAIN, who: str = "") -> tuple:
    """(exit code, the one line to print) for `err`; re-raises a bug.
    `when` follows what happened (" after epoch 2"); `kept` says what is safe on disk;
    `then` is the command that carries on (AGAIN, "resume with: ...", "redraw with ...");
    `who` names a sweep member. Bad input needs none of them: its message names its fix."""
    code = exit_code(err)
    if code is None:
        raise err
    prefix = f"{who}: " if who else ""
    said = (str(err).strip().splitlines() or [type(err).__name__])[0]  # our own messages are one whole line
    if code in STOPPED:
        what = "stopped by SIGTERM" if code == EXIT_TERMINATED else "interrupted"
        return code, "; ".join(filter(None, (f"{prefix}{what}{when}", kept or "nothing to keep", then)))
    if code == EXIT_BAD_INPUT:
        return code, f"error: {prefix}{said}"
    if code == EXIT_NO_SPACE:
        then = f"free space and {then}"
    elif code == EXIT_FAULT:
        then = f"{then} once the machine has recovered"
    else:  # diverged: the fix is a setting, not a retry
        then = then if then != AGAIN else "lower --center-loss-weight, --lr or --center-lr"
    what = machine_fault(err) if code == EXIT_FAULT else said
    return code, "; ".join(filter(None, (f"error: {prefix}{what}{when}", kept, then)))
