"""Sweeps spread over worker processes (--workers) and over a Ray cluster
(--ray-address): the same metrics as one member after another, a killed worker
costs only its member's current epoch, Ctrl-C keeps finished epochs and
--resume completes the sweep."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import train
from clviz import cluster, errors
from tests.conftest import REPO, alive, descendants, read_rows, run_cli, wait_until, without_time

# 4 members of 3 epochs on 600 sample digits: each epoch is a few seconds, long enough to kill one mid-member.
# One thread per member either way: with the same thread count the two ways give the same bits on every CPU
# path (oneDNN's bf16 and AVX-512 convs round differently with 1 and 2 threads; README, "Members in parallel").
SWEEP = ["--dataset", "mnist-sample", "--train-subset", "600", "--batch-size", "50", "--epochs", "3", "--num-threads", "1",
         "--sweep", "center_loss_weight=0,0.1", "--sweep", "seed=0,1"]
NAMES = ["center_loss_weight=0__seed=0", "center_loss_weight=0__seed=1",
         "center_loss_weight=0.1__seed=0", "center_loss_weight=0.1__seed=1"]


def member_metrics(sweep_dir) -> dict:
    return {name: without_time(read_rows(sweep_dir / name)) for name in NAMES}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the same sweep, one member after another in one process."""
    cwd = tmp_path_factory.mktemp("sequential")
    run_cli("train.py", *SWEEP, "--run-name", "seq", cwd=cwd, check=0)
    return member_metrics(cwd / "outputs" / "seq")


class Sweep:
    """train.py as a user starts it, its console read line by line in the background."""

    def __init__(self, cwd, *args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, test, what, timeout=240):
        return wait_until(test, what, timeout, alive=lambda: self.proc.poll() is None,
                          context=lambda: "; console:\n" + "".join(self.lines))

    def finish(self, timeout=600):
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines)


def epochs_in(member_dir) -> int:
    try:
        return len(read_rows(member_dir))
    except (OSError, ValueError):
        return 0


def resumed_lines(member_dir) -> str:
    return "".join(line for line in (member_dir / "log.txt").read_text().splitlines(True) if line.startswith("resuming "))


def worker_pid(lines: list, name: str):
    for line in lines:
        if f"] {name}: started (worker pid " in line:
            return int(line.split("worker pid ")[1].split(",")[0].rstrip(")"))
    return None


@pytest.mark.slow
def test_two_workers_give_every_member_the_metrics_of_one_after_another(sequential, run, tmp_path):
    proc = run("train.py", *SWEEP, "--workers", "2", "--run-name", "par", check=0)
    sweep_dir = tmp_path / "outputs" / "par"
    assert member_metrics(sweep_dir) == sequential
    assert "4 members, 3 epochs each, 2 at a time" in proc.stdout
    assert "1 CPU thread)" in proc.stdout  # --num-threads, not the split, sets each worker's threads
    assert f"[3/4] {NAMES[2]}: epoch 3 | test acc" in proc.stdout  # the console follows every member's epochs
    assert [row["status"] for row in read_rows_csv(sweep_dir / "summary.csv")] == ["finished"] * 4
    for name in NAMES:  # each member is an ordinary, complete run folder
        assert (sweep_dir / name / "features.gif").is_file() and (sweep_dir / name / "index.html").is_file()
        assert "epoch 3/3 |" in (sweep_dir / "consoles" / f"{name}.txt").read_text()
    assert (sweep_dir / "grid.gif").is_file() and "running:" not in (sweep_dir / "index.html").read_text()


def read_rows_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_members_current_epoch(sequential, tmp_path):
    sweep = Sweep(tmp_path, *SWEEP, "--workers", "2", "--run-name", "k")
    sweep_dir = tmp_path / "outputs" / "k"
    victim = sweep.wait_for(lambda: worker_pid(sweep.lines, NAMES[0]), "the first worker to start")
    sweep.wait_for(lambda: worker_pid(sweep.lines, NAMES[1]), "the second worker to start")
    sweep.wait_for(lambda: (sweep_dir / NAMES[0] / "checkpoint.pt").is_file(), "the first member's first checkpoint")
    os.kill(victim, signal.SIGKILL)  # in its second epoch
    assert "running: 0 of 4 runs ended" in (sweep_dir / "index.html").read_text()  # the live sweep page
    code, out = sweep.finish()
    assert code == 0, out
    assert f"{NAMES[0]}: worker died (SIGKILL); only its current epoch is lost" in out
    assert f"{NAMES[0]}: started again from its last checkpoint" in out
    assert out.count(f"{NAMES[1]}: started") == 1  # the other worker never noticed
    assert f"{NAMES[0]} from epoch 2" in resumed_lines(sweep_dir / NAMES[0])
    assert member_metrics(sweep_dir) == sequential


@pytest.mark.slow
def test_ctrl_c_of_a_parallel_sweep_keeps_finished_epochs_and_resume_completes_it(sequential, tmp_path):
    sweep = Sweep(tmp_path, *SWEEP, "--workers", "2", "--run-name", "c")
    sweep_dir = tmp_path / "outputs" / "c"
    sweep.wait_for(lambda: all(epochs_in(sweep_dir / name) >= 1 for name in NAMES[:2]), "an epoch of both workers")
    children = descendants(sweep.proc.pid)
    sweep.proc.send_signal(signal.SIGINT)
    code, out = sweep.finish()
    assert code == errors.EXIT_INTERRUPTED, out
    assert "sweep interrupted; resume with: python train.py --resume outputs/c" in out
    assert "Traceback" not in out
    statuses = [row["status"] for row in read_rows_csv(sweep_dir / "summary.csv")]
    assert statuses == ["interrupted", "interrupted", "not started", "not started"]
    for name in NAMES[:2]:  # each running member kept its finished epochs and drew them
        assert epochs_in(sweep_dir / name) >= 1 and (sweep_dir / name / "features.gif").is_file()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)], "a worker outlived the interrupted sweep"
    proc = run_cli("train.py", "--resume", "outputs/c", "--workers", "2", cwd=tmp_path, check=0)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert member_metrics(sweep_dir) == sequential


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2"], "--workers spreads the members of a sweep"),
    (["--sweep", "seed=0,1", "--workers", "0"], "--workers must be in [1, 1024]; got 0"),
    (["--sweep", "seed=0,1", "--workers", "two"], "--workers must be int, got 'two'"),
    (["--sweep", "seed=0,1", "--member-cpus", "2"], "--member-cpus sizes Ray tasks"),
    (["--sweep", "seed=0,1", "--ray-address", "auto", "--workers", "2"], "--workers and --ray-address both"),
    (["--sweep", "seed=0,1", "--ray-address", "auto", "--member-gpus", "-1"], "--member-gpus must be >= 0.0; got -1.0"),
])
def test_bad_spread_flags_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert train.main(["--dataset", "mnist-sample", *argv]) == errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_without_ray_one_line_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as where it is not installed
    assert train.main(["--dataset", "mnist-sample", "--sweep", "seed=0,1", "--ray-address", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --ray-address needs Ray, which is not installed; install it with: " \
                          "pip install -r requirements-ray.txt"
    assert not (tmp_path / "outputs").exists()


def test_a_node_that_cannot_see_or_write_the_sweep_folder_says_so(tmp_path):
    (tmp_path / cluster.PROBE_FILE).write_text("token")
    assert cluster.probe_node(str(tmp_path), "token") is None
    assert "does not see the sweep folder" in cluster.probe_node(str(tmp_path), "another")  # another disk there
    assert "does not see the sweep folder" in cluster.probe_node(str(tmp_path / "missing"), "token")
    if os.geteuid() != 0:  # root writes through permissions
        tmp_path.chmod(0o500)
        try:
            assert "cannot write in" in cluster.probe_node(str(tmp_path), "token")
        finally:
            tmp_path.chmod(0o700)


# ---------- a real local Ray cluster ----------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster on the loopback address, stopped at the end."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CENTERLOSS_REQUIRE_RAY"):
            raise
        pytest.skip("Ray is not installed (pip install -r requirements-ray.txt)")
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port = free_port()
    temp = f"/tmp/ray-test-{os.getpid()}"  # Ray's socket paths must stay short
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
                   check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:  # this cluster's processes only: found by its folder or its port (`ray stop` would stop every Ray cluster of this user)
        ours = {pid for pid in all_pids() if temp in cmdline(pid) or f":{port} " in cmdline(pid) + " "}
        for pid in ours | set().union(*(descendants(pid) for pid in ours)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def all_pids() -> list:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ray_worker_of(name: str):
    """The pid of the Ray worker process running member `name` (Ray titles it 'ray::member NAME')."""
    return next((pid for pid in all_pids() if cmdline(pid) == f"ray::member {name}"), None)


@pytest.mark.slow
def test_a_sweep_on_a_ray_cluster_survives_a_killed_worker(sequential, ray_cluster, tmp_path):
    sweep = Sweep(tmp_path, *SWEEP, "--ray-address", ray_cluster, "--member-cpus", "1", "--run-name", "r")
    sweep_dir = tmp_path / "outputs" / "r"
    sweep.wait_for(lambda: (sweep_dir / NAMES[0] / "checkpoint.pt").is_file(), "the first member's first checkpoint")
    victim = sweep.wait_for(lambda: ray_worker_of(NAMES[0]), "the first member's Ray worker")
    os.kill(victim, signal.SIGKILL)  # Ray retries the task, which resumes the member's checkpoint
    code, out = sweep.finish()
    assert code == 0, out
    assert "on the Ray cluster at " + ray_cluster in out and "Traceback" not in out
    assert [row["status"] for row in read_rows_csv(sweep_dir / "summary.csv")] == ["finished"] * 4
    assert member_metrics(sweep_dir) == sequential
    assert f"{NAMES[0]} from epoch 2" in resumed_lines(sweep_dir / NAMES[0])  # killed in epoch 2, retried from there
    assert epochs_in(sweep_dir / NAMES[0]) == 3 and (sweep_dir / NAMES[0] / "features.gif").is_file()
