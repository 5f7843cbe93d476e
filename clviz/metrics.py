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

import torch


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
