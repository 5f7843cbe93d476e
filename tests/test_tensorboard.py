"""--tensorboard: the events read back with TensorBoard's own reader carry
every metrics.csv column, each frame, and the projector's test features;
without the package, one line names the install command."""

import sys

import numpy as np
import pytest

import train
from clviz import tensorboard_log
from tests.conftest import QUICK, read_rows


@pytest.mark.slow
def test_events_hold_the_metrics_frames_and_projector_data(tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.chdir(tmp_path)
    # With classes held out, so the projector must show them as unknowns.
    assert train.main([*QUICK, "--epochs", "2", "--tensorboard", "--run-name", "tb", "--unknown-classes", "8,9"]) == 0
    run_dir = tmp_path / "outputs" / "tb"
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = read_rows(run_dir)
    for column in ("nll", "center_loss", "center_loss_weight", "train_acc", "test_acc", "nearest_center_acc",
                   "intra", "inter", "intra_inter_ratio", "open_auroc", "open_tnr95", "verify_eer", "lr"):
        points = events.Scalars(f"metrics/{column}")
        assert [p.step for p in points] == [1, 2], column
        assert [p.value for p in points] == pytest.approx([float(row[column]) for row in rows], rel=1e-5), column
    frames = events.Images("frames")
    assert [f.step for f in frames] == [1, 2] and frames[0].width > 500
    projector = run_dir / "tensorboard" / "00002" / "test features"
    assert (run_dir / "tensorboard" / "projector_config.pbtxt").is_file()
    vectors = np.loadtxt(projector / "tensors.tsv", delimiter="\t")
    labels = (projector / "metadata.tsv").read_text().splitlines()
    assert vectors.shape == (1000, 2) and len(labels) == 1000  # 800 known test digits and 200 unknowns
    assert set(labels) == {str(d) for d in range(8)} | {"unknown 8", "unknown 9"}
    assert (projector / "sprite.png").is_file()


def test_missing_tensorboard_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails as if not installed
    monkeypatch.chdir(tmp_path)
    assert train.main([*QUICK, "--epochs", "1", "--tensorboard", "--run-name", "no"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and tensorboard_log.INSTALL in err
    assert not (tmp_path / "outputs" / "no").exists()
