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
