"""Discriminativeness metrics against a hand-written loop."""

import math

import torch

from clviz.metrics import discriminativeness


def test_metrics_match_a_hand_written_loop():
    g = torch.Generator().manual_seed(1)
    features, labels, centers = torch.randn(50, 2, generator=g) * 3, torch.randint(0, 4, (50,), generator=g), torch.randn(4, 2, generator=g) * 4
    got = discriminativeness(features, labels, centers)
    f, c = features.tolist(), centers.tolist()
    intra = sum(math.dist(f[i], c[y]) for i, y in enumerate(labels.tolist())) / 50
    inter = min(math.dist(c[j], c[k]) for j in range(4) for k in range(4) if j != k)
    nearest = sum(min(range(4), key=lambda k: math.dist(f[i], c[k])) == y for i, y in enumerate(labels.tolist()))
    assert math.isclose(got["intra"], intra, rel_tol=1e-9)
    assert math.isclose(got["inter"], inter, rel_tol=1e-9)
    assert math.isclose(got["ratio"], intra / inter, rel_tol=1e-9)
    assert math.isclose(got["nearest_center_acc"], 100 * nearest / 50, rel_tol=1e-9)


def test_compact_clusters_score_better_than_loose_ones():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    tight = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [10.1, 0.0], [9.9, 0.0]])
    loose = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [13.0, 0.0], [7.0, 0.0]])
    assert discriminativeness(tight, labels, centers)["ratio"] < discriminativeness(loose, labels, centers)["ratio"]
    assert discriminativeness(tight, labels, centers)["nearest_center_acc"] == 100.0
