"""Fault injection: kills, divergence, bad run folders, unsafe checkpoints.
Each test shows that finished work survives and the user is told what to do."""

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from clviz import commands, errors, runfiles
from clviz import run as runlib
from clviz.errors import Diverged
from clviz.training import EpochRunner
from tests.conftest import QUICK, REPO, alive, descendants, fail_in_epoch, read_rows, run_cli, without_time, write_small_set

pytestmark = pytest.mark.slow

# Long enough epochs (40 steps) that a signal lands mid-epoch.
LONGER = ["--dataset", "mnist-sample", "--train-subset", "2000", "--batch-size", "50", "--epochs", "3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    run_cli("train.py", *LONGER, "--run-name", "r", cwd=work, check=0)
    return work / "outputs" / "r"


def start_and_signal(work, sig, rng):
    """Start a run, wait for epoch 1 to finish, then send `sig` at a random moment of epoch 2."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *LONGER, "--run-name", "r"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("epoch 1/3 |"):
            break
    time.sleep(rng.uniform(0.2, 1.5))
    proc.send_signal(sig)
    if sig == signal.SIGKILL:
        # Its frame worker may hold the pipe open a moment longer; the exit code is all we need.
        code = proc.wait(timeout=60)
        proc.stdout.close()
        return code, "".join(output)
    output.append(proc.stdout.read())
    return proc.wait(timeout=120), "".join(output)


def assert_folder_whole(run_dir):
    """Every file that exists can be read in full."""
    read_rows(run_dir)
    torch.load(run_dir / "checkpoint.pt", weights_only=True)
    for npz in (run_dir / "embeddings").glob("epoch_*.npz"):
        with np.load(npz) as data:
            [data[key] for key in data.files]
    for png in (run_dir / "frames").glob("*.png"):
        with Image.open(png) as image:
            image.load()


def assert_same_result(run_dir, reference):
    assert without_time(read_rows(run_dir)) == without_time(read_rows(reference))
    ours = torch.load(run_dir / "checkpoint.pt", weights_only=True)["parts"]["model"]
    theirs = torch.load(reference / "checkpoint.pt", weights_only=True)["parts"]["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["sigint", "sigterm", "sigkill"])
def test_killed_run_resumes_to_the_same_result(tmp_path, reference, sig):
    """SIGTERM (Slurm, Kubernetes, `timeout`) is handled as Ctrl-C is, with exit code 143."""
    code, output = start_and_signal(tmp_path, sig, random.Random(sig))
    run_dir = tmp_path / "outputs" / "r"
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], output
        assert "Traceback" not in output
        assert f"resume with: python train.py --resume {os.path.join('outputs', 'r')}" in output
        assert (run_dir / "features.gif").is_file()  # the GIF of the finished epochs
    else:
        assert code == -signal.SIGKILL
    assert_folder_whole(run_dir)
    assert len(read_rows(run_dir)) >= 1
    run_cli("train.py", "--resume", run_dir, cwd=tmp_path, check=0)
    assert_same_result(run_dir, reference)
    assert not list(run_dir.rglob(".*tmp*"))  # no temporary file left behind


def test_divergence_stops_with_epoch_and_step(run, tmp_path):
    proc = run("train.py", *QUICK, "--epochs", "2", "--lr", "1e6", "--run-name", "d")
    assert proc.returncode == 3
    message = next(line for line in proc.stdout.splitlines() if line.startswith("error:"))
    assert "epoch 1, step" in message and "lower --center-loss-weight" in message and "--lr" in message
    assert "Traceback" not in proc.stdout + proc.stderr


def test_divergence_keeps_the_last_good_epoch(tmp_path, monkeypatch, capsys):
    """Diverge in epoch 2 (injected): epoch 1's checkpoint, frame and GIF stay."""
    fail_in_epoch(monkeypatch, 2, Diverged("loss became nan at epoch 2, step 3"))
    monkeypatch.chdir(tmp_path)
    assert train.main([*QUICK, "--epochs", "3", "--run-name", "d"]) == 3
    run_dir = tmp_path / "outputs" / "d"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in read_rows(run_dir)] == ["1"]
    assert (run_dir / "frames" / "epoch_001.png").is_file() and (run_dir / "features.gif").is_file()
    assert "epoch 2, step 3" in capsys.readouterr().out


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: None, ["--resume", "outputs/nope"], "no such folder"),
    (lambda d: (d / "outputs" / "empty").mkdir(parents=True), ["--resume", "outputs/empty"], "no checkpoint.pt"),
    (lambda d: (d / "blocker").write_text(""), ["--output-dir", "blocker/runs"], "cannot write to blocker"),
])
def test_bad_run_folders_are_refused(run, tmp_path, setup, args, message):
    setup(tmp_path)
    proc = run("train.py", *QUICK, *args) if "--resume" not in args else run("train.py", *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    work = tmp_path_factory.mktemp("one")
    run_cli("train.py", *QUICK, "--epochs", "1", "--run-name", "r", cwd=work, check=0)
    return work


def test_existing_run_is_never_overwritten(one_epoch):
    before = (one_epoch / "outputs" / "r" / "checkpoint.pt").read_bytes()
    proc = run_cli("train.py", *QUICK, "--epochs", "1", "--run-name", "r", cwd=one_epoch)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--resume" in proc.stderr
    assert (one_epoch / "outputs" / "r" / "checkpoint.pt").read_bytes() == before


def test_finished_run_needs_more_epochs_to_resume(one_epoch):
    proc = run_cli("train.py", "--resume", "outputs/r", cwd=one_epoch)
    assert proc.returncode == 2 and "already finished 1 epoch; pass --epochs N with N > 1" in proc.stderr


def test_fewer_epochs_on_resume_is_named_as_such(one_epoch):
    proc = run_cli("train.py", "--resume", "outputs/r", "--epochs", "1", cwd=one_epoch)
    assert proc.returncode == 2 and "already finished 1 epoch; pass --epochs N with N > 1" in proc.stderr
    proc = run_cli("train.py", "--resume", "outputs/r", "--epochs", "0", cwd=one_epoch)
    assert proc.returncode == 2 and "'epochs' must be in [1, 100000]" in proc.stderr


def test_read_only_run_is_refused_with_the_right_fix(one_epoch, tmp_path, monkeypatch):
    """(In-process, with the write made to fail: root could write to a read-only folder.)"""
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runfiles.Path, "write_bytes", read_only)
    with pytest.raises(runfiles.RunError) as err:
        runfiles.existing_run_dir(str(run_dir))
    assert "Permission denied" in str(err.value) and "chmod -R u+w" in str(err.value)
    assert "--output-dir" not in str(err.value)


def test_resume_refuses_to_change_the_maths(one_epoch):
    proc = run_cli("train.py", "--resume", "outputs/r", "--center-loss-weight", "2", cwd=one_epoch)
    assert proc.returncode == 2 and "--center-loss-weight cannot change when resuming" in proc.stderr


def test_incompatible_checkpoint_is_refused(one_epoch, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    state["config"]["feat_dim"] = 3
    torch.save(state, run_dir / "checkpoint.pt")
    proc = run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "does not fit this model" in proc.stderr and "Traceback" not in proc.stderr


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_checkpoint_is_refused(one_epoch, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    with open(run_dir / "checkpoint.pt", "wb") as handle:
        pickle.dump({"format": 1, "epoch": Exploit()}, handle)
    proc = run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not (tmp_path / "pwned.txt").exists()


def test_keep_every_kth_embedding(tmp_path):
    run_cli("train.py", *QUICK, "--epochs", "3", "--embeddings-every", "2", "--run-name", "k", cwd=tmp_path, check=0)
    run_dir = tmp_path / "outputs" / "k"
    assert sorted(p.name for p in (run_dir / "embeddings").iterdir()) == ["epoch_002.npz", "epoch_003.npz"]
    assert sorted(p.name for p in (run_dir / "frames").iterdir()) == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]


def test_resume_clears_half_written_leftovers(one_epoch, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    (run_dir / ".checkpoint.pt.tmp999").write_bytes(b"half a checkpoint")
    (run_dir / "embeddings" / ".epoch_002.frame-only.npz").write_bytes(b"")
    run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path, check=0)
    # Only the lock's own file stays: removed on release, a second process could lock a new file of the
    # same name while a third still holds the old one.
    assert [p.name for p in run_dir.rglob(".*")] == [runfiles.LOCK]
    assert [r["epoch"] for r in read_rows(run_dir)] == ["1", "2"]


@pytest.mark.parametrize("sig, delay", [(signal.SIGKILL, 0.0), (signal.SIGKILL, 0.5), (signal.SIGTERM, 0.5),
                                        (signal.SIGKILL, 3.0)])
def test_no_process_outlives_a_killed_trainer(tmp_path, sig, delay):
    """Killed right after an epoch's line (the frame worker still starting) or later:
    within a few seconds no process the trainer started is left."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *QUICK, "--epochs", "3", "--run-name", "k"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/3 |"):
            break
    time.sleep(delay)
    children = descendants(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    proc.stdout.close()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.2)
    left = [pid for pid in children if alive(pid)]
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} process(es) outlived the trainer"


def test_ctrl_c_in_the_first_epoch_leaves_nothing_to_resume(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *LONGER, "--run-name", "early"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if "from epoch 1" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    output.append(proc.stdout.read())
    assert proc.wait(timeout=60) == 130
    text = "".join(output)
    assert "nothing to resume" in text and "resume with" not in text and "Traceback" not in text
    assert not (tmp_path / "outputs" / "early").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "checkpoint.pt").write_bytes(b""), "not a checkpoint written by train.py (empty, damaged"),
    (lambda d: (d / "checkpoint.pt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(100))),
     "not a checkpoint written by train.py"),
    (lambda d: (d / "checkpoint.pt").write_bytes((d / "checkpoint.pt").read_bytes()[:4000]), "damaged"),
    (lambda d: (d / "embeddings" / "epoch_001.npz").write_bytes(b"PK\x03\x04 half"), "epoch_001.npz"),
], ids=["empty-checkpoint", "random-checkpoint", "truncated-checkpoint", "truncated-npz"])
def test_damaged_files_stop_a_resume_with_one_line(one_epoch, tmp_path, damage, message):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    damage(run_dir)
    proc = run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "may run code" not in proc.stderr  # random bytes are damage, not an attack


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "embeddings" / "epoch_001.npz").write_bytes(b"PK\x03\x04 half"), "epoch_001.npz"),
    (lambda d: open(d / "metrics.csv", "a").write("garbage,line,\n"), "metrics.csv line 3 is damaged"),
], ids=["truncated-npz", "garbage-metrics-line"])
def test_damaged_files_stop_visualize_with_one_line(one_epoch, tmp_path, damage, message):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    damage(run_dir)
    proc = run_cli("visualize.py", run_dir, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_resumed_run_uses_exactly_its_data_or_refuses(tmp_path, monkeypatch, capsys):
    """A run made with a relative --data-dir, resumed from another folder, trains on
    the same files (the path is stored absolute) and never falls back to the sample;
    moved data can be named with --data-dir and is checked to be the same."""
    write_small_set(tmp_path / "work" / "data", "MNIST", train=60, test=20)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    args = ["--data-dir", "data", "--epochs", "3", "--batch-size", "20", "--run-name", "d"]
    real = fail_in_epoch(monkeypatch, 2, KeyboardInterrupt())
    assert train.main(args) == 130
    monkeypatch.setattr(EpochRunner, "run", real)
    run_dir = tmp_path / "work" / "outputs" / "d"
    monkeypatch.chdir(tmp_path / "elsewhere")  # another working folder: "data" means nothing here
    shutil.move(tmp_path / "work" / "data", tmp_path / "moved")
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir)]) == 2  # gone: refused, no silent fallback to the sample
    err = capsys.readouterr().err
    assert "this run trained on mnist from" in err and "--data-dir with --resume" in err and err.count("\n") == 1
    write_small_set(tmp_path / "other", "MNIST", train=80, test=20)  # other data: refused
    assert train.main(["--resume", str(run_dir), "--data-dir", str(tmp_path / "other")]) == 2
    assert "does not hold the data" in capsys.readouterr().err
    assert train.main(["--resume", str(run_dir), "--data-dir", str(tmp_path / "moved")]) == 0  # the moved copy
    assert [row["dataset"] for row in read_rows(run_dir)] == ["mnist"] * 3


def test_a_run_folder_in_use_is_refused_and_freed_when_its_holder_ends(one_epoch, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    (run_dir / ".checkpoint.pt.tmp4242").write_bytes(b"the holder's half-written file")
    holder = runfiles.lock_run_dir(run_dir)  # as a running train.py holds it
    try:
        proc = run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path)
        assert proc.returncode == 2 and "is in use by another train.py" in proc.stderr and proc.stderr.count("\n") == 1
        assert (run_dir / ".checkpoint.pt.tmp4242").exists()  # the holder's files were left alone
    finally:
        holder.release()  # as when the holder exits, however it exits
    run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path, check=0)
    assert [r["epoch"] for r in read_rows(run_dir)] == ["1", "2"]


def test_a_full_disk_is_named_and_loses_nothing(tmp_path, monkeypatch, capsys):
    """The disk fills while epoch 2's checkpoint is written (torch.save then fails
    with a C++ 'unexpected pos' error): one line names the disk and the file, epoch 1
    stays whole, and after freeing space the resume ends as an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    args = [*QUICK, "--epochs", "3", "--run-name", "full"]
    real_save, saves = runfiles.torch.save, []

    def save_until_full(obj, path):
        saves.append(path)
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/12: unexpected pos 4480 vs 4373")
        return real_save(obj, path)

    monkeypatch.setattr(runfiles.torch, "save", save_until_full)
    monkeypatch.setattr(runfiles, "disk_is_full", lambda folder, reserve=1 << 20: len(saves) >= 2)
    assert train.main(args) == 4
    out = capsys.readouterr().out
    message = next(line for line in out.splitlines() if line.startswith("error:"))
    assert "no space left on the device holding" in message and "checkpoint.pt" in message
    assert "resume with: python train.py --resume" in message and "unexpected pos" not in out
    run_dir = tmp_path / "outputs" / "full"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(run_dir.rglob(".*.tmp*"))
    monkeypatch.setattr(runfiles.torch, "save", real_save)  # space freed
    monkeypatch.setattr(runfiles, "disk_is_full", lambda folder, reserve=1 << 20: False)
    assert train.main(["--resume", str(run_dir)]) == 0
    assert [r["epoch"] for r in read_rows(run_dir)] == ["1", "2", "3"]


def fail(error):
    def failing(*args, **kwargs):
        raise error
    return failing


# Each start-up step of a run (run.open_session), after its folder is made, and what fails there.
START_UP_FAULTS = {
    "config.yaml": ("runfiles.write_config", runfiles.DiskFull(Path("outputs/s/config.yaml")), errors.EXIT_NO_SPACE),
    "verify_pairs.npz": ("runfiles.save_pairs", runfiles.DiskFull(Path("outputs/s/verify_pairs.npz")), errors.EXIT_NO_SPACE),
    "first log line": ("RunLog.__call__", OSError(5, "Input/output error", "outputs/s/log.txt"), errors.EXIT_FAULT),
    "epoch runner": ("EpochRunner.__init__", MemoryError(), errors.EXIT_FAULT),
    "TensorBoard writer": ("tensorboard_log.open_log", OSError(28, "No space left on device"), errors.EXIT_FAULT),
    "Ctrl-C": ("tensorboard_log.open_log", KeyboardInterrupt(), errors.EXIT_INTERRUPTED),
}


@pytest.mark.parametrize("step", START_UP_FAULTS)
def test_a_failure_at_any_start_up_step_leaves_no_folder_and_no_lock(tmp_path, monkeypatch, capsys, step):
    """The README's promise: no empty run folder is left behind, however the start fails,
    and the same command then works. One line, naming the fix, and no traceback."""
    monkeypatch.chdir(tmp_path)
    target, error, code = START_UP_FAULTS[step]
    owner, name = target.split(".")
    where = {"runfiles": runfiles, "RunLog": runfiles.RunLog, "EpochRunner": EpochRunner,
             "tensorboard_log": runlib.tensorboard_log}[owner]
    with monkeypatch.context() as patch:
        patch.setattr(where, name, fail(error))
        assert train.main([*QUICK, "--epochs", "1", "--run-name", "s"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run the same command again" in err and "Traceback" not in err, err
    assert not (tmp_path / "outputs" / "s").exists()
    assert train.main([*QUICK, "--epochs", "1", "--run-name", "s"]) == 0  # the folder name is free again


def test_a_failure_while_resuming_keeps_the_run_and_frees_its_lock(one_epoch, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    shutil.copytree(one_epoch / "outputs" / "r", run_dir)
    with monkeypatch.context() as patch:
        patch.setattr(runfiles, "write_config", fail(runfiles.DiskFull(run_dir / "config.yaml")))
        assert train.main(["--resume", str(run_dir), "--epochs", "2"]) == errors.EXIT_NO_SPACE
    assert "free space and run the same command again" in capsys.readouterr().err
    assert runfiles.load_checkpoint(run_dir)["epoch"] == 1  # what it had is kept
    runfiles.lock_run_dir(run_dir).release()  # and nobody holds it
    assert train.main(["--resume", str(run_dir), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in read_rows(run_dir)] == ["1", "2"]


def test_a_second_ctrl_c_while_drawing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fail_in_epoch(monkeypatch, 2, KeyboardInterrupt())

    def second_ctrl_c(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runlib.gif, "make_gif", second_ctrl_c)
    assert train.main([*QUICK, "--epochs", "3", "--run-name", "twice"]) == 130
    err = capsys.readouterr().err
    assert "interrupted again while drawing" in err and "python visualize.py outputs/twice" in err
    assert "Traceback" not in err
    assert torch.load(tmp_path / "outputs" / "twice" / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("error, said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 9437184000 bytes. Error code 12 (Cannot allocate memory)"), "error: out of memory after epoch 1"),
    (MemoryError(), "error: out of memory after epoch 1"),
    (OSError(5, "Input/output error"), "error: Input/output error after epoch 1"),
], ids=["torch-cpu-oom", "python-oom", "io-error"])
def test_a_machine_fault_mid_run_is_one_line_and_keeps_the_finished_epochs(tmp_path, monkeypatch, capsys, error, said):
    monkeypatch.chdir(tmp_path)
    real = fail_in_epoch(monkeypatch, 2, error)
    assert train.main([*QUICK, "--epochs", "3", "--run-name", "m"]) == errors.EXIT_FAULT
    out = capsys.readouterr().out
    message = next(line for line in out.splitlines() if line.startswith("error:"))
    assert message.startswith(said) and "resume with: python train.py --resume" in message
    monkeypatch.setattr(EpochRunner, "run", real)  # the machine recovered
    assert train.main(["--resume", str(tmp_path / "outputs" / "m")]) == 0
    assert [r["epoch"] for r in read_rows(tmp_path / "outputs" / "m")] == ["1", "2", "3"]


def test_a_machine_fault_while_drawing_after_training_is_one_line(tmp_path, monkeypatch, capsys):
    """After the last epoch the GIF is drawn in the trainer: an I/O error there keeps every epoch
    and names the redraw command, without a traceback."""
    monkeypatch.chdir(tmp_path)

    def failing_disk(*args, **kwargs):
        raise OSError(5, "Input/output error", "outputs/f/features.gif")

    monkeypatch.setattr(runlib.gif, "make_gif", failing_disk)
    assert train.main([*QUICK, "--epochs", "1", "--run-name", "f"]) == errors.EXIT_FAULT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: Input/output error while writing outputs/f/features.gif while "
                                            "drawing after training; every finished epoch is kept in outputs/f; "
                                            "redraw with python visualize.py outputs/f once the machine has recovered")
    assert [r["epoch"] for r in read_rows(tmp_path / "outputs" / "f")] == ["1"]


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the machine's faults become one line; an error in the program itself must stay visible."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(EpochRunner, "run", lambda self, *a, **kw: {}["missing"])
    with pytest.raises(KeyError):
        train.main([*QUICK, "--epochs", "1", "--run-name", "bug"])


def test_a_killed_drawing_worker_is_replaced_and_no_frame_is_lost(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *LONGER, "--run-name", "w"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("epoch 1/3 |"):
            break
    workers = [pid for pid in descendants(proc.pid) if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert workers, "no drawing worker found"
    for pid in workers:  # as the OOM killer would
        os.kill(pid, signal.SIGKILL)
    output.append(proc.stdout.read())
    assert proc.wait(timeout=300) == 0, "".join(output)
    run_dir = tmp_path / "outputs" / "w"
    assert sorted(p.name for p in (run_dir / "frames").glob("*.png")) == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]
    assert "Traceback" not in "".join(output) and (run_dir / "features.gif").is_file()


def test_visualize_interrupted_or_out_of_space_says_so_in_one_line(one_epoch, monkeypatch, capsys):
    import visualize

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    run_dir = one_epoch / "outputs" / "r"
    monkeypatch.setattr(commands.gif, "make_gif", ctrl_c)
    assert visualize.main([str(run_dir)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and f"python visualize.py {run_dir}" in err

    def full(*args, **kwargs):
        raise runfiles.DiskFull(run_dir / "features.gif")

    monkeypatch.setattr(commands.gif, "make_gif", full)
    assert visualize.main([str(run_dir)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device holding" in err and "features.gif" in err
    assert "None" not in err


@pytest.fixture
def small_disk(tmp_path):
    """A real 11 MB file system (tmpfs), so the disk really fills: room for epoch 1's
    files and its 6.4 MB checkpoint, not for epoch 2's checkpoint beside it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=11M", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or 'not root'}); the simulated disk-full tests still run")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_really_full_disk_is_named_and_loses_nothing(small_disk, tmp_path, reference):
    args = ["--output-dir", small_disk, "--run-name", "r", *LONGER]
    full = run_cli("train.py", *args, cwd=tmp_path)
    assert full.returncode == errors.EXIT_NO_SPACE, full.stdout + full.stderr
    out = full.stdout + full.stderr
    message = next(line for line in out.splitlines() if line.startswith("error:"))
    assert "no space left on the device holding" in message and "resume with: python train.py --resume" in message
    assert "Traceback" not in out and "unexpected pos" not in out
    run_dir = small_disk / "r"
    assert runfiles.load_checkpoint(run_dir)["epoch"] >= 1 and read_rows(run_dir)
    # Free space (a bigger disk), then the command the message gave.
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)
    run_cli("train.py", "--resume", run_dir, cwd=tmp_path, check=0)
    assert_same_result(run_dir, reference)


def test_the_linux_only_calls_are_guarded(monkeypatch, tmp_path):
    """Windows has no fcntl, prctl, process groups or signal masks: nothing imports fcntl,
    the run lock works through filelock, and each Linux-only call is skipped where it is missing."""
    import subprocess as sp
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import train, visualize, clviz.sweep, clviz.workers, clviz.member, clviz.background\n")
    proc = sp.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from clviz import background
    monkeypatch.delattr(errors.signal, "pthread_sigmask")
    monkeypatch.delattr(errors.os, "setpgrp")
    errors.hold_stops(True)  # no-ops, not AttributeErrors
    errors.leave_terminal_group()
    monkeypatch.setattr(background.sys, "platform", "win32")
    monkeypatch.setattr(background.ctypes, "CDLL", fail(AssertionError("prctl called off Linux")))
    monkeypatch.setattr(background.threading.Thread, "start", lambda self: None)
    background.end_with_parent(os.getppid())
    lock = runfiles.lock_run_dir(tmp_path)
    with pytest.raises(runfiles.RunError, match="in use by another train.py"):
        runfiles.lock_run_dir(tmp_path)
    lock.release()
    runfiles.lock_run_dir(tmp_path).release()
