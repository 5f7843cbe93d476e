"""Sweeps as a user runs them: one command, a folder per member, grid, table, page."""

import csv
import shutil

import pytest
import yaml
from PIL import Image

import train
from clviz import errors, sweep
from clviz.config import ConfigError
from clviz.training import EpochRunner
from tests.conftest import QUICK

TINY = [*QUICK[:2], "--train-subset", "200", "--batch-size", "50", "--frame-duration-ms", "100"]


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


NAMES = ["lr=0.01__seed=0", "lr=0.01__seed=1", "lr=1e+06__seed=0", "lr=1e+06__seed=1"]


@pytest.mark.slow
def test_sweep_trains_every_combination_into_its_own_run_folder(small_sweep):
    sweep_dir, proc = small_sweep
    meta = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert [m["name"] for m in meta["members"]] == NAMES
    for name in NAMES:
        saved = yaml.safe_load((sweep_dir / name / "config.yaml").read_text())
        assert saved["lr"] == float(name[3:].split("__")[0]) and saved["seed"] == int(name[-1]) and saved["epochs"] == 2
    for name in NAMES[:2]:
        assert (sweep_dir / name / "features.gif").is_file() and (sweep_dir / name / "index.html").is_file()
    summary = rows(sweep_dir / "summary.csv")
    assert [(r["status"], r["epochs_done"]) for r in summary] == [("finished", "2")] * 2 + [("diverged", "0")] * 2
    # Different seeds really are different runs.
    assert summary[0]["test_acc"] != summary[1]["test_acc"] or summary[0]["intra"] != summary[1]["intra"]
    assert "loss became" in proc.stdout  # the diverging members said why, and the sweep went on


@pytest.mark.slow
def test_sweep_draws_a_grid_with_a_shared_epoch_counter(small_sweep):
    sweep_dir, _ = small_sweep
    with Image.open(sweep_dir / "grid.gif") as gif:
        assert gif.n_frames == 2 and gif.info["loop"] == 0
        width, height = gif.size
    assert width > height * 1.5  # two columns (lr), one row: the first seed only
    assert sorted(p.name for p in (sweep_dir / "grid_frames").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (sweep_dir / "grid.png").read_bytes() == (sweep_dir / "grid_frames" / "epoch_002.png").read_bytes()
    assert (sweep_dir / "metrics.png").is_file()
    page = (sweep_dir / "index.html").read_text()
    assert 'src="grid.gif"' in page and 'href="lr=1e+06__seed=1/index.html"' in page and "diverged" in page


@pytest.mark.slow
def test_results_table_averages_over_the_seeds(small_sweep):
    sweep_dir, proc = small_sweep
    table = (sweep_dir / "results.md").read_text()
    assert "| lr | runs |" in table and table.strip().splitlines()[0] in proc.stdout
    good = next(line for line in table.splitlines() if line.startswith("| 0.01 |"))
    bad = next(line for line in table.splitlines() if line.startswith("| 1e+06 |"))
    summary = rows(sweep_dir / "summary.csv")
    accs = [float(r["test_acc"]) for r in summary[:2]]
    mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2 ** 0.5  # sample std of two values
    assert f"| 2/2 | {mean:.2f} ± {std:.2f} |" in good
    assert "0/2 (diverged) | — |" in bad


@pytest.mark.slow
def test_resume_finishes_missing_members_and_extends_finished_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main([*TINY, "--train-subset", "100", "--epochs", "1", "--sweep", "center_update=sgd,paper",
                       "--run-name", "r"]) == 0
    sweep_dir = tmp_path / "outputs" / "r"
    shutil.rmtree(sweep_dir / "center_update=paper")  # as if the sweep had been stopped before this member
    (sweep_dir / "center_update=paper").mkdir()  # ... or during its first epoch
    capsys.readouterr()
    assert train.main(["--resume", str(sweep_dir), "--epochs", "2"]) == 0
    assert "center_update=paper" in capsys.readouterr().out
    summary = rows(sweep_dir / "summary.csv")
    assert [(r["status"], r["epochs_done"]) for r in summary] == [("finished", "2"), ("finished", "2")]
    # Resuming a finished sweep is refused, as a finished run is.
    assert train.main(["--resume", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert "already finished all 2 epochs of every member" in err and "--epochs N" in err
    with Image.open(sweep_dir / "grid.gif") as gif:
        assert gif.n_frames == 2


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "center_los_weight=0,1"], "unknown config key 'center_los_weight' (did you mean 'center_loss_weight'?)"),
    (["--sweep", "lr=0.1,-1"], "config key 'lr' must be > 0.0; got -1.0"),
    (["--sweep", "lr"], "must look like KEY=V1,V2"),
    (["--sweep", "lr=0.1,,0.2"], "empty value"),
    (["--sweep", "lr=0.1,0.1"], "repeats a value"),
    (["--lr", "0.1", "--sweep", "lr=0.2,0.3"], "both set 'lr'"),
    (["--sweep", "run_name=a,b"], "cannot vary 'run_name'"),
    (["--sweep", "head_margin=0.1,0.2"], "applies to the cosface and arcface heads"),
])
def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert train.main([*TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_parse_axes_types_the_values():
    assert sweep.parse_axes(["center-loss-weight=0,0.5", "center_update=paper"]) == [
        ("center_loss_weight", [0.0, 0.5]), ("center_update", ["paper"])]
    with pytest.raises(ConfigError, match="twice"):
        sweep.parse_axes(["lr=0.1", "lr=0.2"])


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_keeps_finished_work_and_resume_completes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real = EpochRunner.run

    def interrupted_in_second_member(self, *args, **kwargs):
        if self.cfg.seed == 1:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EpochRunner, "run", interrupted_in_second_member)
    argv = [*TINY, "--train-subset", "100", "--epochs", "1", "--sweep", "seed=0,1,2", "--run-name", "c"]
    assert train.main(argv) == errors.EXIT_INTERRUPTED
    out = capsys.readouterr().out
    sweep_dir = tmp_path / "outputs" / "c"
    assert "sweep interrupted; resume with: python train.py --resume outputs/c" in out
    summary = rows(sweep_dir / "summary.csv")
    assert [r["status"] for r in summary] == ["finished", "interrupted", "not started"]
    assert (sweep_dir / "grid.gif").is_file() and (sweep_dir / "index.html").is_file()  # drawn from what finished
    monkeypatch.setattr(EpochRunner, "run", real)
    assert train.main(["--resume", str(sweep_dir)]) == 0
    assert [r["status"] for r in rows(sweep_dir / "summary.csv")] == ["finished"] * 3


def claim(parent, stamp, out):
    """One process naming a new folder at a fixed instant (what two commands started in the same second see)."""
    from clviz import runfiles
    runfiles.time.strftime = lambda fmt: stamp
    out.put(runfiles.make_folder(parent, None, "sweep-seed").name)


def test_sweeps_and_runs_started_in_the_same_second_get_a_folder_each(tmp_path, monkeypatch):
    from clviz import config as configlib
    from clviz import runfiles
    monkeypatch.setattr(runfiles.time, "strftime", lambda fmt: "20261207-120000")
    args = configlib.parse_unknown(train.make_parser(), ["--sweep", "seed=0,1", "--output-dir", str(tmp_path)])
    first, second = sweep.start(args)[0], sweep.start(args)[0]
    assert (first.name, second.name) == ("20261207-120000-sweep-seed", "20261207-120000-sweep-seed-2")
    assert (second / "sweep.yaml").is_file()
    run_dir = runfiles.new_run_dir(str(tmp_path), None, "default")
    assert runfiles.new_run_dir(str(tmp_path), None, "default").name == run_dir.name + "-2"
    with pytest.raises(runfiles.RunError, match="already exists; pick another --run-name"):
        runfiles.make_folder(str(tmp_path), run_dir.name, "default")  # a name the user gave is never changed


@pytest.mark.slow  # four spawned interpreters importing torch: ~20 s on 2 cores
def test_processes_naming_folders_in_the_same_second_never_share_one(tmp_path):
    """The mkdir is the claim, so several processes at the same instant get a folder each."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=claim, args=(str(tmp_path / "race"), "20261207-130000", out)) for _ in range(4)]
    (tmp_path / "race").mkdir()
    for proc in procs:
        proc.start()
    names = sorted(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join()
    assert names == ["20261207-130000-sweep-seed"] + [f"20261207-130000-sweep-seed-{k}" for k in (2, 3, 4)]
