"""Features wider than 2-D: the PCA projection against an independent
eigen-decomposition, 3-D frames (camera, sphere, point cap) and the
projected frames' titles."""

import numpy as np
import pytest
from PIL import Image

from clviz import frames, gif, runfiles
from clviz.projection import fit_pca
from tests.conftest import QUICK, gif_info, read_rows, run_cli


def blobs(dim, n=3000, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, (10, dim)).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    return (centers[labels] + rng.normal(0, spread, (n, dim))).astype(np.float32), labels, centers


def test_pca_matches_the_covariance_eigenvectors():
    features, _, _ = blobs(16)
    projection = fit_pca(features)
    covariance = np.cov(features.T, bias=True)
    values, vectors = np.linalg.eigh(covariance)  # ascending
    top = vectors[:, ::-1][:, :2].T
    for got, want in zip(projection.components, top):
        assert abs(abs(got @ want) - 1) < 1e-8  # the same axis, whatever its sign
    assert projection.explained == pytest.approx(values[::-1][:2].sum() / values.sum(), rel=1e-9)
    centred = features.astype(np.float64) - features.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(projection(features), centred @ projection.components.T, rtol=1e-9, atol=1e-6)


def test_pca_signs_do_not_flip_between_nearby_epochs():
    features, _, _ = blobs(16)
    first = fit_pca(features)
    later = fit_pca(features * 1.05 + np.random.default_rng(1).normal(0, 0.05, features.shape))
    assert np.all(np.sum(first.components * later.components, axis=1) > 0.99)
    flipped = fit_pca(-features)  # the same cloud mirrored: the rule, not the data, fixes the sign
    assert np.all(np.sum(first.components * flipped.components, axis=1) > 0.99)


def save(path, dim, head="linear", epoch=1, n=3000):
    train, train_labels, centers = blobs(dim, n)
    test, test_labels, _ = blobs(dim, n // 3, seed=1)
    runfiles.save_embeddings(path, epoch=epoch, epochs=3, train_features=train, train_labels=train_labels,
                             test_features=test, test_labels=test_labels, centers=centers, test_acc=97.0,
                             limits=frames.epoch_limits(train, test, centers), dataset="mnist", center_loss_weight=0.1,
                             center_update="sgd", head=head, head_weight=centers / 10)
    return path


@pytest.mark.parametrize("head", ["linear", "arcface"])
def test_a_3d_frame_turns_with_the_epoch_and_caps_its_points(tmp_path, head):
    npz = save(tmp_path / "e.npz", 3, head, n=9000)
    options = frames.FrameOptions(view="auto")
    first, turned = tmp_path / "a.png", tmp_path / "b.png"
    frames.render_frame(npz, first, None, options)
    frames.render_frame(npz, turned, None, options, azimuth=frames.azimuth_of(1) + 40)
    a, b = np.asarray(Image.open(first)), np.asarray(Image.open(turned))
    assert a.shape == b.shape and a.shape[0] >= 400
    assert (a != b).any(axis=2).mean() > 0.02  # the camera really moved
    renderer = frames._renderer(options, options.view_for(head), 3, frames.ClassKey())
    title = renderer.axes["train"].get_title()
    assert f"{frames.POINTS_3D:,} of 9,000 points" in title  # the cap is said where it applies
    if head == "arcface":
        assert "unit sphere" in title
        drawn = np.concatenate([np.stack(line.get_data_3d(), 1) for line in renderer.points["train"] if len(line.get_data_3d()[0])])
        np.testing.assert_allclose(np.linalg.norm(drawn, axis=1), 1.0, rtol=1e-4)


def test_wider_features_are_drawn_as_their_pca_plane(tmp_path):
    npz = save(tmp_path / "e.npz", 16)
    emb = runfiles.load_embeddings(npz)
    flat = frames.projected(emb)
    assert flat["train_features"].shape == (3000, 2) and "head_weight" not in flat
    assert frames.frame_title(flat).endswith("% of the variance") and "PCA of the 16-D features" in frames.frame_title(flat)
    out = tmp_path / "f.png"
    frames.render_frame(npz, out, frames.square_limits([emb["limits"]]))
    assert Image.open(out).size[0] > 500


@pytest.mark.slow
@pytest.mark.parametrize("dim, head", [(3, "arcface"), (16, "linear")])
def test_wide_features_run_end_to_end(tmp_path, dim, head):
    """Frames, GIF, turntable (3-D), interactive page and metrics, then a redraw without retraining."""
    run_cli("train.py", *QUICK, "--epochs", "2", "--feat-dim", dim, "--head", head, "--run-name", "w", cwd=tmp_path, check=0)
    run_dir = tmp_path / "outputs" / "w"
    assert gif_info(run_dir / "features.gif")[0] == 2
    assert (run_dir / "interactive.html").is_file() and (run_dir / "plotly.min.js").is_file()
    rows = read_rows(run_dir)
    assert len(rows) == 2 and float(rows[-1]["intra_inter_ratio"]) > 0  # metrics from the full features
    if dim == 3:
        assert gif_info(run_dir / "features_turntable.gif")[0] == 360 // gif.TURNTABLE_STEP
        assert "features_turntable.gif" in (run_dir / "index.html").read_text()
    else:
        assert not (run_dir / "features_turntable.gif").exists()
    before = (run_dir / "frames" / "epoch_002.png").read_bytes()
    run_cli("visualize.py", run_dir, "--max-points", "300", cwd=tmp_path, check=0)
    assert (run_dir / "frames" / "epoch_002.png").read_bytes() != before
