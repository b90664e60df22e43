"""SegFormer all-MLP decode head, split so that SD-CPC can reuse its intermediate maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegFormerHead(nn.Module):
    """Per-level linear projection to ``embed_dim``, upsampling to 1/4, 1x1 fusion, classifier.

    ``project`` gives the per-level maps ``(B, E, h_i, w_i)`` (SSEA pools them into tokens),
    ``fuse`` the fused feature ``(B, E, H/4, W/4)`` and ``classify`` the logits ``(B, K, H/4, W/4)``.
    Levels are concatenated deepest first, as in the released SegFormer weights.
    """

    def __init__(self, in_channels: tuple[int, ...], embed_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_channels)
        self.linear_fuse = nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level linear maps applied as 1x1 convolutions on ``(B, C_i, h_i, w_i)``.

        Same weights as ``nn.Linear`` (the released checkpoints' layout), but no token transposes:
        transposing the 1/4 map to tokens and back cost half of SegFormer-B0's CPU time.
        """
        return [F.conv2d(f, linear.weight[:, :, None, None], linear.bias) for linear, f in zip(self.linear_c, features)]

    def fuse(self, projected: list[torch.Tensor]) -> torch.Tensor:
        size = projected[0].shape[-2:]
        upsampled = [projected[0]] + [
            F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in projected[1:]]
        return F.relu(self.bn(self.linear_fuse(torch.cat(upsampled[::-1], dim=1))))

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(fused))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(self.project(features)))
