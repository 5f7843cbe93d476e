"""How discriminative the features are, measured every epoch.

Softmax alone only needs separable classes; Center Loss is about compact
ones. These numbers say which one a run got, on the test features of the
end-of-epoch model and the current centers:

    intra       mean_i ||x_i - c_{y_i}||            (Euclidean, not squared)
    inter       min_{j != k} ||c_j - c_k||          (the two closest centers)
    ratio       intra / inter                        (smaller = more discriminative)
    nearest_center_acc   % of x_i whose closest center is c_{y_i}

A classifier-free accuracy (nearest center) near the softmax accuracy means
the centers really summarise the classes, as open-set use needs.
"""

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve


def discriminativeness(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> dict:
    """features (N, D), labels (N,) integer, centers (C, D) with C >= 2 -> dict of floats."""
    features, centers = features.double(), centers.double()
    labels = labels.long()
    intra = (features - centers[labels]).norm(dim=1).mean()
    between = torch.cdist(centers, centers)
    between.fill_diagonal_(float("inf"))
    inter = between.min()
    nearest = torch.cdist(features, centers).argmin(dim=1)
    return {
        "intra": float(intra),
        "inter": float(inter),
        "ratio": float(intra / inter) if inter > 0 else float("inf"),
        "nearest_center_acc": 100.0 * float((nearest == labels).double().mean()),
    }


# ---------- open set: known test classes against held-out ones ----------
#
#   open_auroc          AUROC of known vs unknown, scored by the distance to the nearest center
#                       (larger = more unknown); 0.5 = chance, 1 = every unknown farther than every known
#   open_auroc_softmax  the same, scored by 1 - the maximum softmax probability (the usual baseline)
#   open_tnr95          % of unknowns rejected at the distance threshold that keeps 95% of the knowns
#   open_threshold      that threshold (a distance in feature space): farther from every center = "unknown"

KNOWN_KEPT = 0.95


def nearest_center_distance(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N, D), (C, D) -> (N,) float64: min_k ||x - c_k|| (Euclidean)."""
    return torch.cdist(features.double(), centers.double()).min(dim=1).values


def open_set(known_distance, unknown_distance, known_confidence, unknown_confidence) -> dict:
    """Scores (N_known,), (N_unknown,) as arrays or tensors -> the open-set metrics above.
    Unknown is the positive class. The threshold is the smallest distance that keeps at least
    95% of the knowns (distance <= threshold); a tie at it keeps every tied point."""
    known_distance, unknown_distance = np.asarray(known_distance, float), np.asarray(unknown_distance, float)
    truth = np.r_[np.zeros(len(known_distance)), np.ones(len(unknown_distance))]
    distance = np.r_[known_distance, unknown_distance]
    softmax = 1.0 - np.r_[np.asarray(known_confidence, float), np.asarray(unknown_confidence, float)]
    # roc_curve with the knowns as positives and -distance as their score: each point keeps the knowns
    # with distance <= -threshold; the first that keeps 95% has the smallest such threshold.
    fpr, tpr, thresholds = roc_curve(1 - truth, -distance, drop_intermediate=False)
    first = int(np.argmax(tpr >= KNOWN_KEPT - 1e-12))
    return {"open_auroc": float(roc_auc_score(truth, distance)),
            "open_auroc_softmax": float(roc_auc_score(truth, softmax)),
            "open_tnr95": 100.0 * float(1.0 - fpr[first]),
            "open_threshold": float(-thresholds[first])}


# ---------- verification: are two images of the same class? ----------
#
#   verify_auc              area under the ROC of genuine vs impostor pairs (cosine similarity)
#   verify_eer              equal error rate, %: where false accepts = false rejects (cosine similarity)
#   verify_tar_at_far1e-3   % of genuine pairs accepted at the threshold that accepts 0.1% of impostors
#   verify_auc_l2, verify_eer_l2   the same two scored by -Euclidean distance

def draw_pairs(labels, count: int, seed: int) -> dict:
    """`count` genuine (same class, two different images) and `count` impostor pairs
    (different classes) of indices into `labels`, drawn with their own generator, so the
    same labels and seed give the same pairs. Genuine: a class in proportion to its
    images, then two different images of it. Impostor: any image, then another class
    (uniformly), then an image of it. Classes with fewer than two images take no part.
    Returns {first, second, same} arrays (2 * count,). Needs two such classes."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    classes, sizes = classes[sizes >= 2], sizes[sizes >= 2]
    if len(classes) < 2:
        raise ValueError("verification pairs need two classes with two images each")
    pool = np.concatenate([np.flatnonzero(labels == k) for k in classes])  # grouped by class
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(classes), size=count, p=sizes / sizes.sum())
    i = rng.integers(0, sizes[picked])
    j = rng.integers(0, sizes[picked] - 1)
    j += j >= i  # a second, different image of the same class
    anchor = rng.integers(0, len(pool), size=count)
    anchor_class = np.searchsorted(starts, anchor, side="right") - 1
    other = rng.integers(0, len(classes) - 1, size=count)
    other += other >= anchor_class  # any class but the anchor's
    partner = starts[other] + rng.integers(0, sizes[other])
    return {"first": np.r_[pool[starts[picked] + i], pool[anchor]],
            "second": np.r_[pool[starts[picked] + j], pool[partner]],
            "same": np.r_[np.ones(count, bool), np.zeros(count, bool)]}


def pair_scores(features: torch.Tensor, first, second) -> dict:
    """Cosine similarity and Euclidean distance of each pair, float64 arrays (P,)."""
    a, b = features[torch.as_tensor(first)].double(), features[torch.as_tensor(second)].double()
    return {"cosine": torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).numpy(),
            "l2": (a - b).norm(dim=1).numpy()}


def equal_error_rate(same, score) -> float:
    """% where the false-accept rate meets the false-reject rate; between two ROC points the mean of the two rates."""
    fpr, tpr, _ = roc_curve(np.asarray(same, int), score, drop_intermediate=False)
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))  # the first point where false rejects no longer exceed false accepts
    if i == 0:
        return 100.0 * float(fpr[0])
    # The crossing lies between points i-1 and i: the linear interpolation of fpr - fnr to zero.
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return 100.0 * float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tar_at_far(same, score, far: float) -> float:
    """% of genuine pairs accepted at the strictest-enough threshold: the largest TPR whose FPR <= `far`."""
    fpr, tpr, _ = roc_curve(np.asarray(same, int), score, drop_intermediate=False)
    return 100.0 * float(tpr[fpr <= far + 1e-12].max())


def verification(same, cosine, l2) -> dict:
    """The verification metrics above from pair labels (P,) bool and the two scores (P,)."""
    same = np.asarray(same, bool)
    return {"verify_eer": equal_error_rate(same, cosine),
            "verify_tar_at_far1e-3": tar_at_far(same, cosine, 1e-3),
            "verify_auc": float(roc_auc_score(same, cosine)),
            "verify_eer_l2": equal_error_rate(same, -np.asarray(l2)),
            "verify_auc_l2": float(roc_auc_score(same, -np.asarray(l2)))}
