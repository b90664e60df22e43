"""Small building blocks shared by the backbones, the decode head and the temporal modules."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.dispatch import builds_autograd_graph, eager_cpu_inference, traced


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def adaptive_pool_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)`` averaging matrix with the bins of ``F.adaptive_avg_pool1d``.

    Built from shapes only (no data-dependent indexing), so it exports to ONNX/TensorRT where
    adaptive pooling with non-dividing sizes is not supported.
    """
    out_idx = torch.arange(n_out, device=like.device)
    start = torch.div(out_idx * n_in, n_out, rounding_mode="floor")
    end = torch.div((out_idx + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    pos = torch.arange(n_in, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def adaptive_avg_pool(x: torch.Tensor, grids: tuple[int, ...],
                      matrix: Callable[[int, int, torch.Tensor], torch.Tensor] = adaptive_pool_matrix
                      ) -> list[torch.Tensor]:
    """Export-friendly ``[F.adaptive_avg_pool2d(x, g) for g in grids]``: ``(B, C, H, W) -> [(B, C, g, g)]``.

    Two plain matrix products per grid (the first shared by all grids), no batched small GEMMs.
    ``matrix(n_in, n_out, like)`` gives the averaging matrices (default: built in place from shapes).
    """
    b, c, h, w = x.shape
    cols = torch.cat([matrix(w, g, x) for g in grids], dim=0)  # (sum g, W)
    pooled_cols = torch.mm(x.reshape(b * c * h, w), cols.t()).reshape(b * c, h, -1)
    out, start = [], 0
    for g in grids:
        part = pooled_cols[..., start:start + g].transpose(1, 2).reshape(b * c * g, h)
        out.append(torch.mm(part, matrix(h, g, x).t()).reshape(b, c, g, g).transpose(2, 3))
        start += g
    return out


def grid_pool_tokens(x: torch.Tensor, grids: tuple[int, ...]) -> torch.Tensor:
    """Every grid's ``F.adaptive_avg_pool2d`` of ``x`` as tokens: ``(B, C, H, W) -> (B, sum g^2, C)``, grid by
    grid, each row-major.

    Which formulation runs:

    | call | formulation |
    |---|---|
    | traced (``torch.export``, ``torch.compile``) | ``adaptive_avg_pool``: matrices built in the graph from shapes |
    | eager CPU inference | ``adaptive_avg_pool`` with cached matrices: small products, the fewest multiply-adds |
    | eager elsewhere (CUDA, autograd) | one product with a cached ``(sum g^2, H*W)`` matrix: one kernel |

    All give the same values up to float rounding (tested). On a GPU at batch 1 every small product and
    every operator that builds a pooling matrix is a kernel launch, which costs more there than the
    extra arithmetic of the one dense product.
    """
    in_graph = traced()
    if in_graph or eager_cpu_inference(x):
        matrix = adaptive_pool_matrix if in_graph else _cached_pool_matrix
        return torch.cat([map_to_tokens(p) for p in adaptive_avg_pool(x, grids, matrix)], dim=1)
    h, w = x.shape[-2:]
    return torch.matmul(_dense_pool_matrix(h, w, tuple(grids), x.device, x.dtype), x.flatten(2).transpose(1, 2))


def _cached_pool_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    return _pool_matrix_of_size(n_in, n_out, like.device, like.dtype)


@functools.lru_cache(maxsize=64)
def _pool_matrix_of_size(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``adaptive_pool_matrix`` as a constant of the sizes, built once (outside inference mode, so any
    mode may use it)."""
    with torch.inference_mode(False), torch.no_grad():
        return adaptive_pool_matrix(n_in, n_out, torch.empty(0, device=device, dtype=dtype))


@functools.lru_cache(maxsize=32)
def _dense_pool_matrix(h: int, w: int, grids: tuple[int, ...], device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    """``(sum g^2, H*W)``: row ``i*g + j`` of grid g averages bin (i, j); a constant of the input size."""
    with torch.inference_mode(False), torch.no_grad():
        like = torch.empty(0, device=device, dtype=dtype)
        blocks = [torch.einsum("iy,jx->ijyx", adaptive_pool_matrix(h, g, like), adaptive_pool_matrix(w, g, like))
                  .reshape(g * g, h * w) for g in grids]
        return torch.cat(blocks, dim=0)


def mean_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, ``(B, C, H, W) -> (B, C, H/2, W/2)``.

    Eager CPU inference and exported graphs take two pairwise sums: rows 2i and 2i+1 first (the two
    halves of one contiguous row pair, so both reads run along memory), then even and odd columns;
    on a CPU that is several times faster than ``avg_pool2d`` or a depthwise convolution for the
    256-channel 1/4 map (``bench/RESULTS.md``). Elsewhere (a GPU, autograd) ``avg_pool2d`` is one
    kernel against three. Odd sizes (never met by the model, whose maps are multiples of 8) go to
    ``avg_pool2d``."""
    b, c, h, w = x.shape
    if h % 2 or w % 2 or not (eager_cpu_inference(x) or torch.compiler.is_exporting()):
        return F.avg_pool2d(x, 2)
    row_pairs = x.reshape(b, c, h // 2, 2 * w)
    rows = row_pairs[..., :w] + row_pairs[..., w:]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def inference_constant(owner: nn.Module, name: str, compute: Callable[[], Any], *sources: torch.Tensor) -> Any:
    """``compute()`` (tensors derived from ``sources``, e.g. folded weights), computed once and reused while
    the ``sources`` are unchanged: the same tensor objects with the same storage and version.

    Under autograd (a source requires gradients), ``torch.compile`` and ``torch.export`` it is computed
    afresh, so gradients flow and traced graphs keep deriving the constants from the parameters; so it is
    for inference tensors as sources, which have no version counter. The cached value is computed outside
    inference mode and without gradients, so it may also serve a later autograd pass through frozen
    weights. The entry keeps the sources themselves, so a replaced weight's memory cannot be reused by
    its successor while the entry lives. On a GPU at batch 1 each derived weight is one more kernel per
    frame for a value that only changes when the weights do.
    """
    if traced() or builds_autograd_graph(*sources) or any(s.is_inference() for s in sources):
        return compute()
    state = tuple((s.data_ptr(), s._version) for s in sources)
    cache = owner.__dict__.setdefault("_inference_constants", {})
    hit = cache.get(name)
    if hit is None or hit[1] != state or any(a is not b for a, b in zip(hit[0], sources, strict=True)):
        with torch.inference_mode(False), torch.no_grad():
            hit = cache[name] = (sources, state, compute())
    return hit[2]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads ``(B, C, H, W)`` at the bottom and right so that H and W divide by ``multiple``."""
    h, w = x.shape[-2:]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def init_weights(module: nn.Module) -> None:
    """SegFormer-style initialisation: truncated normal linears, fan-out normal convolutions."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)


def conv_on_tokens(conv: nn.Conv2d, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``conv`` applied to ``(B, H*W, C)`` tokens seen as an ``H x W`` map -> ``(B, h*w, C')`` tokens.

    Token sequences are channels-last maps. The weight is handed over in channels-last strides (a
    copy of a few kilobytes per call; the parameter itself keeps the standard layout), so oneDNN
    keeps that layout and returns channels-last output, which reads back as tokens without a copy.
    With the standard weight layout it converted both ways: MiT-B0's stage-1 depthwise 3x3 (128
    channels at 128x256) took 78 ms that way and 6 ms this way, its spatial reduction 12.7 and 1.8 ms
    (one CPU thread).
    """
    # .to(), not .contiguous(): the latter is a no-op for depthwise weights
    weight = inference_constant(conv, "channels_last", lambda: conv.weight.to(memory_format=torch.channels_last),
                                conv.weight)
    out = F.conv2d(tokens_to_map(tokens, height, width), weight, conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups)
    return map_to_tokens(out)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention on token sequences.

    q: ``(B, N, C)``, k and v: ``(B, M, C)``; returns ``(B, N, C)`` with C split into ``heads``.
    """
    b, n, c = q.shape
    d = c // heads
    q = q.reshape(b, n, heads, d).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, c)
