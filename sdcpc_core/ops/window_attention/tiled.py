"""Window attention as dense attention inside tiles: the formulation of exported graphs.

``torch.export`` (the ONNX and TensorRT programs) captures this formulation instead of the offset
loop of ``reference`` (see ``_attend_by_tiles`` for why). Same results as the other formulations
(tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import _accumulation_dtype

EXPORT_TILE = 8  # query tile side of the exported formulation (``_attend_by_tiles``)


def _attend_by_tiles(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int,
                     scale: float, tile: int = EXPORT_TILE) -> torch.Tensor:
    """The same attention as dense attention inside tiles, for exported graphs (same arguments and
    result as the package's ``window_attention``, half precision computed in float32).

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
