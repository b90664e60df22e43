"""DSSA: dynamic semantic alignment across frames, coarse to fine, steered by class-level differences.

Per reference frame r, the *static perceptual difference* d_r is the Jensen-Shannon divergence
between the target's and the reference's class probabilities at 1/32, divided by ln 2 so that it
lies in [0, 1] (``sdcpc_core.ops.perceptual_difference``, which also gives the stage-1 selection
scores and the gate in one call: one fused kernel on a GPU). It drives both stages:

* stage 1 (coarse, 1/32): target tokens attend to a fixed number of reference tokens, those where
  d_r is largest (where the class-level perception changed between the frames: moving or
  ambiguous content). The count is static for an input size and at most 3840 so that TensorRT's
  TopK accepts it. The output is coarse cross-frame context that is upsampled and added to the
  stage-2 query (a location prior for the fine search).
* stage 2 (fine, 1/8): window attention from each target position to a ``window x window``
  neighbourhood in every reference, one softmax over all of them (``sdcpc_core.ops``).

The result is gated per position by a learned function of the difference and scaled by a
zero-initialised per-channel factor, so the temporal branch starts as an identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.gated_upsample import upsample_gate
from ..ops.perceptual_difference import difference_signals
from ..ops.query_norm import upsample_add_layer_norm
from ..ops.window_attention import window_attention
from .layers import LayerNorm2d, inference_constant, map_to_tokens, multihead_attention, tokens_to_map

MAX_SELECTED_TOKENS = 3840  # TensorRT's TopK limit on K


class CoarseSelectiveAttention(nn.Module):
    """Stage 1: target tokens ``(B, E, h, w)`` attend to the top-``max_tokens`` reference tokens."""

    def __init__(self, embed_dim: int, heads: int, max_tokens: int) -> None:
        super().__init__()
        if not 1 <= max_tokens <= MAX_SELECTED_TOKENS:
            raise ValueError(f"coarse_tokens must be in 1..{MAX_SELECTED_TOKENS}, got {max_tokens}")
        self.heads = heads
        self.max_tokens = max_tokens
        self.query_norm = nn.LayerNorm(embed_dim)
        self.key_norm = nn.LayerNorm(embed_dim)
        self.q = nn.Linear(embed_dim, embed_dim)
        self.kv = nn.Linear(embed_dim, 2 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, target: torch.Tensor, refs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """target ``(B, E, h, w)``, refs ``(B, R, E, h, w)``, selection scores ``(B, R*h*w)`` -> ``(B, E, h, w)``."""
        b, r, e, h, w = refs.shape
        tokens = refs.permute(0, 1, 3, 4, 2).reshape(b, r * h * w, e)
        count = min(self.max_tokens, r * h * w)
        if count < r * h * w:
            index = scores.topk(count, dim=1).indices
            tokens = tokens.gather(1, index.unsqueeze(-1).expand(b, count, e))
        q = self.q(self.query_norm(map_to_tokens(target)))
        k, v = self.kv(self.key_norm(tokens)).chunk(2, dim=-1)
        return tokens_to_map(self.proj(multihead_attention(q, k, v, self.heads)), h, w)


class FineWindowAttention(nn.Module):
    """Stage 2: window attention at 1/8; reference keys/values are projected once per frame.

    Queries, keys and values are ``attn_dim`` wide (default 64 as 4 heads x 16, projected back to
    the decoder width). The window op is element-wise work proportional to that width times
    R x window^2; at the full 256 channels it took about as long on a CPU as the whole static
    branch of MiT-B0, and the cached keys/values of every frame were twice the size of S.
    """

    def __init__(self, embed_dim: int, heads: int, window: int, dilation: int, attn_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.dilation = dilation
        self.query_norm = LayerNorm2d(embed_dim)
        self.key_norm = LayerNorm2d(embed_dim)
        self.q = nn.Conv2d(embed_dim, attn_dim, 1)
        self.kv = nn.Conv2d(embed_dim, 2 * attn_dim, 1)
        self.proj = nn.Conv2d(attn_dim, embed_dim, 1)

    def project_kv(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, E, H, W) -> (B, 2 attn_dim, H, W)``: what a frame offers as a reference (cached)."""
        return self.kv(self.key_norm(features))

    def forward(self, features: torch.Tensor, context: torch.Tensor, ref_kv: torch.Tensor) -> torch.Tensor:
        """features ``(B, E, H, W)``, stage-1 context ``(B, E, h, w)`` (upsampled and added: the query),
        ref_kv ``(B, R, 2 attn_dim, H, W)`` -> the attended values ``(B, attn_dim, H, W)``, before the output
        projection ``proj`` (applied by the consumers: ``DynamicSemanticAlignment.residual`` and
        ``TemporalClassifier``)."""
        b, _, h, w = features.shape
        r, width = ref_kv.shape[1], ref_kv.shape[2] // 2
        d = width // self.heads
        norm = self.query_norm
        query = upsample_add_layer_norm(context, features, norm.weight, norm.bias, norm.eps)
        q = self.q(query).reshape(b, self.heads, d, h, w)
        kv = ref_kv.reshape(b, r, 2, self.heads, d, h, w)
        out = window_attention(q, kv[:, :, 0], kv[:, :, 1], self.window, self.dilation)
        return out.reshape(b, width, h, w)


class DifferenceGate(nn.Module):
    """Per-position weight in (0, 1) from the mean and max difference over references: the parameters
    ``conv`` (2 -> 1, 1x1) of ``sigmoid(conv([mean, max]))``, which ``difference_signals`` evaluates."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zeros: the gate starts at 0.5 everywhere and learns its rule from the data. A random start would
        set a different rule per seed that training hardly moves, as the residual it gates starts at zero."""
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None  # built with a bias
        nn.init.zeros_(self.conv.bias)

    def signals(self, probs: torch.Tensor, ref_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs ``(B, K, h, w)``, ref_probs ``(B, R, K, h, w)`` -> stage-1 selection scores ``(B, R*h*w)``
        and the gate ``(B, 1, h, w)``."""
        assert self.conv.bias is not None  # built with a bias
        return difference_signals(probs, ref_probs, self.conv.weight, self.conv.bias)


class DynamicSemanticAlignment(nn.Module):
    """Temporal residual ``(B, E, H/8, W/8)`` for the target from cached reference tensors."""

    def __init__(self, embed_dim: int, heads: int, window: int, dilation: int, coarse_tokens: int,
                 window_heads: int, window_dim: int) -> None:
        super().__init__()
        self.coarse = CoarseSelectiveAttention(embed_dim, heads, coarse_tokens)
        self.fine = FineWindowAttention(embed_dim, window_heads, window, dilation, window_dim)
        self.gate = DifferenceGate()
        self.gamma = nn.Parameter(torch.zeros(embed_dim, 1, 1))

    def forward(
        self, features: torch.Tensor, coarse: torch.Tensor, probs: torch.Tensor,
        ref_kv: torch.Tensor, ref_coarse: torch.Tensor, ref_probs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target: features ``(B, E, H8, W8)``, coarse ``(B, E, H32, W32)``, probs ``(B, K, H32, W32)``;
        references stacked on dim 1: ref_kv ``(B, R, 2 window_dim, H8, W8)``, ref_coarse, ref_probs.

        Returns the attended values ``(B, window_dim, H8, W8)`` (stage 2, before its output projection)
        and the gate ``(B, 1, H32, W32)`` (bilinearly upsampled where it is applied); ``residual`` makes the
        residual D of them, ``TemporalClassifier`` classifies D without building it.
        """
        scores, gate = self.gate.signals(probs, ref_probs)
        context = self.coarse(coarse, ref_coarse, scores)
        return self.fine(features, context, ref_kv), gate

    def residual(self, attended: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The temporal residual D = gamma * up4(gate) * proj(attended) ``(B, E, H8, W8)``."""
        return self.gamma * upsample_gate(gate, (attended.shape[-2], attended.shape[-1])) * self.fine.proj(attended)


class TemporalClassifier(nn.Conv2d):
    """The temporal classifier: a bias-free 1x1 convolution ``W_t`` (E -> K) of the DSSA residual
    ``D = gamma * gate * (W_p a + b_p)``, computed as ``gate * ((W_t diag(gamma) W_p) a + W_t (gamma b_p))``
    from the attended values ``a`` (``window_dim`` channels).

    The gate is one number per position and everything else is linear over channels, so the two
    forms are equal; this one never builds the E-channel D: K x window_dim multiply-adds per position
    instead of E x window_dim + K x E, and no E-channel passes for gamma and the gate. The gate is
    applied by the caller (``SDCPC.temporal_logits``), together with the upsampling to the logits.
    """

    # A Conv2d's parameters with another call signature (Conv2d.forward(input) does not apply here).
    def forward(self, attended: torch.Tensor, proj: nn.Conv2d, gamma: torch.Tensor  # type: ignore[override]
                ) -> torch.Tensor:
        """attended ``(B, window_dim, h, w)``, DSSA's output projection and ``gamma`` ``(E, 1, 1)`` -> the
        ungated class correction ``(B, K, h, w)``."""
        assert proj.bias is not None  # DSSA's output projection has a bias
        weight, bias = inference_constant(self, "folded", lambda: self.fold(proj, gamma), self.weight, proj.weight,
                                          proj.bias, gamma)
        return F.conv2d(attended, weight, bias)

    def fold(self, proj: nn.Conv2d, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_t diag(gamma) W_p`` as a 1x1 convolution weight ``(K, window_dim, 1, 1)``, and ``W_t (gamma b_p)``
        ``(K,)``."""
        assert proj.bias is not None  # DSSA's output projection has a bias
        scaled = self.weight.flatten(1) * gamma.view(1, -1)  # (K, E)
        return (scaled @ proj.weight.flatten(1))[:, :, None, None], scaled @ proj.bias
