"""Mix Transformer (MiT-B0..B5), the hierarchical SegFormer encoder.

Four stages at strides 4/8/16/32. Each stage: an overlapping patch embedding (strided conv +
LayerNorm), blocks of efficient self-attention (keys and values spatially reduced by a strided
conv) and Mix-FFN (MLP with a 3x3 depthwise conv), then a LayerNorm. Parameter names follow
the original SegFormer layout closely so that HF and mmseg checkpoints map onto them in
``sdcpc_core.weights.segformer``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, conv_on_tokens, init_weights, map_to_tokens, tokens_to_map


@dataclass(frozen=True)
class MiTSpec:
    """Shape of one MiT variant (per-stage tuples)."""

    channels: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_SPECS: dict[str, MiTSpec] = {
    "mit_b0": MiTSpec(channels=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTSpec(channels=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": MiTSpec(channels=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "mit_b3": MiTSpec(channels=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "mit_b4": MiTSpec(channels=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "mit_b5": MiTSpec(channels=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping patches: ``(B, C_in, H, W) -> (B, H'*W', C), H', W'``."""

    def __init__(self, in_channels: int, channels: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(map_to_tokens(x)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values are downsampled ``sr_ratio`` times per axis."""

    def __init__(self, channels: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(channels, channels, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """x: ``(B, N, C)`` tokens of an ``height x width`` map; returns ``(B, N, C)``."""
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(conv_on_tokens(self.sr, x, height, width))
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> linear, on ``(B, N, C)`` tokens."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = conv_on_tokens(self.dwconv, x, height, width)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: attention and Mix-FFN residual branches with stochastic depth."""

    def __init__(self, channels: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=1e-6)
        self.attn = EfficientSelfAttention(channels, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = MixFFN(channels, channels * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MiTStage(nn.Module):
    """Patch embedding, blocks and final norm: ``(B, C_in, H, W) -> (B, C, H/s, W/s)``."""

    def __init__(
        self, in_channels: int, channels: int, depth: int, heads: int, sr_ratio: int, mlp_ratio: int,
        patch_size: int, stride: int, drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, channels, patch_size, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(channels, heads, sr_ratio, mlp_ratio, drop_paths[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, height, width)
        return tokens_to_map(self.norm(x), height, width)


class MixVisionTransformer(nn.Module):
    """MiT encoder: ``(B, 3, H, W)`` -> four maps ``(B, C_i, H/s_i, W/s_i)``, s = 4, 8, 16, 32."""

    out_strides = (4, 8, 16, 32)

    def __init__(self, spec: MiTSpec, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.out_channels = spec.channels
        total = sum(spec.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start, in_channels = [], 0, 3
        for i in range(4):
            stages.append(MiTStage(
                in_channels, spec.channels[i], spec.depths[i], spec.heads[i], spec.sr_ratios[i],
                spec.mlp_ratio, patch_size=7 if i == 0 else 3, stride=4 if i == 0 else 2,
                drop_paths=rates[start:start + spec.depths[i]],
            ))
            start += spec.depths[i]
            in_channels = spec.channels[i]
        self.stages = nn.ModuleList(stages)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
