"""SSEA: static semantic alignment inside one frame (multi-scale, multi-level correlation).

Every position of the 1/8 feature X attends to a small token set: each backbone level's projected
map (from the SegFormer head) average-pooled to several grid sizes (default 1, 2, 4, 8), with a
learned embedding per (level, grid). With four levels that is 4 x (1 + 4 + 16 + 64) = 340 tokens,
so the cost is O(HW x 340) instead of O((HW)^2); queries, keys and values are ``attn_dim`` wide
(default 128, half the decoder width: SSEA ran at 4.3 GFLOPs per frame at full width on MiT-B1
480x853, 8% of the whole SegFormer, for a correlation that needs far fewer channels). The result is a residual scaled by a learned,
zero-initialised factor, so a model built from SegFormer weights starts as that SegFormer.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import LayerNorm2d, adaptive_avg_pool, map_to_tokens, multihead_attention, tokens_to_map


class StaticSemanticAlignment(nn.Module):
    """Residual ``(B, E, h, w)`` for X ``(B, E, h, w)`` given per-level maps ``[(B, E, h_i, w_i)]``."""

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

    def tokens(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Pooled multi-scale, multi-level tokens ``(B, num_tokens, E)``."""
        groups = []
        for level in levels:
            groups.extend(map_to_tokens(pooled) for pooled in adaptive_avg_pool(level, self.grids))
        sizes = [g.shape[1] for g in groups]
        embed = torch.cat([e.expand(n, -1) for e, n in zip(self.token_embed, sizes)], dim=0)
        return self.token_norm(torch.cat(groups, dim=1) + embed)

    def forward(self, x: torch.Tensor, levels: list[torch.Tensor]) -> torch.Tensor:
        h, w = x.shape[-2:]
        q = self.q(map_to_tokens(self.query_norm(x)))
        k, v = self.kv(self.tokens(levels)).chunk(2, dim=-1)
        out = self.proj(multihead_attention(q, k, v, self.heads))
        return tokens_to_map(out * self.gamma, h, w)
