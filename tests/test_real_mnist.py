"""One short run on the real MNIST files, when a copy is at hand
(CI sets CENTERLOSS_MNIST_DIR); skipped otherwise."""

import os

import numpy as np
import pytest

from tests.conftest import read_rows, run_cli

MNIST_DIR = os.environ.get("CENTERLOSS_MNIST_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR, reason="set CENTERLOSS_MNIST_DIR to a folder holding MNIST/raw to run this")
def test_default_config_learns_on_real_mnist(tmp_path):
    proc = run_cli("train.py", "--data-dir", MNIST_DIR, "--allow-sample-fallback", "false", "--train-subset", "12000",
                   "--epochs", "1", "--run-name", "real", cwd=tmp_path, timeout=600, check=0)
    run_dir = tmp_path / "outputs" / "real"
    row = read_rows(run_dir)[0]
    assert row["dataset"] == "mnist"
    assert float(row["test_acc"]) > 60.0, proc.stdout  # 120 steps of the default recipe: 74% measured, chance is 10%
    assert float(row["nearest_center_acc"]) > 40.0 and 0 < float(row["intra_inter_ratio"]) < 10
    with np.load(run_dir / "embeddings" / "epoch_001.npz") as npz:
        assert npz["test_features"].shape == (10000, 2) and npz["train_features"].shape == (12000, 2)
    for name in ("features.gif", "metrics.png", "index.html"):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR, reason="set CENTERLOSS_MNIST_DIR to a folder holding MNIST/raw to run this")
def test_lambda_one_trains_without_diverging_on_real_mnist(tmp_path):
    """lambda 1 used to diverge to NaN at step 8. With the warm-up (here: 0.5 epoch at
    lambda 0, then a ramp to 1 over 0.5 epoch) 300 steps on real MNIST stay finite,
    reach lambda 1 at step 150, and accuracy rises while the pull is on."""
    proc = run_cli("train.py", "--data-dir", MNIST_DIR, "--allow-sample-fallback", "false", "--train-subset", "15000",
                   "--epochs", "2", "--center-loss-weight", "1", "--center-loss-delay", "0.5", "--center-loss-ramp", "0.5",
                   "--run-name", "lambda1", cwd=tmp_path, timeout=900, check=0)
    rows = read_rows(tmp_path / "outputs" / "lambda1")
    assert len(rows) == 2, proc.stdout
    for row in rows:
        assert all(np.isfinite(float(row[key])) for key in ("nll", "center_loss", "test_nll", "intra_inter_ratio"))
    accs = [float(row["test_acc"]) for row in rows]
    assert accs[1] > accs[0] and accs[1] > 90.0, accs  # epoch 2 runs entirely at lambda 1
    assert float(rows[1]["intra_inter_ratio"]) < float(rows[0]["intra_inter_ratio"])  # the pull tightens the clusters
