"""A sweep's members in parallel on this machine (`--workers N`).

Each member trains in a process of its own (started with `spawn`, as the
drawing worker is), up to N at once. torch's CPU threads are split evenly:
each worker gets max(1, T // N) of the T threads torch would use alone (one per
physical core), unless the config fixes --num-threads. On a GPU the workers
share the card. Each worker draws its own frames in its own drawing process.

A worker that dies (killed, out of memory) takes only its member's current
epoch with it: the member is started again once from its last checkpoint
(RETRIES), and the other workers never notice; a worker that dies again ends
its member as failed. Ctrl-C or SIGTERM on the sweep is passed on to every
worker; each keeps its finished epochs and writes its GIF, as a single run
does, and `--resume` finishes the sweep.
"""

import multiprocessing
import multiprocessing.connection
import os
import signal
from collections.abc import Callable

import torch

from clviz import config as configlib
from clviz import errors
from clviz import member as memberlib

RETRIES = 1  # a member whose worker dies is restarted from its checkpoint this many times
POLL_S = 2.0  # how often the console checks the members' metrics.csv for new epochs


def threads_per_worker(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)


def train_in_workers(sweep_dir, base, todo: list, overrides: dict, workers: int, progress: memberlib.Progress,
                     on_done: Callable, expect_dataset=None) -> int:
    """Train the members `todo` in up to `workers` processes; `on_done(member, code)` as each ends.
    Returns 0, or the stop code after Ctrl-C / SIGTERM."""
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    threads = base.num_threads or threads_per_worker(workers)  # what the member will use (member.py)
    queue = [(member, 0) for member in todo]
    running = {}  # sentinel -> (process, member, tries)
    base_dict = configlib.to_dict(base)
    stopped = None

    def start(member, tries):
        process = context.Process(target=memberlib.worker_main, name=f"member {member['name']}",
                                  args=(str(sweep_dir), base_dict, member, overrides, threads, os.getpid(),
                                        expect_dataset))
        # A stop signal that arrives now waits until the worker is on record (so it is passed on to it), and the
        # worker inherits the block: it unblocks once it has left the terminal's process group (worker_main).
        errors.hold_stops(True)
        try:
            process.start()
            running[process.sentinel] = (process, member, tries)
        finally:
            errors.hold_stops(False)
        progress.started(member, f" (worker pid {process.pid}, {threads} CPU thread{'s' if threads != 1 else ''})"
                         if tries == 0 else f" again from its last checkpoint (worker pid {process.pid})")

    try:
        while queue or running:
            try:
                while queue and len(running) < workers and stopped is None:
                    start(*queue.pop(0))
                ready = multiprocessing.connection.wait(list(running), timeout=POLL_S)
                progress.poll([member for _, member, _ in running.values()])
                for sentinel in ready:
                    process, member, tries = running.pop(sentinel)
                    process.join()
                    code = process.exitcode
                    if code is not None and code < 0 and stopped is None:
                        died = f"worker died ({signal.Signals(-code).name})"
                        if tries < RETRIES:
                            progress.ended(member, died, "; only its current epoch is lost")
                            queue.insert(0, (member, tries + 1))
                            continue
                        progress.ended(member, died, " again; its finished epochs are kept (out of memory? see the "
                                                     "system log)")
                        code = errors.EXIT_FAULT
                    on_done(member, code)
            except KeyboardInterrupt as stop:
                # Each worker handles the stop as a single run handles Ctrl-C/SIGTERM (a second Ctrl-C, passed on
                # too, stops its drawing as well).
                stopped = stop
                queue.clear()
                sig = signal.SIGTERM if isinstance(stop, errors.Terminated) else signal.SIGINT
                for process, _, _ in running.values():
                    signal_worker(process, sig)
                print(f"{'stopping' if sig == signal.SIGTERM else 'interrupted'}: each running member keeps its "
                      "finished epochs and draws its GIF", flush=True)
    finally:
        # Only reached with workers left when something other than a stop signal ended the loop: none may outlive it.
        for process, _, _ in running.values():
            signal_worker(process, signal.SIGTERM)
        for process, _, _ in running.values():
            process.join(timeout=30)
            if process.exitcode is None:
                process.kill()
                process.join()
    return 0 if stopped is None else errors.stop_code(stopped)


def signal_worker(process, sig) -> None:
    if process.exitcode is None:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:  # ended between the check and the signal
            pass
