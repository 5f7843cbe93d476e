"""LeNets++: the 2-D-feature CNN of Wen et al., "A Discriminative Feature
Learning Approach for Deep Face Recognition", ECCV 2016 (Table 1), with a
choice of classifier head: the paper's linear layer, or the margin heads
CosFace (Wang et al., CVPR 2018) and ArcFace (Deng et al., CVPR 2019)."""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = ("linear", "cosface", "arcface")
# The papers' settings: CosFace s = 30, m = 0.35; ArcFace s = 30-64, m = 0.5.
HEAD_DEFAULTS = {"cosface": (30.0, 0.35), "arcface": (30.0, 0.5)}


def head_settings(kind: str, scale: Optional[float] = None, margin: Optional[float] = None) -> tuple:
    """(scale, margin) with the papers' defaults filled in; (1, 0) for linear."""
    default_scale, default_margin = HEAD_DEFAULTS.get(kind, (1.0, 0.0))
    return float(default_scale if scale is None else scale), float(default_margin if margin is None else margin)


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same state_dict) whose training-time kernel
    can be swapped for a fused one. On a 2-core CPU eager PReLU's backward is
    one of the dearest ops of the whole step (~30 of ~165 ms per batch of 100
    in bf16), while as one compiled loop it costs a few ms; see clviz/speed.py."""

    def __init__(self, num_parameters: int):
        super().__init__(num_parameters)
        self.train_kernel = F.prelu  # (x, weight) -> y; replaced by `LeNetsPP.use_prelu_kernel`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only where a backward pass follows: evaluation keeps eager PReLU, whose
        # forward is already cheap, and the compiled kernel never sees a new grad mode.
        kernel = self.train_kernel if torch.is_grad_enabled() else F.prelu
        return kernel(x, self.weight)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) whose training-time kernel
    can be swapped for another computation of the same convolution, e.g.
    through the FFT, which needs fewer operations than the direct one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_kernel = None  # (x, weight) -> y; set by `LeNetsPP.use_conv_kernel`

    def same_shape_conv(self) -> bool:
        """Stride 1, padding k // 2 (zeros), no dilation, no groups, no bias: all a swapped kernel is given."""
        k = self.kernel_size[0]
        return (self.kernel_size == (k, k) and k % 2 == 1 and self.stride == (1, 1) and self.padding == (k // 2, k // 2)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros" and self.bias is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As for PReLU: only where a backward pass follows; evaluation keeps the direct kernel.
        # A copy with a bias (BatchNorm folded in for evaluation) also keeps the direct one.
        if self.train_kernel is not None and self.bias is None and torch.is_grad_enabled():
            return self.train_kernel(x, self.weight)
        return super().forward(x)


def conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 5x5 conv-BatchNorm-PReLU layers, then a 2x2 max-pool (halves H and W)."""
    layers = []
    for channels_in in (in_channels, out_channels):
        layers += [
            # No conv bias: the BatchNorm right after it has its own shift.
            Conv2d(channels_in, out_channels, kernel_size=5, padding=2, bias=False),
            nn.BatchNorm2d(out_channels),
            PReLU(out_channels),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """Class logits from features (B, feat_dim) -> (B, num_classes), fp32.

    linear:  w_k . x + b_k (the paper's softmax layer; bias optional)
    cosface: s * cos(theta_k), and s * (cos(theta_y) - m) for the true class y
    arcface: s * cos(theta_k), and s * cos(theta_y + m) for the true class y,
             where theta_k is the angle between x and w_k.

    The margin is applied only when `labels` are given (training); evaluation
    and prediction use the plain logits. For the normalized heads the radius
    of x carries no information: only its direction decides the class.
    """

    def __init__(self, feat_dim: int, num_classes: int, kind: str = "linear", *, bias: bool = False,
                 scale: Optional[float] = None, margin: Optional[float] = None):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
        if bias and kind != "linear":
            raise ValueError(f"a {kind} head has no bias (its logits are scaled cosines)")
        self.kind = kind
        self.scale, self.margin = head_settings(kind, scale, margin)
        layer = nn.Linear(feat_dim, num_classes, bias=bias)  # borrowed for its initialisation
        self.weight = layer.weight  # (num_classes, feat_dim)
        self.bias = layer.bias

    @property
    def normalized(self) -> bool:
        return self.kind != "linear"

    def extra_repr(self) -> str:
        text = f"kind={self.kind!r}, weight={tuple(self.weight.shape)}"
        return text + (f", scale={self.scale:g}, margin={self.margin:g}" if self.normalized else f", bias={self.bias is not None}")

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.normalized:
            return F.linear(features, self.weight, self.bias).float()
        cos = self.cosines(features)
        if labels is None or self.margin == 0.0:
            return self.scale * cos
        target = cos.gather(1, labels.long().unsqueeze(1))
        if self.kind == "cosface":
            with_margin = target - self.margin
        else:
            # cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m). The clamp keeps
            # the gradient finite at theta = 0 and pi, where sin(theta) = 0.
            sin = torch.sqrt((1.0 - target * target).clamp(min=1e-9))
            with_margin = target * math.cos(self.margin) - sin * math.sin(self.margin)
            # Past theta + m = pi, cos(theta + m) would rise again and reward a worse
            # angle; there we use the usual linear continuation, cos(theta) - m sin(m).
            limit = math.cos(math.pi - self.margin)
            with_margin = torch.where(target > limit, with_margin, target - self.margin * math.sin(self.margin))
        return self.scale * cos.scatter(1, labels.long().unsqueeze(1), with_margin)


class LeNetsPP(nn.Module):
    """Input (B, 1, 28, 28) normalised digits; output (features (B, feat_dim),
    log-probabilities (B, num_classes) fp32, without any margin).

    Spatial size 28 -> 14 -> 7 -> 3 over the three stages, so the flattened
    feature map has 128 * 3 * 3 = 1152 values. The training loss uses
    `margin_log_probs`, which adds the head's margin for the true class.
    """

    def __init__(self, *, feat_dim: int = 2, num_classes: int = 10, classifier_bias: bool = False,
                 head: str = "linear", head_scale: Optional[float] = None, head_margin: Optional[float] = None):
        super().__init__()
        self.stages = nn.Sequential(conv_stage(1, 32), conv_stage(32, 64), conv_stage(64, 128))
        self.embed = nn.Linear(128 * 3 * 3, feat_dim)
        # Without a bias the class logits are w_k . x, so every decision
        # boundary passes through the origin and the clusters radiate from it,
        # as in the paper's figures. With a bias the boundaries can shift.
        self.classifier = Head(feat_dim, num_classes, head, bias=classifier_bias, scale=head_scale, margin=head_margin)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(torch.flatten(self.stages(images), 1))
        # log_softmax in fp32 even under autocast: NLL of bf16 logits is coarse.
        return features, F.log_softmax(self.classifier(features), dim=1)

    def use_prelu_kernel(self, kernel) -> None:
        """Train with `kernel(x, weight)` in place of F.prelu (same maths, e.g. compiled)."""
        for module in self.modules():
            if isinstance(module, PReLU):
                module.train_kernel = kernel

    def convs(self) -> list:
        """The six 5x5 convs, input side first: 1->32, 32->32 (28x28), 32->64, 64->64 (14x14), 64->128, 128->128 (7x7)."""
        return [module for module in self.modules() if isinstance(module, Conv2d)]

    def use_conv_kernel(self, kernel, layers) -> None:
        """Train the convs at indices `layers` (into `convs()`) with `kernel(x, weight)`,
        a 'same', stride-1, bias-free convolution (same maths, e.g. through the FFT)."""
        convs = self.convs()
        if any(not 0 <= index < len(convs) or not convs[index].same_shape_conv() for index in layers):
            raise ValueError(f"use_conv_kernel: layers {tuple(layers)} must index bias-free 'same' convs of the {len(convs)}")
        for index, conv in enumerate(convs):
            conv.train_kernel = kernel if index in layers else None

    def margin_log_probs(self, features: torch.Tensor, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The log-probabilities the training loss uses: `log_probs` itself for
        the linear head, the margin-adjusted ones (in fp32) for cosface/arcface."""
        if not self.classifier.normalized or self.classifier.margin == 0.0:
            return log_probs
        return F.log_softmax(self.classifier(features.float(), labels), dim=1)
