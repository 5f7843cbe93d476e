"""train.py and visualize.py as a user runs them: subprocesses on tiny data."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clviz.config import Config
from clviz.metrics import discriminativeness
from tests.conftest import QUICK, gif_info, read_rows, run_cli, without_time

pytestmark = pytest.mark.slow

METRIC_COLUMNS = {"epoch", "dataset", "nll", "center_loss", "center_loss_weight", "train_acc", "test_nll", "test_acc", "nearest_center_acc",
                  "intra", "inter", "intra_inter_ratio", "lr", "epoch_seconds"}


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """One finished 2-epoch run, shared by the tests that only read it."""
    work = tmp_path_factory.mktemp("two")
    # StepLR, so that test_resume_matches_an_uninterrupted_run can extend a 1-epoch run to it exactly
    # (a cosine schedule is planned over --epochs; extending it re-plans the rest).
    proc = run_cli("train.py", *QUICK, "--epochs", "2", "--run-name", "r", "--frame-duration-ms", "150", "--lr-schedule", "step",
                   cwd=work, check=0)
    return work / "outputs" / "r", proc


def test_run_folder_has_everything(two_epochs):
    run_dir, proc = two_epochs
    for name in ("config.yaml", "log.txt", "metrics.csv", "metrics.png", "index.html", "checkpoint.pt", "features.gif",
                 "embeddings/epoch_001.npz", "embeddings/epoch_002.npz", "frames/epoch_001.png", "frames/epoch_002.png"):
        assert (run_dir / name).is_file(), name
    assert "epoch 2/2 | nll " in proc.stdout and "| test acc " in proc.stdout and "| intra/inter " in proc.stdout
    rows = read_rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and METRIC_COLUMNS <= set(rows[0])
    assert rows[0]["dataset"] == "mnist-sample"
    # The logged discriminativeness is that of the saved test features and centers.
    with np.load(run_dir / "embeddings" / "epoch_002.npz") as npz:
        expected = discriminativeness(torch.from_numpy(npz["test_features"].astype(np.float32)),
                                      torch.from_numpy(npz["test_labels"]), torch.from_numpy(npz["centers"]))
    assert float(rows[1]["nearest_center_acc"]) == pytest.approx(expected["nearest_center_acc"], abs=0.5)
    assert float(rows[1]["intra_inter_ratio"]) == pytest.approx(expected["ratio"], rel=0.02)  # float16 storage
    log = (run_dir / "log.txt").read_text().splitlines()
    assert log[0].startswith("python ") and "torch" in log[0] and log[1].startswith("git commit") and log[2].startswith("device")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["train_subset"] == 400 and saved["run_name"] == "r"


def test_gif_has_one_frame_per_epoch_loops_and_holds_the_last(two_epochs):
    run_dir, _ = two_epochs
    count, loop, durations = gif_info(run_dir / "features.gif")
    assert count == 2 and loop == 0 and durations == [150, 1500]


def test_embeddings_are_compact_and_in_dataset_order(two_epochs):
    run_dir, _ = two_epochs
    with np.load(run_dir / "embeddings" / "epoch_002.npz") as npz:
        assert npz["train_features"].dtype == np.float16 and npz["train_features"].shape == (400, 2)
        assert npz["test_features"].shape == (1000, 2) and npz["centers"].shape == (10, 2)
        assert npz["train_labels"][:10].tolist() == list(range(10))  # the sample's interleaved order
        assert int(npz["epoch"]) == 2 and str(npz["dataset"]) == "mnist-sample" and str(npz["head"]) == "linear"
        assert float(npz["center_loss_weight"]) == Config().center_loss_weight and str(npz["center_update"]) == "sgd"
    assert (run_dir / "embeddings" / "epoch_002.npz").stat().st_size < 30_000


def test_checkpoint_holds_the_whole_state(two_epochs):
    run_dir, _ = two_epochs
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state["parts"]) == {"model", "center_loss", "net_optimizer", "center_optimizer", "scheduler"}
    assert set(state["rng"]) == {"data", "torch"} and state["config"]["epochs"] == 2 and len(state["metrics"]) == 2


def test_visualize_redraws_without_retraining(two_epochs, tmp_path):
    run_dir, _ = two_epochs
    for png in (run_dir / "frames").glob("*.png"):
        png.unlink()
    (run_dir / "features.gif").unlink()
    proc = run_cli("visualize.py", run_dir, "--split", "test", "--duration-ms", "90", "--max-points", "300",
                   cwd=tmp_path, check=0)
    assert "redrew 2 frames" in proc.stdout
    count, loop, durations = gif_info(run_dir / "features.gif")
    assert count == 2 and loop == 0 and durations[0] == 90
    with Image.open(run_dir / "frames" / "epoch_001.png") as png:
        assert png.width < png.height * 1.6  # one panel only


def test_visualize_refuses_a_folder_without_embeddings(tmp_path):
    proc = run_cli("visualize.py", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and "no embeddings" in proc.stderr


def test_resume_matches_an_uninterrupted_run(two_epochs, tmp_path):
    reference, _ = two_epochs
    run_cli("train.py", *QUICK, "--epochs", "1", "--run-name", "r", "--frame-duration-ms", "150", "--lr-schedule", "step",
            cwd=tmp_path, check=0)
    run_dir = tmp_path / "outputs" / "r"
    proc = run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path, check=0)
    assert "from epoch 2" in proc.stdout
    assert without_time(read_rows(run_dir)) == without_time(read_rows(reference))
    ours = torch.load(run_dir / "checkpoint.pt", weights_only=True)["parts"]
    theirs = torch.load(reference / "checkpoint.pt", weights_only=True)["parts"]
    for key in ours["model"]:
        assert torch.equal(ours["model"][key], theirs["model"][key]), key
    assert torch.equal(ours["center_loss"]["centers"], theirs["center_loss"]["centers"])
    assert gif_info(run_dir / "features.gif")[0] == 2


@pytest.mark.parametrize("flag, value", [("--max-points", "-5"), ("--duration-ms", "-100"), ("--hold-last-ms", "0")])
def test_visualize_refuses_bad_numbers_in_one_line(tmp_path, flag, value):
    proc = run_cli("visualize.py", tmp_path, flag, value, cwd=tmp_path)
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_short_run_says_what_it_changed_and_that_it_is_still_too_short(tmp_path):
    """400 images x 2 epochs at the default batch: the short-run rule takes the batch down to 25, and
    32 steps are still too few for the warm-up, which the run says in one line with the fix."""
    proc = run_cli("train.py", "--dataset", "mnist-sample", "--train-subset", "400", "--epochs", "2",
                   "--run-name", "s", cwd=tmp_path, check=0)
    assert ("short run (8 steps of 100 images): batch_size 100 -> 25, lr 0.01 -> 0.05, lr_warmup 0.0 -> 0.3 "
            "for 32 steps (--short-run off keeps the defaults)") in proc.stdout
    assert "warning: 32 training steps are too few for the lambda warm-up" in proc.stdout and "--epochs 75" in proc.stdout
    config_text = (tmp_path / "outputs" / "s" / "config.yaml").read_text()
    assert config_text.startswith("# short run (8 steps") and yaml.safe_load(config_text)["batch_size"] == 25
