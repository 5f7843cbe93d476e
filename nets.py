"""LeNets++: the 2-D-feature CNN of Wen et al., "A Discriminative Feature
Learning Approach for Deep Face Recognition", ECCV 2016 (Table 1)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 5x5 conv-BatchNorm-PReLU layers, then a 2x2 max-pool (halves H and W)."""
    layers = []
    for channels_in in (in_channels, out_channels):
        layers += [
            # No conv bias: the BatchNorm right after it has its own shift.
            nn.Conv2d(channels_in, out_channels, kernel_size=5, padding=2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class LeNetsPP(nn.Module):
    """Input (B, 1, 28, 28) normalised digits; output (features (B, feat_dim),
    log-probabilities (B, num_classes)).

    Spatial size 28 -> 14 -> 7 -> 3 over the three stages, so the flattened
    feature map has 128 * 3 * 3 = 1152 values.
    """

    def __init__(self, *, feat_dim: int = 2, num_classes: int = 10, classifier_bias: bool = False):
        super().__init__()
        self.stages = nn.Sequential(conv_stage(1, 32), conv_stage(32, 64), conv_stage(64, 128))
        self.embed = nn.Linear(128 * 3 * 3, feat_dim)
        # Without a bias the class logits are w_k . x, so every decision
        # boundary passes through the origin and the clusters radiate from it,
        # as in the paper's figures. With a bias the boundaries can shift.
        self.classifier = nn.Linear(feat_dim, num_classes, bias=classifier_bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(torch.flatten(self.stages(images), 1))
        logits = self.classifier(features)
        # log_softmax in fp32 even under autocast: NLL of bf16 logits is coarse.
        return features, F.log_softmax(logits.float(), dim=1)
