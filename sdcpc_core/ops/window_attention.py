"""Windowed cross-frame attention.

Every query pixel of the current frame attends to a small dilated window of
key/value pixels around the same location in each of ``R`` reference frames,
with a single softmax over all ``R * window**2`` candidates.

This is the reference implementation: plain tensor operations with static
shapes only, so it traces cleanly through ``torch.export`` (strict mode), the
ONNX dynamo exporter and TensorRT. It loops over the ``window**2`` offsets; for
each one it takes static slices of the queries and of the keys/values shifted
by that offset, restricted to the rectangle where the shifted key lies inside
the image, and pads the resulting logits with ``-inf`` back to full size. All
slice bounds follow from the shapes, so nothing depends on tensor values. It
never holds more than one shifted product of ``k`` or ``v`` at a time and never
forms an ``HW x HW`` matrix.
Eager CPU inference (no tracing, no autograd) takes an equivalent path
(``_accumulate_inplace``): the same loop, writing straight into slices of
preallocated logits and output, which on CPU is about twice as fast as the
plain ops (they are memory-bound). Graphs captured by ``torch.export`` (the
ONNX and TensorRT programs) take a third equivalent path
(``_attend_by_tiles``): dense attention inside tiles of ``EXPORT_TILE`` x
``EXPORT_TILE`` queries, as two batched matrix products. A fused GPU kernel
(``window_attention_op``) replaces them on CUDA when enabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import eager_cpu_inference

__all__ = ["EXPORT_TILE", "window_attention"]

EXPORT_TILE = 8  # query tile side of the exported formulation (``_attend_by_tiles``)


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


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    dilation: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Attend from each query pixel to a dilated window in every reference frame.

    Args:
        q: queries, shape ``(B, h, d, H, W)`` (batch, heads, channels per head,
            height, width).
        k: keys, shape ``(B, R, h, d, H, W)`` for ``R >= 1`` reference frames.
        v: values, same shape as ``k``.
        window: odd window size; the offsets are ``i, j`` in
            ``[-(window // 2), window // 2]``.
        dilation: spacing between window taps, so the query at ``(y, x)`` sees
            the keys at ``(y + i * dilation, x + j * dilation)``.
        scale: logit scale; defaults to ``d ** -0.5``.

    Returns:
        Tensor of shape ``(B, h, d, H, W)`` and the dtype of ``q``:
        ``out[y, x] = sum_p softmax_p(scale * <q[y, x], k_p>) * v_p`` where ``p``
        runs jointly over all ``R * window**2`` (frame, offset) pairs. Keys that
        fall outside the image are excluded from the softmax (they get no
        weight); the centre offset is always inside, so every row is valid.

    Half-precision inputs (float16 / bfloat16) are computed in float32
    internally and the result is cast back.
    """
    _check_inputs(q, k, v, window, dilation)
    B, R, h, d, H, W = k.shape
    if scale is None:
        scale = d ** -0.5
    if torch.compiler.is_exporting():
        return _attend_by_tiles(q, k, v, window, dilation, scale)
    acc_dtype = _accumulation_dtype(q)

    # For every offset, the static rectangle of query pixels whose key is inside
    # the image. Offsets that miss the image entirely carry no weight: dropped.
    radius = window // 2
    taps = [i * dilation for i in range(-radius, radius + 1)]
    regions = []
    for oy in taps:
        for ox in taps:
            y0, y1, x0, x1 = max(0, -oy), min(H, H - oy), max(0, -ox), min(W, W - ox)
            if y1 > y0 and x1 > x0:
                regions.append((oy, ox, y0, y1, x0, x1))

    q_s = (q.to(acc_dtype) * scale).unsqueeze(1)  # (B, 1, h, d, H, W)
    if eager_cpu_inference(q, k, v):
        # contiguous: projections of channels-last features arrive with W not innermost
        k, v = k.to(acc_dtype).contiguous(), v.to(acc_dtype).contiguous()
        return _accumulate_inplace(q_s.contiguous(), k, v, regions).to(q.dtype)
    logits = []
    for oy, ox, y0, y1, x0, x1 in regions:
        k_n = k[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]
        logit = (q_s[..., y0:y1, x0:x1] * k_n).sum(dim=3)  # (B, R, h, y1 - y0, x1 - x0)
        # Out-of-image keys are excluded: their logits are padded with -inf.
        logits.append(F.pad(logit, (x0, W - x1, y0, H - y1), value=float("-inf")))
    # (B, R * n_offsets, h, H, W): one softmax jointly over frames and offsets.
    # Rebinding the names frees the per-offset logits and the stack early (peak memory).
    logits = torch.stack(logits, dim=2).flatten(1, 2)
    attn = logits.softmax(dim=1).unflatten(1, (R, len(regions)))
    del logits, q_s

    out = torch.zeros((B, h, d, H, W), dtype=acc_dtype, device=q.device)
    for n, (oy, ox, y0, y1, x0, x1) in enumerate(regions):
        v_n = v[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]
        a_n = attn[:, :, n, :, y0:y1, x0:x1].unsqueeze(3)  # (B, R, h, 1, y1 - y0, x1 - x0)
        out = out + F.pad((a_n * v_n).sum(dim=1), (x0, W - x1, y0, H - y1))
    return out.to(q.dtype)


def _accumulation_dtype(q: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs, their own dtype otherwise."""
    return torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype


def _accumulate_inplace(q_s: torch.Tensor, k: torch.Tensor, v: torch.Tensor, regions: list) -> torch.Tensor:
    """The same computation written into preallocated outputs.

    On CPU the plain-op path is bound by memory traffic: every offset writes a ``(B, R, h, d, H, W)``
    product, reduces it over ``d`` and pads the result. Here each offset's logits are one fused dot
    product over ``d`` (``linalg.vecdot``) copied into a slice of the logits, the softmax runs in
    place, and the values are accumulated with ``addcmul_`` straight into slices of the output.
    (A channel-by-channel ``addcmul_`` for the logits is 20% faster on one thread but does not
    scale with threads and stalls on a busy machine: 16x more operations to synchronise.)
    """
    B, R, h, d, H, W = k.shape
    attn = q_s.new_empty((B, R, len(regions), h, H, W))
    for n, (oy, ox, y0, y1, x0, x1) in enumerate(regions):
        q_n = q_s[..., y0:y1, x0:x1]  # (B, 1, h, d, y1 - y0, x1 - x0)
        k_n = k[..., y0 + oy : y1 + oy, x0 + ox : x1 + ox]  # (B, R, h, d, y1 - y0, x1 - x0)
        logit = attn[:, :, n, :, y0:y1, x0:x1]
        logit.copy_(torch.linalg.vecdot(q_n, k_n, dim=3))
        # out-of-image keys: -inf outside the rectangle
        attn[:, :, n, :, :y0] = attn[:, :, n, :, y1:] = float("-inf")
        attn[:, :, n, :, :, :x0] = attn[:, :, n, :, :, x1:] = float("-inf")
    # softmax over frames and offsets (dims 1, 2), in place
    attn.sub_(attn.amax(dim=(1, 2), keepdim=True)).exp_()
    attn.div_(attn.sum(dim=(1, 2), keepdim=True))
    out = q_s.new_zeros((B, h, d, H, W))
    for n, (oy, ox, y0, y1, x0, x1) in enumerate(regions):
        target = out[..., y0:y1, x0:x1]
        for r in range(R):
            target.addcmul_(attn[:, r, n, :, y0:y1, x0:x1].unsqueeze(2),
                            v[:, r, :, :, y0 + oy : y1 + oy, x0 + ox : x1 + ox])
    return out


def _attend_by_tiles(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int,
                     scale: float, tile: int = EXPORT_TILE) -> torch.Tensor:
    """The same attention as dense attention inside tiles, for exported graphs (same arguments and
    result as ``window_attention``, half precision computed in float32).

    The query map is cut into ``tile x tile`` tiles; every query of a tile may look at the
    ``S x S`` key block around it (``S = tile + 2 * radius``, gathered from the zero-padded keys
    with one constant index) in every reference. The logits of a tile are one matrix product
    ``(tile^2, d) x (d, R S^2)``, an additive mask of ``-inf`` keeps exactly the window taps that
    lie inside the image (every key position of a padded query row, so that no row is empty; those
    rows are cropped), one softmax runs over the row and a second product gathers the values.
    It does ``S^2 / window^2`` times the multiply-adds of the offset loop (4x for window 7, tile 8)
    but as a few large operators instead of ``2 R window^2`` small ones: in ONNX Runtime on one CPU
    thread the window op at 1/8 of 512x1024 (3 references, 4 heads x 16) took 75 ms this way and
    350 ms as the offset loop. The logits hold ``B h tiles tile^2 R S^2`` values (77 MB in float32
    for that case). Shapes and the index depend only on the input shapes.
    """
    B, R, h, d, H, W = k.shape
    acc_dtype = _accumulation_dtype(q)
    q_s, k, v = q.to(acc_dtype) * scale, k.to(acc_dtype), v.to(acc_dtype)
    radius = (window // 2) * dilation
    rows, cols = -(-H // tile), -(-W // tile)
    side = tile + 2 * radius
    height, width = rows * tile + 2 * radius, cols * tile + 2 * radius  # padded key map
    device = q.device

    def grid(n: int, dim: int, ndim: int = 4) -> torch.Tensor:
        shape = [1] * ndim
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)

    tile_y, tile_x, key_y, key_x = grid(rows, 0), grid(cols, 1), grid(side, 2), grid(side, 3)
    index = ((tile_y * tile + key_y) * width + tile_x * tile + key_x).reshape(-1)  # (tiles * S * S,)
    # mask: (tiles, tile * tile, S * S), True where a query may attend
    query_y, query_x = grid(tile, 0), grid(tile, 1)
    dy, dx = key_y - radius - query_y, key_x - radius - query_x  # (tile, tile, S, S)
    in_window = (dy.abs() <= radius) & (dx.abs() <= radius) & (dy % dilation == 0) & (dx % dilation == 0)
    image_y, image_x = tile_y * tile + key_y - radius, tile_x * tile + key_x - radius  # (rows, cols, S, S)
    in_image = (image_y >= 0) & (image_y < H) & (image_x >= 0) & (image_x < W)
    padded_query = ((tile_y * tile + grid(tile, 2)) >= H) | ((tile_x * tile + grid(tile, 3)) >= W)
    allowed = (in_window.reshape(1, tile * tile, side * side) & in_image.reshape(rows * cols, 1, side * side)) \
        | padded_query.reshape(rows * cols, tile * tile, 1)
    bias = torch.zeros(allowed.shape, dtype=q_s.dtype, device=device).masked_fill(~allowed, float("-inf"))

    kv = torch.stack([k, v]).reshape(2 * B * R * h * d, H, W)
    kv = F.pad(kv, (radius, width - W - radius, radius, height - H - radius)).reshape(2 * B * R * h * d, -1)
    kv = kv[:, index].view(2, B, R, h, d, rows * cols, side * side)
    kv = kv.permute(0, 1, 3, 5, 2, 6, 4).reshape(2, B, h, rows * cols, R * side * side, d)
    q_t = F.pad(q_s, (0, cols * tile - W, 0, rows * tile - H)).view(B, h, d, rows, tile, cols, tile)
    q_t = q_t.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, h, rows * cols, tile * tile, d)
    logits = torch.matmul(q_t, kv[0].transpose(-1, -2)).view(B, h, rows * cols, tile * tile, R, side * side)
    logits = logits + bias.view(rows * cols, tile * tile, 1, side * side)
    attn = logits.view(B, h, rows * cols, tile * tile, R * side * side).softmax(dim=-1)
    out = torch.matmul(attn, kv[1]).view(B, h, rows, cols, tile, tile, d)
    out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, h, d, rows * tile, cols * tile)
    return out[..., :H, :W].to(q.dtype)
