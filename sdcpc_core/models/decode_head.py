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


class LevelFusion(nn.Conv2d):
    """SegFormer's ``linear_fuse`` (same parameters): a 1x1 convolution of the concatenated levels
    ``cat(up(p_3), up(p_2), up(p_1), p_0)``, computed as ``sum_i up(W_i p_i)``.

    ``W_i`` is the weight's block for level ``i``. The 1x1 convolution and the bilinear upsampling
    are both linear and act on different axes, so they commute: each block runs at its level's
    resolution and the ``(B, 4E, h_0, w_0)`` concatenation is never built (3x fewer multiply-adds
    for MiT backbones, and no 4E-channel map at 1/4).
    """

    def forward(self, projected: list[torch.Tensor], scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        """Levels ``[(B, C/L, h_i, w_i)]``, finest first -> ``(B, E, h_0, w_0)``, optionally times a
        per-channel ``scale`` ``(E,)`` plus ``shift`` ``(E,)`` (a folded eval-mode batch norm)."""
        weight = self.weight if scale is None else self.weight * scale.view(-1, 1, 1, 1)
        blocks = weight.chunk(len(projected), dim=1)[::-1]  # the concatenation puts the deepest level first
        size = projected[0].shape[-2:]
        fused = F.conv2d(projected[0], blocks[0], shift)
        for level, block in zip(projected[1:], blocks[1:]):
            fused = fused.add_(F.interpolate(F.conv2d(level, block), size=size, mode="bilinear", align_corners=False))
        return fused


class SegFormerHead(nn.Module):
    """Per-level linear projection to ``embed_dim``, upsampling to 1/4, 1x1 fusion, classifier.

    ``project`` gives the per-level maps ``(B, E, h_i, w_i)`` (SSEA pools them into tokens),
    ``fuse`` the fused feature ``(B, E, H/4, W/4)`` and ``classify`` the logits ``(B, K, H/4, W/4)``.
    Levels are concatenated deepest first, as in the released SegFormer weights.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(PointwiseLinear(c, embed_dim) for c in in_channels)
        self.linear_fuse = LevelFusion(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level maps ``(B, C_i, h_i, w_i) -> (B, E, h_i, w_i)``."""
        return [linear(f) for linear, f in zip(self.linear_c, features)]

    def fuse(self, projected: list[torch.Tensor]) -> torch.Tensor:
        """Per-level maps ``[(B, E, h_i, w_i)]`` -> fused feature ``(B, E, h_0, w_0)``.

        In eval mode the batch norm's running statistics are folded into the fusion, so the 1/4 map
        is written once and then only updated in place (on a CPU each full pass over that map costs
        about as much as a convolution).
        """
        if self.training:
            return F.relu(self.bn(self.linear_fuse(projected)), inplace=True)
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        return self.linear_fuse(projected, scale, self.bn.bias - self.bn.running_mean * scale).relu_()

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused))

    def classify_residual(self, residual: torch.Tensor) -> torch.Tensor:
        """The classifier's linear part (no bias, no dropout) on a residual ``(B, E, h, w)`` -> ``(B, K, h, w)``."""
        return self.classifier(residual) - self.classifier.bias.view(1, -1, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(self.project(features)))
