"""Windowed cross-frame attention: the contract, the input checks and the plain tensor-op formulation.

Every query pixel of the current frame attends to a small dilated window of
key/value pixels around the same location in each of ``R`` reference frames,
with a single softmax over all ``R * window**2`` candidates.

``_attend_plain`` is the reference formulation: plain tensor operations with
static shapes only, so it traces cleanly through ``torch.compile``, autograd and
every device. It loops over the ``window**2`` offsets; for each one it takes
static slices of the queries and of the keys/values shifted by that offset,
restricted to the rectangle where the shifted key lies inside the image
(``_regions``), and pads the resulting logits with ``-inf`` back to full size.
All slice bounds follow from the shapes, so nothing depends on tensor values.
It never holds more than one shifted product of ``k`` or ``v`` at a time and
never forms an ``HW x HW`` matrix. The other formulations (``cpu_inplace``,
``tiled``, ``triton``) compute the same result; the package's
``window_attention`` chooses among them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (oy, ox, y0, y1, x0, x1): a window offset and the query rectangle whose shifted key is in the image
Region = tuple[int, int, int, int, int, int]


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int) -> None:
    if q.dim() != 5:
        raise ValueError(f"q must be a 5-D tensor (B, h, d, H, W), got shape {tuple(q.shape)}.")
    if k.dim() != 6:
        raise ValueError(f"k must be a 6-D tensor (B, R, h, d, H, W), got shape {tuple(k.shape)}.")
    if v.dim() != 6:
        raise ValueError(f"v must be a 6-D tensor (B, R, h, d, H, W), got shape {tuple(v.shape)}.")
    if k.shape[1] == 0:
        raise ValueError("k and v must hold at least one reference frame (R >= 1), got R = 0.")
    if k.shape != v.shape:
        raise ValueError(f"v must have the same shape as k, got k {tuple(k.shape)} and v {tuple(v.shape)}.")
    if k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[1:]:
        raise ValueError(
            f"k and v must have shape (B, R, h, d, H, W) matching q {tuple(q.shape)}, got {tuple(k.shape)}."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 1, got {window!r}.")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}.")


def _accumulation_dtype(q: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, their own dtype otherwise."""
    return torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype


def _regions(H: int, W: int, window: int, dilation: int) -> list[Region]:
    """For every window offset, the static rectangle of query pixels whose key is inside the image.

    Offsets that miss the image entirely carry no weight: dropped.
    """
    radius = window // 2
    taps = [i * dilation for i in range(-radius, radius + 1)]
    regions = []
    for oy in taps:
        for ox in taps:
            y0, y1, x0, x1 = max(0, -oy), min(H, H - oy), max(0, -ox), min(W, W - ox)
            if y1 > y0 and x1 > x0:
                regions.append((oy, ox, y0, y1, x0, x1))
    return regions


def _attend_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int,
                  scale: float) -> torch.Tensor:
    """The plain-op formulation (checked inputs, resolved ``scale``; arguments and result as the
    package's ``window_attention``, half precision computed in float32)."""
    B, R, h, d, H, W = k.shape
    acc_dtype = _accumulation_dtype(q)
    regions = _regions(H, W, window, dilation)
    q_s = (q.to(acc_dtype) * scale).unsqueeze(1)  # (B, 1, h, d, H, W)
    per_offset = []
    for oy, ox, y0, y1, x0, x1 in regions:
        k_n = k[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]
        logit = (q_s[..., y0:y1, x0:x1] * k_n).sum(dim=3)  # (B, R, h, y1 - y0, x1 - x0)
        # Out-of-image keys are excluded: their logits are padded with -inf.
        per_offset.append(F.pad(logit, (x0, W - x1, y0, H - y1), value=float("-inf")))
    # (B, R * n_offsets, h, H, W): one softmax jointly over frames and offsets.
    # Deleting the per-offset logits and then the stack frees them early (peak memory).
    logits = torch.stack(per_offset, dim=2).flatten(1, 2)
    del per_offset
    attn = logits.softmax(dim=1).unflatten(1, (R, len(regions)))
    del logits, q_s

    out = torch.zeros((B, h, d, H, W), dtype=acc_dtype, device=q.device)
    for n, (oy, ox, y0, y1, x0, x1) in enumerate(regions):
        v_n = v[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]
        a_n = attn[:, :, n, :, y0:y1, x0:x1].unsqueeze(3)  # (B, R, h, 1, y1 - y0, x1 - x0)
        out = out + F.pad((a_n * v_n).sum(dim=1), (x0, W - x1, y0, H - y1))
    return out.to(q.dtype)
