"""Held-out classes (open set) and verification pairs: the metrics against hand
computations, the data split, the drawing, and a tiny run end to end."""

import csv
import shutil

import numpy as np
import pytest
import torch

from clviz import config as configlib
from clviz import data as datalib
from clviz import frames, metrics, runfiles
from tests.conftest import OPEN, QUICK, read_rows, run_cli, without_time

# ---------- the metrics, by hand ----------


def test_open_set_metrics_by_hand_with_ties():
    """4 knowns at distances 1, 2, 2, 3 and 3 unknowns at 2, 4, 5. AUROC counts each
    (unknown, known) pair: farther = 1, tie = 1/2: (1 + 1/2 + 1/2 + 0) + 4 + 4 = 10 of 12.
    95% of 4 knowns is all 4, so the threshold is 3 and the unknowns beyond it are 4 and 5."""
    got = metrics.open_set([1, 2, 2, 3], [2, 4, 5], known_confidence=[0.9, 0.8, 0.8, 0.7],
                           unknown_confidence=[0.8, 0.6, 0.5])
    assert got["open_auroc"] == pytest.approx(10 / 12)
    # Scored by 1 - confidence: knowns .1 .2 .2 .3, unknowns .2 .4 .5: the same order, the same 10 of 12.
    assert got["open_auroc_softmax"] == pytest.approx(10 / 12)
    assert got["open_threshold"] == 3.0
    assert got["open_tnr95"] == pytest.approx(100 * 2 / 3)


def test_the_threshold_keeps_95_percent_of_the_knowns_and_ties_stay_known():
    known = np.r_[np.arange(1, 20), 19.0]  # 20 knowns, the two largest tied at 19: 95% = 19 of them
    got = metrics.open_set(known, [18.5, 19, 19.5, 30], np.ones(20), np.ones(4))
    assert got["open_threshold"] == 19.0  # 18 would keep 18 of 20 (90%); a tie at 19 keeps both
    assert got["open_tnr95"] == pytest.approx(50.0)  # 19.5 and 30 are rejected; 18.5 and 19 are not
    assert got["open_auroc_softmax"] == pytest.approx(0.5)  # constant scores: chance


def test_verification_metrics_by_hand():
    """Genuine scores .9 .8 .5, impostors .5 .2 .1 (a tie at .5). Accepting >= .8: TAR 2/3 at
    FAR 0 (so TAR@FAR0.1% = 2/3); >= .5: TAR 1, FAR 1/3. The false-reject rate falls from 1/3
    to 0 as the false-accept rate rises from 0 to 1/3: they meet halfway, at 1/6.
    AUC: of the 9 (genuine, impostor) pairs all but the tie (1/2) are ordered: 8.5 / 9."""
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    cosine = np.array([0.9, 0.8, 0.5, 0.5, 0.2, 0.1])
    got = metrics.verification(same, cosine, l2=1 - cosine)
    assert got["verify_eer"] == pytest.approx(100 / 6)
    assert got["verify_tar_at_far1e-3"] == pytest.approx(100 * 2 / 3)
    assert got["verify_auc"] == pytest.approx(8.5 / 9)
    assert got["verify_eer_l2"] == pytest.approx(100 / 6) and got["verify_auc_l2"] == pytest.approx(8.5 / 9)
    perfect = metrics.verification(same, np.array([3, 2, 1, 0, -1, -2.0]), np.zeros(6))
    assert perfect["verify_eer"] == 0.0 and perfect["verify_tar_at_far1e-3"] == 100.0


def test_pairs_are_what_they_claim_and_the_same_every_time():
    labels = np.repeat([3, 5, 7], [4, 2, 9])
    pairs = metrics.draw_pairs(labels, 200, seed=4)
    first, second, same = pairs["first"], pairs["second"], pairs["same"]
    assert same.sum() == 200 and (~same).sum() == 200
    assert (labels[first[same]] == labels[second[same]]).all() and (first[same] != second[same]).all()
    assert (labels[first[~same]] != labels[second[~same]]).all()
    again = metrics.draw_pairs(labels, 200, seed=4)
    assert all(np.array_equal(pairs[k], again[k]) for k in pairs)
    assert not np.array_equal(metrics.draw_pairs(labels, 200, seed=5)["first"], first)


def test_pair_scores_are_cosine_and_euclidean():
    features = torch.tensor([[3.0, 4.0], [6.0, 8.0], [-4.0, 3.0]])
    scores = metrics.pair_scores(features, [0, 0], [1, 2])
    assert scores["cosine"] == pytest.approx([1.0, 0.0]) and scores["l2"] == pytest.approx([5.0, 50 ** 0.5])


# ---------- the data split and the config ----------


def test_hold_out_drops_the_classes_from_training_and_relabels_the_rest():
    images = torch.arange(20.0).reshape(20, 1, 1, 1)
    labels = torch.arange(20) % 10
    dataset = datalib.Dataset(datalib.Split(images, labels), datalib.Split(images + 100, labels), "mnist")
    held = datalib.hold_out(dataset, (3, 9))
    assert held.known_classes == (0, 1, 2, 4, 5, 6, 7, 8) and held.class_names == tuple("01245678")
    assert held.unknown_names == ("3", "9")
    assert set(held.train.labels.tolist()) == set(range(8)) and len(held.train) == 16
    # Label k is class known_classes[k]: the images travel with their own class.
    original = torch.tensor(held.known_classes)[held.test.labels]
    assert torch.equal(original, held.test.images.flatten().long() % 10)
    assert held.unknown.labels.tolist() == [3, 9, 3, 9] and (held.unknown.images.flatten() >= 100).all()
    assert datalib.hold_out(dataset, ()) is dataset


@pytest.mark.parametrize("value, message", [
    ("10", "class 10 does not exist; the classes are 0 to 9"),
    ("0,1,2,3,4,5,6,7,8", "holds out 9 of 10 classes; at least 2 must stay known"),
    ("0,1,2,3,4,5,6,7,8,9", "holds out 10 of 10 classes"),
    ("eight", "must be class numbers like 8,9"),
    ("", "is empty"),
])
def test_bad_unknown_classes_are_refused(value, message):
    with pytest.raises(configlib.ConfigError, match=message):
        configlib.build({"unknown_classes": value}, from_text=True)


def test_unknown_classes_have_one_written_form():
    for value in ("9,8", " 8, 9", [9, 8], "8,9,9"):
        assert configlib.build({"unknown_classes": value}, from_text=isinstance(value, str)).unknown_classes == "8,9"
    assert configlib.unknown_classes(configlib.build({"unknown_classes": 3})) == (3,)


# ---------- the drawing ----------


def open_set_embedding():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 30).astype(np.uint8)
    angles = labels * (2 * np.pi / 8)
    features = (np.stack([np.cos(angles), np.sin(angles)], 1) * 6 + rng.normal(0, 0.3, (240, 2))).astype(np.float32)
    unknown = rng.normal(0, 0.5, (60, 2)).astype(np.float32)  # near the origin, between the clusters
    centers = (np.stack([np.cos(np.arange(8) * 2 * np.pi / 8), np.sin(np.arange(8) * 2 * np.pi / 8)], 1) * 6)
    return dict(train_features=features, train_labels=labels, test_features=features, test_labels=labels,
                centers=centers.astype(np.float32), class_ids=np.arange(8, dtype=np.uint8),
                class_names=np.array(list("01234567")), unknown_features=unknown,
                unknown_labels=np.repeat([8, 9], 30).astype(np.uint8), unknown_names=np.array(["8", "9"]),
                open_threshold=np.float64(1.5), epoch=np.int32(1), epochs=np.int32(1), test_acc=np.float32(99.0),
                dataset=np.str_("mnist"), center_loss_weight=np.float64(0.1), center_update=np.str_("sgd"),
                head=np.str_("linear"), head_scale=np.float64(1.0), head_margin=np.float64(0.0),
                limits=frames.epoch_limits(features, features, centers, unknown))


def test_unknowns_are_drawn_as_black_crosses_on_the_test_panel_only(tmp_path):
    emb = open_set_embedding()
    without = {k: v for k, v in emb.items() if k not in ("unknown_features", "unknown_labels", "unknown_names",
                                                           "open_threshold")}
    box = frames.square_limits([emb["limits"]])
    pictures = {}
    for name, fields in (("with", emb), ("without", without)):
        renderer = frames.FrameRenderer(frames.FrameOptions(regions=False), classes=frames.ClassKey.of(fields))
        renderer.draw(fields, box, tmp_path / f"{name}.png")
        pictures[name] = renderer.pixels().astype(int)
        legend = [text.get_text() for text in renderer.legend.get_texts()]
    assert "unknown (8, 9)" not in legend  # the last legend drawn is the one without unknowns
    changed = np.abs(pictures["with"] - pictures["without"]).sum(axis=2) > 60
    dark = pictures["with"].sum(axis=2) < 200
    width = changed.shape[1]
    # The crosses (and the dashed rings) change the right-hand, test panel; the train panel stays as it was.
    assert (changed & dark)[:, width // 2:].sum() > 200
    assert changed[60:-60, : width * 2 // 5].sum() == 0
    legend = [text.get_text() for text in frames.FrameRenderer(classes=frames.ClassKey.of(emb)).legend.get_texts()]
    assert legend[:9] == list("01234567") + ["center"] and legend[9] == "unknown (8, 9)"


def test_a_class_keeps_its_colour_when_others_are_held_out():
    assert frames.class_colours((0, 1, 2, 4)) == [frames.DIGIT_COLOURS[k] for k in (0, 1, 2, 4)]


# ---------- end to end ----------

@pytest.mark.slow
def test_a_run_with_held_out_classes_carries_them_everywhere(open_run):
    run_dir, proc = open_run
    assert "open set: 8, 9 held out of training (200 test images are unknowns; 8 known classes)" in proc.stdout
    assert "verification: 500 genuine + 500 impostor pairs of the unknown classes" in proc.stdout
    assert "open AUROC" in proc.stdout and "verify EER" in proc.stdout
    rows = read_rows(run_dir)
    for column in ("open_auroc", "open_auroc_softmax", "open_tnr95", "open_threshold", "verify_eer",
                   "verify_tar_at_far1e-3", "verify_auc"):
        values = [float(row[column]) for row in rows]
        assert len(values) == 2 and all(np.isfinite(values)), column
    assert 0 <= float(rows[-1]["open_auroc"]) <= 1 and 0 <= float(rows[-1]["open_tnr95"]) <= 100
    emb = runfiles.load_embeddings(run_dir / "embeddings" / "epoch_002.npz")
    assert emb["unknown_features"].shape == (200, 2) and set(emb["unknown_labels"].tolist()) == {8, 9}
    assert emb["test_labels"].max() == 7 and emb["centers"].shape == (8, 2) and len(emb["class_ids"]) == 8
    assert runfiles.load_pairs(run_dir / runfiles.PAIRS)["same"].sum() == 500
    # The stored metric reproduces from the stored scores (the numbers and the picture agree).
    again = metrics.open_set(emb["open_known_distance"], emb["open_unknown_distance"],
                             emb["open_known_confidence"], emb["open_unknown_confidence"])
    assert again["open_auroc"] == pytest.approx(float(rows[-1]["open_auroc"]), abs=1e-6)
    for name in ("frames/epoch_001.png", "frames/epoch_002.png", "features.gif", "roc.png", "metrics.png",
                 "verify_pairs.npz"):
        assert (run_dir / name).is_file(), name
    page = (run_dir / "index.html").read_text()
    assert 'src="roc.png"' in page and "open_auroc" in page
    assert "unknown (8, 9)" in (run_dir / "interactive.html").read_text()


@pytest.mark.slow
def test_resume_keeps_the_pairs_and_matches_a_straight_run(open_run, tmp_path):
    reference, _ = open_run
    run_cli("train.py", *OPEN, "--epochs", "1", "--run-name", "r", cwd=tmp_path, check=0)
    run_dir = tmp_path / "outputs" / "r"
    pairs = runfiles.load_pairs(run_dir / runfiles.PAIRS)
    run_cli("train.py", "--resume", run_dir, "--epochs", "2", cwd=tmp_path, check=0)
    assert without_time(read_rows(run_dir)) == without_time(read_rows(reference))
    assert np.array_equal(runfiles.load_pairs(run_dir / runfiles.PAIRS)["first"], pairs["first"])


@pytest.mark.slow
def test_visualize_redraws_the_unknowns_and_the_roc_without_retraining(open_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(open_run[0], run_dir)
    for name in ("roc.png", "frames/epoch_002.png", "interactive.html"):
        (run_dir / name).unlink()
    run_cli("visualize.py", run_dir, cwd=tmp_path, check=0)
    for name in ("roc.png", "frames/epoch_002.png", "interactive.html"):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
def test_a_sweep_in_two_workers_reports_the_open_set_columns(tmp_path):
    run_cli("train.py", *OPEN, "--epochs", "1", "--sweep", "center_loss_weight=0,0.1", "--workers", "2",
            "--run-name", "w", cwd=tmp_path, check=0)
    sweep = tmp_path / "outputs" / "w"
    with open(sweep / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["open_auroc"] and row["verify_eer"] for row in rows)
    results = (sweep / "results.md").read_text()
    assert "open AUROC" in results and "TNR@95 %" in results and "verify EER %" in results
    assert (sweep / "roc.png").is_file() and 'src="roc.png"' in (sweep / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("value", ["10", "0,1,2,3,4,5,6,7,8"])
def test_train_refuses_bad_unknown_classes_in_one_line(tmp_path, value):
    proc = run_cli("train.py", *QUICK, "--unknown-classes", value, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown_classes" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
