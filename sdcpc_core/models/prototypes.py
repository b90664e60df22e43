"""MCP-CL: multivariate class prototypes for contrastive learning (training only).

Each class keeps ``M`` unit-norm prototypes in buffers. Pixels whose prediction equals their label
update them: every such pixel is assigned to the nearest prototype of its class, and each
prototype moves towards the mean of its pixels by EMA. A prototype that has never received a
pixel is *uninitialised*: its first update replaces it by that mean, and until then it is masked
out of the loss (so classes never seen yet do not act as negatives). Under DistributedDataParallel
the per-prototype sums are all-reduced so that every rank keeps identical prototypes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn


class ProjectionHead(nn.Module):
    """Two 1x1 convs: ``(B, E, h, w) -> (B, D, h, w)``, L2-normalised over D."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 1)
        self.conv2 = nn.Conv2d(in_channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.conv2(F.relu(self.conv1(x))), dim=1)


class ClassPrototypes(nn.Module):
    """Buffers ``prototypes (K, M, D)`` and ``initialized (K, M)``; EMA updates with momentum."""

    prototypes: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, num_classes: int, num_prototypes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_prototypes = num_prototypes
        self.momentum = momentum
        self.register_buffer("prototypes", F.normalize(torch.randn(num_classes, num_prototypes, dim), dim=-1))
        self.register_buffer("initialized", torch.zeros(num_classes, num_prototypes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """embeddings ``(N, D)`` unit-norm of correctly predicted pixels, labels ``(N,)`` in 0..K-1."""
        k, m, d = self.prototypes.shape
        embeddings = embeddings.detach().float()
        similarity = torch.einsum("nd,nmd->nm", embeddings, self.prototypes[labels].float())
        slot = labels * m + similarity.argmax(dim=1)
        sums = torch.zeros(k * m, d, device=embeddings.device).index_add_(0, slot, embeddings)
        counts = torch.zeros(k * m, device=embeddings.device).index_add_(
            0, slot, torch.ones_like(slot, dtype=torch.float32))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        hit = counts > 0
        if not bool(hit.any()):
            return
        means = F.normalize(sums[hit] / counts[hit, None], dim=-1)
        flat = self.prototypes.view(k * m, d)
        fresh = self.initialized.view(-1)[hit]
        old = flat[hit].float()
        blended = torch.where(fresh[:, None], self.momentum * old + (1 - self.momentum) * means, means)
        flat[hit] = F.normalize(blended, dim=-1).to(flat.dtype)
        self.initialized.view(-1)[hit] = True
