"""DSSA's class-level signals from the frames' class probabilities: the perceptual difference, the
stage-1 selection scores and the difference gate, with one dispatcher and a fused CUDA kernel.

Per reference frame r the *static perceptual difference* d_r is the Jensen-Shannon divergence between
the target's and the reference's class probabilities, divided by ln 2 so that it lies in [0, 1]. It
ranks the reference tokens for stage 1 (``selection_scores``) and sets the gate
``sigmoid(w_mean * mean_r d_r + w_max * max_r d_r + b)``. :func:`difference_signals` computes both:

| call (the first row that matches)                            | formulation                                 |
|--------------------------------------------------------------|---------------------------------------------|
| CUDA, fused switch automatic or on, no autograd, no export   | ``sdcpc::difference_signals``: one kernel   |
| otherwise (CPU, autograd, ``torch.export``, switch off)      | ``reference_difference_signals``: plain ops |

On a GPU at batch 1 the plain form is about twenty small kernels (entropies, mixtures, reductions,
quantisation, gate statistics) over maps of a few hundred positions, so launches, not arithmetic, set
its cost; the kernel reads each probability once. The fused switch is the window attention's
(``sdcpc_core.ops.window_attention.use_fused_window_attention``, ``SDCPC_FUSED_WINDOW``): it governs
every fused kernel of the temporal step. Both formulations agree within float rounding (tested, the
kernel also under Triton's interpreter); the kernel's scores are float32 whatever the input dtype.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .dispatch import traced
from .fused import call_fused, register_fused_op
from .window_attention.triton import launch_options, next_power_of_2

__all__ = ["difference_signals", "perceptual_difference", "reference_difference_signals", "selection_scores"]

OP_NAME = "difference_signals"
EPS = 1e-6  # probabilities are clamped to this before the entropies (log 0)


def perceptual_difference(target_probs: torch.Tensor, ref_probs: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Jensen-Shannon divergence / ln 2, in [0, 1].

    target_probs: ``(B, K, h, w)``; ref_probs: ``(B, R, K, h, w)``; returns ``(B, R, h, w)``.
    Computed as ``H(m) - (H(p) + H(q)) / 2`` with ``m = (p + q) / 2`` and the entropies ``H`` over
    classes (equal to the two KL terms for any positive p, q): the target's entropy is taken once for
    all references, and each term is one element-wise operator and one reduction.
    """
    probs = torch.cat([target_probs.unsqueeze(1), ref_probs], dim=1).clamp_min_(eps)  # (B, 1 + R, K, h, w)
    entropy = torch.special.entr(probs).sum(2)  # (B, 1 + R, h, w)
    mixture = torch.special.entr(torch.lerp(probs[:, :1], probs[:, 1:], 0.5)).sum(2)  # (B, R, h, w)
    js = mixture - torch.lerp(entropy[:, :1], entropy[:, 1:], 0.5)
    return js.mul_(1.0 / math.log(2.0)).clamp_(0.0, 1.0)


def selection_scores(difference: torch.Tensor) -> torch.Tensor:
    """Stage-1 ranking ``(B, R*h*w)`` float32: difference quantised to 1/256 plus a static tie-breaker.

    Quantising makes the choice insensitive to float noise (a batched clip and a streamed frame
    select the same tokens); the tie-breaker (< 1/256) prefers newer references, then earlier
    positions, so equal differences (e.g. duplicated frames at a cold start) rank deterministically
    in PyTorch and TensorRT alike. Its steps of 1/(256 n) stay above float32 resolution near 1.0
    for up to n = 32768 reference tokens (3 references of 1/32 maps up to 1080x1920 need 6120);
    half precision could not hold them, so the scores are float32.
    """
    flat = difference.flatten(1).float()
    return torch.floor(flat * 256.0).mul_(1.0 / 256.0).add_(tie_break(difference.shape[1], difference.shape[2]
                                                                      * difference.shape[3], flat.device))


def tie_break(r: int, hw: int, device: torch.device) -> torch.Tensor:
    """``(R*hw,)`` float32 tie-breakers of ``selection_scores``, in ``[0, 1/256)``: newer references, then
    earlier positions. A constant of the input size, built once (traced code builds it in the graph)."""
    if traced():
        return _tie_break(r, hw, device)
    return _cached_tie_break(r, hw, device)


def _tie_break(r: int, hw: int, device: torch.device) -> torch.Tensor:
    ref_index = torch.arange(r, device=device, dtype=torch.float32).repeat_interleave(hw)
    position = torch.arange(hw, device=device, dtype=torch.float32).repeat(r)
    return (ref_index * hw + (hw - 1 - position)) / (r * hw * 256.0)


@functools.lru_cache(maxsize=16)
def _cached_tie_break(r: int, hw: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _tie_break(r, hw, device)


def reference_difference_signals(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain tensor ops: target_probs ``(B, K, h, w)``, ref_probs ``(B, R, K, h, w)``, the gate's 1x1
    convolution ``(1, 2, 1, 1)`` and bias ``(1,)`` -> selection scores ``(B, R*h*w)`` float32 and gate
    ``(B, 1, h, w)``."""
    difference = perceptual_difference(target_probs, ref_probs)
    stats = torch.cat([difference.mean(1, keepdim=True), difference.amax(1, keepdim=True)], dim=1)
    return selection_scores(difference), torch.sigmoid(F.conv2d(stats, gate_weight, gate_bias))


def difference_signals(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection scores ``(B, R*h*w)`` float32 and gate ``(B, 1, h, w)`` (see ``reference_difference_signals``
    for the arguments); which formulation runs: the table in the module docstring."""
    return call_fused(OP_NAME, reference_difference_signals, target_probs, ref_probs, gate_weight, gate_bias)


def _fake(target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    b, r, _, h, w = ref_probs.shape
    return (target_probs.new_empty((b, r * h * w), dtype=torch.float32), target_probs.new_empty((b, 1, h, w)))


def triton_difference_signals(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the Triton kernel. Also runs on CPU tensors under ``TRITON_INTERPRET=1``.

    The probabilities' spatial dims must be flattenable to one stride (any contiguous map is)."""
    b, r, k, h, w = ref_probs.shape
    target = target_probs.flatten(2)  # (B, K, HW)
    refs = ref_probs.flatten(3)  # (B, R, K, HW)
    scores = torch.empty((b, r * h * w), dtype=torch.float32, device=target_probs.device)
    gate = torch.empty((b, 1, h, w), dtype=target_probs.dtype, device=target_probs.device)
    if scores.numel() == 0:
        return scores, gate
    block_k = max(16, next_power_of_2(k))
    block_p = max(1, min(64, 4096 // block_k))
    grid = (-(-(h * w) // block_p), b)
    from .triton_kernels import difference_signals_fwd

    difference_signals_fwd[grid](
        target, refs, gate_weight.reshape(2), gate_bias.reshape(1), tie_break(r, h * w, target.device), scores, gate,
        k, h * w,
        *target.stride(), *refs.stride(), scores.stride(0), gate.stride(0),
        EPS, 1.0 / math.log(2.0),
        R=int(r), BLOCK_P=block_p, BLOCK_K=block_k, **launch_options(4),
    )
    return scores, gate


register_fused_op(OP_NAME, reference_difference_signals, triton_difference_signals, _fake)
