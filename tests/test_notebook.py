"""The notebook API (clviz/notebook.py) and docs/tour.ipynb, executed top to bottom."""

import os

import numpy as np
import pytest

from clviz import notebook
from tests.conftest import REPO


@pytest.mark.slow
def test_train_load_and_show_from_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = notebook.train(dataset="mnist-sample", train_subset=400, batch_size=50, epochs=2, verify_pairs=200, quiet=True)
    assert run.parent.name == "outputs" and (run / "features.gif").is_file()
    data = notebook.load(run)
    assert [row["epoch"] for row in data.metrics] == [1, 2] and data.config["epochs"] == 2
    assert data.column("test_acc").shape == (2,) and np.isfinite(data.column("intra_inter_ratio")).all()
    assert sorted(data.embeddings) == [1, 2] and data.embeddings[2]["test_features"].shape[1] == 2
    assert notebook.show(run) == run / "features.gif"  # outside a notebook: the path
    assert notebook.show(run, epoch=1) == run / "frames" / "epoch_001.png"
    with pytest.raises(ValueError, match="did you mean 'center_loss_weight'"):
        notebook.train(center_los_weight=1)
    with pytest.raises(ValueError, match="error: config key 'center_loss_weight' must be >= 0.0"):
        notebook.train(dataset="mnist-sample", center_loss_weight=-1, quiet=True)


def test_fields_become_the_flags_train_py_reads():
    assert notebook.flag_args({"center_loss_weight": 0.1, "frame_regions": False, "unknown_classes": [8, 9], "seed": None}) == [
        "--center-loss-weight", "0.1", "--frame-regions", "false", "--unknown-classes", "8,9", "--seed", "null"]


@pytest.mark.slow  # a sweep of two 8-epoch runs on the offline sample: about 2.5 minutes on 2 cores
def test_the_tour_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install -r requirements-dev.txt (nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -r requirements-dev.txt (nbclient, ipykernel)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend, as in Jupyter (CI sets Agg)
    book = nbformat.read(REPO / "docs" / "tour.ipynb", as_version=4)
    assert len(book.cells) == 10
    nbclient.NotebookClient(book, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    gifs = [out for out in outputs if out.output_type == "display_data" and "image/gif" in out.data]
    assert len(gifs) == 2  # the sweep's grid, the lambda 1 run
    assert any(out.output_type == "display_data" and "image/png" in out.data for out in outputs)  # the histogram
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "center_loss_weight=0 " in text and "center_loss_weight=1 " in text and "median distance to its center" in text
    assert [p.name.endswith("sweep-center_loss_weight") for p in (tmp_path / "outputs").iterdir()] == [True]
