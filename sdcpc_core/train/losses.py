"""Losses of SD-CPC: static and temporal cross-entropy and the MCP-CL contrastive term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def mcp_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, valid: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Multi-positive InfoNCE between pixel embeddings and class prototypes.

    embeddings ``(N, D)`` unit-norm; labels ``(N,)`` class ids (``IGNORE_INDEX`` allowed);
    prototypes ``(K, M, D)`` unit-norm; valid ``(K, M)`` bool (initialised prototypes).
    For pixel i of class y: ``-log(sum_m exp(s_ym / t) / sum_{c, m valid} exp(s_cm / t))``.
    Pixels whose class has no valid prototype are left out; returns 0 (with a graph) when none is left.
    """
    k, m, d = prototypes.shape
    keep = labels != IGNORE_INDEX
    keep &= valid.any(dim=1)[labels.clamp(0, k - 1)]
    if not bool(keep.any()):
        return embeddings.sum() * 0.0
    emb, lab = embeddings[keep], labels[keep]
    logits = (emb @ prototypes.reshape(k * m, d).to(emb.dtype).t()) / temperature
    logits = logits.masked_fill(~valid.reshape(1, k * m), float("-inf")).view(-1, k, m)
    positive = torch.logsumexp(logits[torch.arange(len(lab), device=lab.device), lab], dim=1)
    return (torch.logsumexp(logits.flatten(1), dim=1) - positive).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits ``(B, K, h, w)`` against labels ``(B, H, W)``, logits upsampled bilinearly."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)
