"""Center Loss in your own training loop: any backbone that outputs features,
either center-update rule, lambda behind a warm-up, the centers saved and loaded.

    python examples/own_loop.py      # softmax only, then both rules; ~15 s on a 2-core CPU, no download

It trains a small MLP with 2-D features on scikit-learn's 8x8 digits (1,797
images, shipped with scikit-learn) and prints how compact the classes got.
Swap in your own network, data and feature size: only the lines marked (*)
are Center Loss.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from centerloss import CenterLoss, scale_feature_grad  # (*)


def lambda_at(epoch: float, weight: float = 0.1, delay: float = 1.0, ramp: float = 1.0) -> float:
    """0 for `delay` epochs (softmax separates the classes first), then a linear rise to `weight` over `ramp` epochs."""
    return weight * min(max((epoch - delay) / ramp, 0.0), 1.0)


def train(update: str = "sgd", weight: float = 0.1, epochs: int = 8, batch_size: int = 50, seed: int = 0,
          centers_file: str = None):
    """Returns (features, labels, center_loss) of the training digits after `epochs` (`weight`: lambda)."""
    torch.manual_seed(seed)
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64), pixels in 0..1
    labels = torch.tensor(digits.target)
    # README: from here (the README's "Center Loss in your own training loop" shows these lines; a test checks it)
    backbone = nn.Sequential(nn.Linear(64, 128), nn.PReLU(), nn.Linear(128, 64), nn.PReLU(), nn.Linear(64, 2))
    head = nn.Linear(2, 10, bias=False)
    center_loss = CenterLoss(num_classes=10, feat_dim=2, update=update)  # (*) "sgd" or "paper" (Eq. 4)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    # (*) "sgd": the centers get their own optimizer; "paper" moves them by Eq. 4 instead.
    center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=0.5) if update == "sgd" else None
    steps = len(images) // batch_size
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            x, y = images[batch], labels[batch]
            lam = lambda_at(epoch + step / steps, weight)
            features = backbone(x)
            # (*) lambda scales only the gradient the features get, so the centers move at
            # the same speed for every lambda; the plain `nll + lam * center_loss(features, y)`
            # works too, but then the centers' step shrinks with lambda (scale their lr by 1/lambda).
            loss = F.cross_entropy(head(features), y) + center_loss(scale_feature_grad(features, lam), y)
            optimizer.zero_grad()
            if center_optimizer is not None:
                center_optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if center_optimizer is not None:
                center_optimizer.step()
            else:
                center_loss.update_centers(features.detach(), y)  # (*) Eq. 4, after the step
    if centers_file:
        torch.save(center_loss.state_dict(), centers_file)  # (*) the centers are the module's state_dict
    # README: to here
    with torch.no_grad():
        return backbone(images), labels, center_loss


def spread(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> float:
    """Mean distance of a feature to its class center over the mean distance between centers (lower = more compact)."""
    intra = (features - centers[labels]).norm(dim=1).mean()
    return float(intra / torch.pdist(centers).mean())


if __name__ == "__main__":
    features, labels, center_loss = train("sgd", weight=0.0)
    print(f"softmax only (lambda 0):       intra/inter {spread(features, labels, center_loss.centers.detach()):.3f}")
    for rule in ("sgd", "paper"):
        features, labels, center_loss = train(rule, centers_file=f"centers_{rule}.pt")
        restored = CenterLoss(10, 2, update=rule)
        restored.load_state_dict(torch.load(f"centers_{rule}.pt", weights_only=True))  # (*) load them back
        print(f"lambda 0.1, {rule:5s} centers:     intra/inter {spread(features, labels, restored.centers.detach()):.3f}")
