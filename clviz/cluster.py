"""A sweep's members as tasks on a Ray cluster (`--ray-address ADDRESS`).

Ray places and runs the tasks; this module only describes them. Each member is
one task asking for `--member-cpus` CPUs (also its torch threads) and
`--member-gpus` GPUs (a fraction lets several members share a card). The task
trains the member's ordinary run folder, so the sweep folder, the code and the
data must sit on a filesystem every node sees at the same path (NFS, Lustre, a
Kubernetes shared volume): checked before the first task, by a probe on every
node. A task whose worker process or node dies is retried by Ray (MAX_RETRIES)
and resumes from the member's last checkpoint. Ctrl-C on the driver cancels the
tasks: queued ones never start, running ones stop as a run stops on Ctrl-C,
keeping their finished epochs.

Ray is optional: it is imported only here, only when --ray-address is given.
"""

import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from clviz import config as configlib
from clviz import errors
from clviz import member as memberlib
from clviz.config import ConfigError, SweepSpread
from clviz.runfiles import RunError

MAX_RETRIES = 3  # Ray restarts a member whose worker or node died this many times (each resumes its checkpoint)
POLL_S = 2.0  # how often the console checks the members' metrics.csv for new epochs
PROBE_FILE = ".ray-probe"
PROBE_TIMEOUT_S = 300  # a node that cannot start a tiny task in this time cannot train a member either
INSTALL = "pip install -r requirements-ray.txt"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray-address needs Ray, which is not installed; install it with: {INSTALL}") from None
    return ray


def member_task(sweep_dir: str, base_dict: dict, member: dict, overrides: dict, threads: int,
                expect_dataset: str) -> Optional[int]:
    """The body of one Ray task: train (or resume) the member, its console into consoles/<member>.txt."""
    with memberlib.console_to(memberlib.console_path(sweep_dir, member)):
        return memberlib.train_member_safely(sweep_dir, base_dict, member, overrides, threads, expect_dataset)


def probe_node(sweep_dir: str, token: str) -> Optional[str]:
    """On a worker: None if this node sees the driver's sweep folder (by its token) and can write in it,
    else what is wrong, in a few words."""
    host = socket.gethostname()
    marker = Path(sweep_dir) / PROBE_FILE
    try:
        seen = marker.read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen != token:
        return f"node {host} does not see the sweep folder {sweep_dir} (a different disk at that path, or none)"
    test = Path(sweep_dir) / f".ray-write-test-{host}-{os.getpid()}"
    try:
        test.write_text("ok", encoding="utf-8")
        test.unlink()
    except OSError as err:
        return f"node {host} cannot write in {sweep_dir} ({err.strerror})"
    return None


def check_shared_folder(ray, sweep_dir: Path) -> None:
    """Refuse, before any member starts, when a node cannot use the sweep folder."""
    token = secrets.token_hex(8)
    marker = sweep_dir / PROBE_FILE
    marker.write_text(token, encoding="utf-8")
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        probes = []
        for node in nodes:  # one probe pinned to each live node
            strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            probes.append(ray.remote(probe_node).options(num_cpus=0, scheduling_strategy=strategy)
                          .remote(str(sweep_dir), token))
        try:
            problems = [problem for problem in ray.get(probes, timeout=PROBE_TIMEOUT_S) if problem]
        except ray.exceptions.RayError as err:  # e.g. a node cannot import this code, or never answers
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            problems = [f"a node could not run the sweep's check ({first[:160]})"]
    finally:
        marker.unlink(missing_ok=True)
    if problems:
        raise RunError(f"{problems[0]}; a sweep on Ray needs the sweep folder (--output-dir), the code and the data "
                       "on a filesystem every node sees at the same path")


def connect(address: str):
    """Ray, imported and connected to the cluster at `address`, before the sweep writes anything."""
    ray = import_ray()
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(f"cannot reach a Ray cluster at {address} ({first[:160]}); start one with "
                       "ray start --head (or check the address)") from None
    return ray


def train_on_ray(ray, sweep_dir, base, todo: list, overrides: dict, spread: SweepSpread,
                 progress: memberlib.Progress, on_done: Callable, expected: dict) -> int:
    """Every member of `todo` as a task on the cluster `ray` is connected to (connect());
    `on_done(member, code)` as each ends. Returns 0, or the stop code after Ctrl-C / SIGTERM."""
    sweep_dir = Path(sweep_dir).resolve()  # a worker's working folder is not ours
    check_shared_folder(ray, sweep_dir)
    task = ray.remote(num_cpus=spread.member_cpus, num_gpus=spread.member_gpus, max_retries=MAX_RETRIES)(member_task)
    threads = max(1, int(spread.member_cpus))
    base_dict = configlib.to_dict(base)
    refs = {}
    for member in todo:
        ref = task.options(name=f"member {member['name']}").remote(str(sweep_dir), base_dict, member, overrides,
                                                                  threads, expected[member["name"]])
        refs[ref] = member
        progress.started(member, f" (queued as a Ray task: {spread.member_cpus:g} CPU, {spread.member_gpus:g} GPU)")
    return wait_for(ray, refs, progress, on_done, sweep_dir)


def wait_for(ray, refs: dict, progress: memberlib.Progress, on_done: Callable, sweep_dir: Path) -> int:
    stopped = None
    while refs:
        try:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
            progress.poll(list(refs.values()))
            for ref in ready:
                member = refs.pop(ref)
                on_done(member, task_code(ray, ref, member, sweep_dir))
        except KeyboardInterrupt as stop:
            if stopped is None:  # once: running members stop as a run stops on Ctrl-C and keep their epochs
                stopped = stop
                for ref in refs:
                    ray.cancel(ref)
                print("interrupted: queued members are cancelled, running ones keep their finished epochs", flush=True)
    return 0 if stopped is None else errors.stop_code(stopped)


def task_code(ray, ref, member: dict, sweep_dir: Path) -> Optional[int]:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return errors.EXIT_INTERRUPTED
    except ray.exceptions.RayError as err:  # retries used up, or the task raised a bug's exception
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {member['name']}: {first[:200]} (its console: {memberlib.console_path(sweep_dir, member)})",
              flush=True)
        return errors.EXIT_FAULT
