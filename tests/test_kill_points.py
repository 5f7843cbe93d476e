"""Fault injection: the trainer is killed (SIGKILL) at many points across an
epoch boundary, mid-step and while each kind of run file is being written
(tests/killpoint.py arms one point per run). After every kill: the folder
reads back, nothing of the dead run keeps running, `--resume` (or
`visualize.py`, once every epoch is in) completes the run, and its metrics
equal those of a run that was never killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clviz import runfiles
from tests.conftest import QUICK, REPO, gif_info, read_rows, run_cli, without_time

# 400 images, 8 steps of 50 per epoch; 2 epochs have the boundary every point below sits around, and
# every kind of file is written at least twice before it (the second epoch is also the last, so a kill
# during its files leaves a run whose resume must redo the last epoch).
EPOCHS = 2
ARGS = [*QUICK, "--epochs", str(EPOCHS), "--run-name", "r"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp("whole")
    run_cli("train.py", *ARGS, cwd=work, check=0)
    return work / "outputs" / "r"


def processes_of(trainer: int) -> list:
    """Pids of live processes started under the trainer (they carry its pid in their environment)."""
    marker = f"KILL_TRAINER={trainer}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in environ.split(b"\0") and state != "Z":
                found.append(int(entry.name))
    return found


def check_readable(run_dir: Path) -> int:
    """Every file a user or a resume reads back; returns the epochs checkpointed."""
    yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = read_rows(run_dir)
    for path in runfiles.embedding_files(run_dir):
        runfiles.load_embeddings(path)
    checkpointed = runfiles.load_checkpoint(run_dir)["epoch"]
    assert 1 <= checkpointed <= len(rows) + 1
    return checkpointed


# (what, n, where): the n-th training step, or the n-th write of a file in the trainer or the drawing worker.
KILL_POINTS = [
    ("step", 12, "trainer"),             # mid-step, in the middle of epoch 2
    ("epoch_002.npz", 1, "trainer"),     # epoch 2's features
    ("epoch_002.png", 1, "worker"),      # epoch 2's frame
    ("metrics.csv", 2, "trainer"),       # epoch 2's metrics row
    ("checkpoint.pt", 2, "trainer"),     # epoch 2's checkpoint
    ("index.html", 2, "worker"),         # the live page after epoch 2
    ("features.gif", 1, "trainer"),      # the GIF, after the last checkpoint
    ("metrics.png", 1, "trainer"),       # the final page's plot, after the GIF
]


@pytest.mark.slow
@pytest.mark.parametrize("what, nth, where", KILL_POINTS, ids=[f"{w}-{n}-{p}" for w, n, p in KILL_POINTS])
def test_a_kill_anywhere_loses_nothing_and_leaves_nothing(uninterrupted, tmp_path, what, nth, where):
    env = dict(os.environ, PYTHONUNBUFFERED="1", KILL_AT=f"{what}:{nth}:{where}")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "killpoint.py"), "train.py", *ARGS], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, f"the kill point {what}:{nth} was never reached:\n{output[-2000:]}"
    deadline = time.time() + 10
    while processes_of(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    left = processes_of(proc.pid)
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} process(es) outlived the killed trainer"

    run_dir = tmp_path / "outputs" / "r"
    checkpointed = check_readable(run_dir)
    if checkpointed < EPOCHS:
        done = run_cli("train.py", "--resume", run_dir, cwd=tmp_path, check=0)
    else:  # every epoch is in: the drawing is what is left, and visualize.py redoes it
        refused = run_cli("train.py", "--resume", run_dir, cwd=tmp_path, check=2)
        assert f"already finished {EPOCHS} epochs" in refused.stderr and refused.stderr.count("\n") == 1
        done = run_cli("visualize.py", run_dir, cwd=tmp_path, check=0)
    assert "Traceback" not in done.stdout + done.stderr
    assert without_time(read_rows(run_dir)) == without_time(read_rows(uninterrupted))
    assert gif_info(run_dir / "features.gif")[0] == gif_info(uninterrupted / "features.gif")[0] == EPOCHS
    assert sorted(p.name for p in (run_dir / "frames").glob("*.png")) == [f"epoch_00{k}.png" for k in range(1, EPOCHS + 1)]
    page = (run_dir / "index.html").read_text()
    assert "http-equiv" not in page and "features.gif" in page  # the finished page: no reload, the GIF in it
    assert not list(run_dir.rglob(runfiles.TEMP_GLOB))
