"""SSEA: static semantic alignment inside one frame (multi-scale, multi-level correlation).

X, the head's fused 1/4 map averaged to 1/8, attends position by position to a small token set:
each backbone level's projected map (the SegFormer head's per-level projection) average-pooled to
several grid sizes (default 1, 2, 4, 8), with a learned embedding per (level, grid). Averaging and
the affine projection commute, so the backbone levels are pooled first (``pool``, on their C_i
channels) and only the pooled tokens go through the head's projections (its ``linear_c``, passed
in). With four levels that is 4 x (1 + 4 + 16 + 64) = 340 tokens, so the cost is O(HW x 340)
instead of O((HW)^2); queries, keys and values are ``attn_dim`` wide (default 128, half the decoder
width: SSEA ran at 4.3 GFLOPs per frame at full width on MiT-B1 480x853, 8% of the whole SegFormer,
for a correlation that needs far fewer channels). The result is a residual scaled by a learned,
zero-initialised factor, so a model built from SegFormer weights starts as that SegFormer.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ..ops.dispatch import builds_autograd_graph, traced
from .layers import LayerNorm2d, grid_pool_tokens, inference_constant, map_to_tokens, mean_pool2x2, multihead_attention


class StaticSemanticAlignment(nn.Module):
    """X (the fused map at 1/8) and its residual ``(B, E, h, w)`` from one frame's head and backbone maps."""

    def __init__(self, embed_dim: int, num_levels: int, grids: tuple[int, ...], heads: int, attn_dim: int) -> None:
        super().__init__()
        self.grids = tuple(grids)
        self.heads = heads
        self.query_norm = LayerNorm2d(embed_dim)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.token_embed = nn.Parameter(torch.zeros(num_levels * len(self.grids), embed_dim))
        nn.init.trunc_normal_(self.token_embed, std=0.02)
        self.q = nn.Linear(embed_dim, attn_dim)
        self.kv = nn.Linear(embed_dim, 2 * attn_dim)
        self.proj = nn.Linear(attn_dim, embed_dim)
        self.gamma = nn.Parameter(torch.zeros(embed_dim))

    @property
    def num_tokens(self) -> int:
        return (len(self.token_embed) // len(self.grids)) * sum(g * g for g in self.grids)

    def pool(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-level maps ``[(B, C_i, h_i, w_i)]`` -> per-level tokens ``[(B, n, C_i)]``, ``n = sum g^2`` over
        the grids (grid by grid, row-major)."""
        return [grid_pool_tokens(level, self.grids) for level in levels]

    def _embedded_tokens(self, pooled: list[torch.Tensor], projections: Sequence[nn.Module]) -> torch.Tensor:
        """Pooled per-level tokens ``[(B, n, C_i)]`` -> projected tokens plus their (level, grid) embedding
        ``(B, num_tokens, E)``.

        Without autograd or tracing each level's projection, bias and embedding are one product written
        straight into its rows of the result (``baddbmm`` with ``out=``); otherwise projections, a
        concatenation and an addition (same values).
        """
        embed = inference_constant(self, "embed", self._expanded_embed, self.token_embed)
        linears = [cast(nn.Linear, project) for project in projections]
        if traced() or builds_autograd_graph(*pooled, embed):
            return torch.cat([linear(tokens) for linear, tokens in zip(linears, pooled)], dim=1) + embed
        b, e = pooled[0].shape[0], embed.shape[1]
        out = embed.new_empty((b, len(embed), e))
        offset = 0
        for level, (linear, tokens) in enumerate(zip(linears, pooled)):
            rows = slice(offset, offset + tokens.shape[1])
            shift = inference_constant(self, f"shift_{level}", functools.partial(_rows_plus, embed, rows, linear.bias),
                                       self.token_embed, linear.bias)  # (n, E): bias and embedding of the rows
            torch.baddbmm(shift, tokens, linear.weight.t().expand(b, -1, -1), out=out[:, rows])
            offset = rows.stop
        return out

    def _expanded_embed(self) -> torch.Tensor:
        """``(num_tokens, E)``: each (level, grid) embedding repeated for the grid's tokens."""
        sizes = [g * g for g in self.grids] * (len(self.token_embed) // len(self.grids))
        return torch.cat([e.expand(n, -1) for e, n in zip(self.token_embed, sizes)], dim=0)

    def _folded_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma * proj``: weight ``(E, attn_dim)`` and bias ``(E, 1)``."""
        return self.gamma[:, None] * self.proj.weight, (self.gamma * self.proj.bias)[:, None]

    def forward(self, fused: torch.Tensor, levels: list[torch.Tensor],
                projections: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's fused map ``(B, E, 2h, 2w)``, backbone levels ``[(B, C_i, h_i, w_i)]`` and their
        projections ``C_i -> E`` (the head's ``linear_c``) -> X = the fused map averaged to ``(B, E, h, w)``
        and the residual ``(B, E, h, w)`` (both contiguous).

        The output projection and ``gamma`` are applied as one product written straight into the
        ``(B, E, h*w)`` layout of the maps: the attention's token layout is never transposed back.
        """
        x = mean_pool2x2(fused)
        b, _, h, w = x.shape
        q = self.q(map_to_tokens(self.query_norm(x)))
        k, v = self.kv(self.token_norm(self._embedded_tokens(self.pool(levels), projections))).chunk(2, dim=-1)
        out = multihead_attention(q, k, v, self.heads)  # (B, h*w, attn_dim)
        weight, bias = inference_constant(self, "output", self._folded_output, self.gamma, self.proj.weight,
                                          self.proj.bias)
        residual = torch.baddbmm(bias, weight.expand(b, -1, -1), out.transpose(1, 2))
        return x, residual.view(b, -1, h, w)


def _rows_plus(table: torch.Tensor, rows: slice, bias: torch.Tensor) -> torch.Tensor:
    """``table[rows] + bias``: ``(n, E)``."""
    return table[rows] + bias
