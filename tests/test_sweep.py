"""Sweeps as a user runs them: one command, a folder per member, grid, table, page."""

import csv

import pytest
import yaml
from PIL import Image

import sweep
from config import ConfigError
from tests.conftest import QUICK, run_cli

TINY = [*QUICK[:2], "--train-subset", "200", "--batch-size", "50", "--frame-duration-ms", "100"]


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("train.py", *TINY, "--epochs", "2", "--sweep", "center_loss_weight=0,0.1", "--sweep", "seed=0,1",
                   "--run-name", "s", cwd=cwd, check=0)
    return cwd / "outputs" / "s", proc


def test_sweep_trains_every_combination_into_its_own_run_folder(grid_sweep):
    sweep_dir, proc = grid_sweep
    names = ["center_loss_weight=0__seed=0", "center_loss_weight=0__seed=1",
             "center_loss_weight=0.1__seed=0", "center_loss_weight=0.1__seed=1"]
    meta = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    assert [m["name"] for m in meta["members"]] == names
    for name in names:
        member = sweep_dir / name
        assert (member / "features.gif").is_file() and (member / "index.html").is_file()
        saved = yaml.safe_load((member / "config.yaml").read_text())
        assert saved["center_loss_weight"] == float(name.split("=")[1].split("__")[0])
        assert saved["seed"] == int(name[-1]) and saved["epochs"] == 2
    summary = rows(sweep_dir / "summary.csv")
    assert [r["status"] for r in summary] == ["finished"] * 4 and all(r["epochs_done"] == "2" for r in summary)
    # Different seeds really are different runs.
    assert summary[0]["test_acc"] != summary[1]["test_acc"] or summary[0]["intra"] != summary[1]["intra"]


def test_sweep_draws_a_grid_with_a_shared_epoch_counter(grid_sweep):
    sweep_dir, _ = grid_sweep
    with Image.open(sweep_dir / "grid.gif") as gif:
        assert gif.n_frames == 2 and gif.info["loop"] == 0
        width, height = gif.size
    assert width > height * 1.5  # two columns (lambda), one row: the first seed only
    assert sorted(p.name for p in (sweep_dir / "grid_frames").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (sweep_dir / "grid.png").read_bytes() == (sweep_dir / "grid_frames" / "epoch_002.png").read_bytes()
    assert (sweep_dir / "metrics.png").is_file()
    page = (sweep_dir / "index.html").read_text()
    assert 'src="grid.gif"' in page and 'href="center_loss_weight=0.1__seed=1/index.html"' in page


def test_results_table_averages_over_the_seeds(grid_sweep):
    sweep_dir, proc = grid_sweep
    table = (sweep_dir / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| 0")]
    assert len(lines) == 2 and all("2/2" in line and " ± " in line for line in lines)
    summary = rows(sweep_dir / "summary.csv")
    accs = [float(r["test_acc"]) for r in summary[:2]]
    mean = sum(accs) / 2
    assert f"{mean:.2f} ± " in lines[0]
    assert "center_loss_weight | runs" in table and table in proc.stdout


def test_a_diverging_member_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = run_cli("train.py", *TINY, "--epochs", "2", "--sweep", "lr=1e6,0.01", "--run-name", "d", cwd=tmp_path, check=0)
    sweep_dir = tmp_path / "outputs" / "d"
    summary = {r["member"]: r for r in rows(sweep_dir / "summary.csv")}
    assert summary["lr=1e+06"]["status"] == "diverged" and summary["lr=0.01"]["status"] == "finished"
    assert "loss became" in proc.stdout
    assert "0/1 (diverged)" in (sweep_dir / "results.md").read_text()
    assert (sweep_dir / "grid.gif").is_file()


def test_resume_finishes_missing_members_and_extends_finished_ones(tmp_path):
    run_cli("train.py", *TINY, "--epochs", "1", "--sweep", "center_update=sgd,paper", "--run-name", "r", cwd=tmp_path, check=0)
    sweep_dir = tmp_path / "outputs" / "r"
    import shutil
    shutil.rmtree(sweep_dir / "center_update=paper")  # as if the sweep had been stopped before this member
    (sweep_dir / "center_update=paper").mkdir()  # ... or during its first epoch
    proc = run_cli("train.py", "--resume", sweep_dir, "--epochs", "2", cwd=tmp_path, check=0)
    assert "center_update=paper" in proc.stdout
    summary = rows(sweep_dir / "summary.csv")
    assert [(r["status"], r["epochs_done"]) for r in summary] == [("finished", "2"), ("finished", "2")]
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
def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path, argv, message):
    proc = run_cli("train.py", *TINY, *argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {proc.stderr.strip()[7:]}"
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_parse_axes_types_the_values():
    assert sweep.parse_axes(["center-loss-weight=0,0.5", "center_update=paper"]) == [
        ("center_loss_weight", [0.0, 0.5]), ("center_update", ["paper"])]
    with pytest.raises(ConfigError, match="twice"):
        sweep.parse_axes(["lr=0.1", "lr=0.2"])
