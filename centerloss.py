"""Center Loss (Wen et al., "A Discriminative Feature Learning Approach for
Deep Face Recognition", ECCV 2016).

Each class j keeps a learned center c_j in feature space; the loss pulls every
feature x_i towards the center of its own class y_i. For a batch of B
features, with n_j the number of samples of class j in the batch:

    paper (Eq. 2):        L_C = 1/2 * sum_i  ||x_i - c_{y_i}||^2
    normalize="batch":    L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2             (= paper / B; the default)
    normalize="class":    L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2 / n_{y_i}   (the seed blog's loss at lambda = 2)

"batch" divides by the batch size so that lambda means the same at every
batch size and sits on the same scale as the batch-mean NLL it is added to.
"class" also divides each term by its class's count in the batch, as the seed
blog does (its `lambdas / 2 * mean(||x - c||^2 / n)` with lambdas = 2): every
class then pulls with the same total weight however many samples it has, and
at batch 100 (n ~ 10) a feature feels about 1/n of the "batch" pull per unit
of lambda.

Two ways to move the centers:
  * "sgd":   the centers are an nn.Parameter with their own SGD optimizer and
             learn from dL_C/dc_j = -(1/B) * sum_{i: y_i=j} (x_i - c_j).
             Use `scale_feature_grad` so that lambda scales only the gradient
             the *features* receive: the centers then move at the same speed
             for every lambda, including lambda = 0 (the softmax-only baseline
             whose centers still track the features, so they can be drawn).
  * "paper": Eq. 4 of the paper, no autograd for the centers:
             delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])
             c_j <- c_j - alpha * delta_c_j, only for classes in the batch.
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

UPDATE_RULES = ("sgd", "paper")


NORMALIZATIONS = ("batch", "class")


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `scale` on the
    way back. Unlike `x * scale` it keeps the value, so the loss that is logged
    is the true center loss whatever lambda is. `scale` may be a float or a
    0-dim tensor (a lambda that changes every step without re-recording a CUDA graph)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def distributed_sync(sync: Optional[bool]) -> bool:
    """Whether to all-reduce across processes: `sync` if given, else whether a process group of 2+ runs."""
    running = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if sync and not running:
        raise RuntimeError("sync=True needs an initialised torch.distributed process group (torch.distributed.init_process_group)")
    return running if sync is None else sync


def scale_feature_grad(features: torch.Tensor, weight) -> torch.Tensor:
    """Features whose gradient from the center loss is multiplied by `weight` (lambda)."""
    return ScaleGrad.apply(features, weight)


class CenterLoss(nn.Module):
    """Shapes: features (B, feat_dim) float (bf16/fp16 are computed in the centers' fp32),
    labels (B,) integer in [0, num_classes). Returns a scalar fp32 loss:
    1/2 * mean_i ||x_i - c_{y_i}||^2 ("batch"), or the same with each term
    divided by n_{y_i}, its class's count in the batch ("class").

    `centers` is an nn.Parameter of shape (num_classes, feat_dim); in "paper"
    mode it has requires_grad=False and only `update_centers` changes it.
    """

    def __init__(self, num_classes: int, feat_dim: int, *, update: str = "sgd", alpha: float = 0.5,
                 normalize: str = "batch"):
        super().__init__()
        if update not in UPDATE_RULES:
            raise ValueError(f"center update must be one of {UPDATE_RULES}, got {update!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"center loss normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"center alpha must be in (0, 1], got {alpha}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.update = update
        self.alpha = alpha
        self.normalize = normalize
        # Unit-variance start, as in the reference implementations; the
        # centers leave it within the first few hundred steps.
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim), requires_grad=(update == "sgd"))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, update={self.update!r}, alpha={self.alpha}, "
                f"normalize={self.normalize!r}")

    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"features must have shape (batch, {self.feat_dim}), got {tuple(features.shape)}")
        if features.shape[1] != self.feat_dim:
            raise ValueError(
                f"features have {features.shape[1]} dimensions but CenterLoss was built with feat_dim={self.feat_dim}"
            )
        if features.shape[0] == 0:
            raise ValueError("empty batch: center loss needs at least one feature")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"labels must have shape ({features.shape[0]},) to match the features, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor (e.g. torch.long), got {labels.dtype}")
        # Skipped on CUDA: reading min/max would stall the GPU every step.
        # Out-of-range labels still fail there, inside index_select.
        if labels.device.type == "cpu" and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got values from {int(labels.min())} to {int(labels.max())}"
            )

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(features, labels)
        # The centers set the precision (fp32 unless made double): bf16/fp16 features are upcast.
        labels = labels.long()
        diff = features.to(self.centers.dtype) - self.centers.index_select(0, labels)
        squared = diff.pow(2).sum(dim=1)
        if self.normalize == "class":
            # n_{y_i} by index_add_ (a fixed-size output, so a CUDA graph can record it); every n_{y_i} >= 1.
            counts = torch.zeros(self.num_classes, dtype=squared.dtype, device=squared.device).index_add_(
                0, labels, torch.ones_like(squared))
            squared = squared / counts.index_select(0, labels)
        return 0.5 * squared.mean()

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor, *, sync: Optional[bool] = None) -> None:
        """Eq. 4 of the paper, for "paper" mode. Vectorised: per-class sums of
        (c_j - x_i) and per-class counts by index_add_ (not bincount, whose
        output size depends on the labels' values and so cannot be graph-captured).

        Under torch.distributed (DistributedDataParallel), each process sees only its
        share of the batch. With `sync` (the default where a process group of 2+ is
        initialised) the per-class sums and counts are all-reduced first, so every
        process applies Eq. 4 to the *global* batch and the centers stay identical
        everywhere; `sync=False` updates from the local batch only (the centers drift
        apart between processes)."""
        if self.update != "paper":
            raise RuntimeError('update_centers is the "paper" rule; in "sgd" mode the center optimizer moves the centers')
        self._check(features, labels)
        labels = labels.long()
        counts = torch.zeros(self.num_classes, dtype=self.centers.dtype, device=self.centers.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=self.centers.dtype))
        diff_sum = torch.zeros_like(self.centers).index_add_(
            0, labels, self.centers.index_select(0, labels) - features.to(self.centers.dtype)
        )
        if distributed_sync(sync):
            both = torch.cat([diff_sum, counts.unsqueeze(1)], dim=1)  # one all-reduce for both sums
            dist.all_reduce(both)
            diff_sum, counts = both[:, :-1], both[:, -1]
        # Absent classes have diff_sum 0, so they stay where they are.
        self.centers.sub_(self.alpha * diff_sum / (1.0 + counts).unsqueeze(1))
