"""SegFormer all-MLP decode head, split so that SD-CPC can reuse its intermediate maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseLinear(nn.Linear):
    """``nn.Linear`` (same parameters) applied over the channels of a ``(B, C, H, W)`` map as a 1x1 conv.

    Keeping the released checkpoints' layout, it avoids the token transposes that cost half of
    SegFormer-B0's CPU time at the 1/4 level.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class SegFormerHead(nn.Module):
    """Per-level linear projection to ``embed_dim``, upsampling to 1/4, 1x1 fusion, classifier.

    ``project`` gives the per-level maps ``(B, E, h_i, w_i)`` (SSEA pools them into tokens),
    ``fuse`` the fused feature ``(B, E, H/4, W/4)`` and ``classify`` the logits ``(B, K, H/4, W/4)``.
    Levels are concatenated deepest first, as in the released SegFormer weights.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(PointwiseLinear(c, embed_dim) for c in in_channels)
        self.linear_fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level maps ``(B, C_i, h_i, w_i) -> (B, E, h_i, w_i)``."""
        return [linear(f) for linear, f in zip(self.linear_c, features)]

    def fuse(self, projected: list[torch.Tensor]) -> torch.Tensor:
        size = projected[0].shape[-2:]
        upsampled = [projected[0]] + [
            F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in projected[1:]]
        return F.relu(self.bn(self.linear_fuse(torch.cat(upsampled[::-1], dim=1))))

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused))

    def classify_residual(self, residual: torch.Tensor) -> torch.Tensor:
        """The classifier's linear part (no bias, no dropout) on a residual ``(B, E, h, w)`` -> ``(B, K, h, w)``."""
        return self.classifier(residual) - self.classifier.bias.view(1, -1, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(self.project(features)))
