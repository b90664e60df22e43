"""Losses of SD-CPC: static and temporal cross-entropy and the MCP-CL contrastive term.

The training objective of one clip (spec section 2) is
``static_weight x CE(static logits of every labelled frame) + temporal_weight x CE(temporal logits of
the target) + mcp_weight x MCP-CL(target embeddings)``. :func:`clip_loss_sums` returns each term as
a *sum* over its pixels and :func:`clip_loss_counts` the number of those pixels, so that a trainer
can divide by the count over the whole global batch (all processes, all accumulated micro-batches):
the mean is then the same however the batch is split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
TERMS = ("static_ce", "temporal_ce", "mcp")


def mcp_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, valid: torch.Tensor,
    temperature: float = 0.1, reduction: str = "mean",
) -> torch.Tensor:
    """Multi-positive InfoNCE between pixel embeddings and class prototypes.

    embeddings ``(N, D)`` unit-norm; labels ``(N,)`` class ids (``IGNORE_INDEX`` allowed);
    prototypes ``(K, M, D)`` unit-norm; valid ``(K, M)`` bool (initialised prototypes).
    For pixel i of class y: ``-log(sum_m exp(s_ym / t) / sum_{c, m valid} exp(s_cm / t))``.
    Pixels whose class has no valid prototype are left out (see :func:`mcp_pixel_mask`); the
    result is their mean (``reduction="mean"``) or sum (``"sum"``), 0 (with a graph) when none is left.
    """
    k, m, d = prototypes.shape
    keep = mcp_pixel_mask(labels, valid)
    if not bool(keep.any()):
        return embeddings.sum() * 0.0
    emb, lab = embeddings[keep], labels[keep]
    logits = (emb @ prototypes.reshape(k * m, d).to(emb.dtype).t()) / temperature
    logits = logits.masked_fill(~valid.reshape(1, k * m), float("-inf")).view(-1, k, m)
    positive = torch.logsumexp(logits[torch.arange(len(lab), device=lab.device), lab], dim=1)
    per_pixel = torch.logsumexp(logits.flatten(1), dim=1) - positive
    return per_pixel.sum() if reduction == "sum" else per_pixel.mean()


def mcp_pixel_mask(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixels MCP-CL uses: labelled, of a class with at least one valid prototype (``labels``'s shape and
    device; ``valid`` ``(K, M)`` may live elsewhere, e.g. the prototypes on the GPU and the loader's labels
    on the CPU)."""
    k = valid.shape[0]
    return (labels != IGNORE_INDEX) & valid.any(dim=1).to(labels.device)[labels.clamp(0, k - 1)]


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``(B, K, h, w)`` against labels ``(B, H, W)``, logits upsampled bilinearly.

    ``reduction="sum"`` sums over the labelled pixels (0 when there are none, where the mean is NaN).
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction=reduction)


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour labels ``(B, H, W) -> (B, h, w)`` (e.g. at the 1/8 embedding resolution)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def clip_loss_sums(static_logits: torch.Tensor, temporal_logits: torch.Tensor, embeddings: torch.Tensor | None,
                   labels: torch.Tensor, prototypes: torch.Tensor | None, valid: torch.Tensor | None,
                   temperature: float) -> dict[str, torch.Tensor]:
    """Per-term sums over one micro-batch (``TERMS``).

    static_logits ``(B, T, K, h4, w4)``; temporal_logits ``(B, K, h4, w4)``; embeddings
    ``(B, D, h8, w8)`` or None (per-frame models: no MCP term); labels ``(B, T, H, W)`` (255 where a
    frame has no label; the target last); prototypes ``(K, M, D)`` and valid ``(K, M)``.
    """
    sums = {
        "static_ce": segmentation_loss(static_logits.flatten(0, 1), labels.flatten(0, 1), reduction="sum"),
        "temporal_ce": segmentation_loss(temporal_logits, labels[:, -1], reduction="sum"),
    }
    if embeddings is None:
        sums["mcp"] = temporal_logits.sum() * 0.0
    else:
        small = labels_at(labels[:, -1], tuple(embeddings.shape[-2:]))
        flat = embeddings.float().permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        sums["mcp"] = mcp_contrastive_loss(flat, small.reshape(-1), prototypes, valid, temperature, reduction="sum")
    return sums


def clip_loss_counts(labels: torch.Tensor, valid: torch.Tensor | None, embed_size: tuple[int, int] | None
                     ) -> torch.Tensor:
    """Pixels each term of :func:`clip_loss_sums` averages over, float64 ``(3,)`` in ``TERMS`` order."""
    labelled = labels != IGNORE_INDEX
    mcp = 0
    if valid is not None and embed_size is not None:
        mcp = int(mcp_pixel_mask(labels_at(labels[:, -1], embed_size), valid).sum())
    return torch.tensor([int(labelled.sum()), int(labelled[:, -1].sum()), mcp], dtype=torch.float64)


@torch.no_grad()
def correct_pixels(temporal_logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(N, D)`` and labels ``(N,)`` of the target pixels (at 1/8) whose temporal prediction
    equals their label: what updates the MCP-CL prototypes (``ClassPrototypes.update``)."""
    size = tuple(embeddings.shape[-2:])
    small = labels_at(labels, size)
    predicted = F.interpolate(temporal_logits.float(), size=size, mode="nearest").argmax(dim=1)
    hit = (predicted == small) & (small != IGNORE_INDEX)
    flat = embeddings.detach().float().permute(0, 2, 3, 1)
    return flat[hit], small[hit]


__all__ = ["IGNORE_INDEX", "TERMS", "clip_loss_counts", "clip_loss_sums", "correct_pixels", "labels_at",
           "mcp_contrastive_loss", "mcp_pixel_mask", "segmentation_loss"]
