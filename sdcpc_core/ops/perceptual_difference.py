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

from . import window_attention as fused_switch
from .window_attention.triton import launch_options, next_power_of_2, triton_available

__all__ = ["difference_signals", "perceptual_difference", "reference_difference_signals", "selection_scores"]

OP_NAME = "sdcpc::difference_signals"
EPS = 1e-6  # probabilities are clamped to this before the entropies (log 0)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
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
    if fused_switch.fused_kernel_takes(target_probs, ref_probs, gate_weight, gate_bias):
        scores, gate = torch.ops.sdcpc.difference_signals(target_probs, ref_probs, gate_weight, gate_bias)
        return scores, gate
    return reference_difference_signals(target_probs, ref_probs, gate_weight, gate_bias)


# ------------------------------------------------------------------------------ the custom op
@torch.library.custom_op(OP_NAME, mutates_args=())
def _difference_signals_op(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Default kernel (CPU and every device without its own kernel): the plain tensor ops."""
    return reference_difference_signals(target_probs, ref_probs, gate_weight, gate_bias)


@_difference_signals_op.register_kernel("cuda")
def _difference_signals_cuda(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if target_probs.dtype in _TRITON_DTYPES and triton_available():
        return triton_difference_signals(target_probs, ref_probs, gate_weight, gate_bias)
    return reference_difference_signals(target_probs, ref_probs, gate_weight, gate_bias)


@_difference_signals_op.register_fake
def _difference_signals_fake(
    target_probs: torch.Tensor, ref_probs: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    b, r, _, h, w = ref_probs.shape
    return (target_probs.new_empty((b, r * h * w), dtype=torch.float32), target_probs.new_empty((b, 1, h, w)))


# ------------------------------------------------------------------------------ Triton kernel
@functools.cache
def _triton_kernel():
    """Builds the ``@triton.jit`` kernel on first use (so importing this module never imports triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def difference_signals_fwd(
        Target, Refs, GateW, GateB, TieBreak, Scores, Gate,
        K, HW,
        st_b, st_k, st_p, sr_b, sr_r, sr_k, sr_p, ss_b, sg_b,
        eps, inv_ln2,
        R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # One program per (block of positions, batch item); the classes of a position are one row of the tile.
        pid_p = tl.program_id(0)
        b = tl.program_id(1)
        pos = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = pos < HW
        k = tl.arange(0, BLOCK_K)
        mask = p_ok[:, None] & (k < K)[None, :]
        # Padding reads 1.0, whose entropy term is 0: padded classes and positions add nothing.
        p = tl.load(Target + b * st_b + k[None, :] * st_k + pos[:, None] * st_p, mask=mask, other=1.0)
        p = tl.maximum(p.to(tl.float32), eps)
        h_target = tl.sum(-p * tl.log(p), axis=1)
        total = tl.zeros([BLOCK_P], tl.float32)
        largest = tl.zeros([BLOCK_P], tl.float32)  # differences are >= 0
        for r in tl.static_range(R):
            q = tl.load(Refs + b * sr_b + r * sr_r + k[None, :] * sr_k + pos[:, None] * sr_p, mask=mask, other=1.0)
            q = tl.maximum(q.to(tl.float32), eps)
            h_ref = tl.sum(-q * tl.log(q), axis=1)
            m = q - (q - p) * 0.5  # torch.lerp(p, q, 0.5)
            h_mix = tl.sum(-m * tl.log(m), axis=1)
            js = h_mix - (h_ref - (h_ref - h_target) * 0.5)
            d = tl.minimum(tl.maximum(js * inv_ln2, 0.0), 1.0)
            tie = tl.load(TieBreak + r * HW + pos, mask=p_ok, other=0.0)
            tl.store(Scores + b * ss_b + r * HW + pos, tl.floor(d * 256.0) * (1.0 / 256.0) + tie, mask=p_ok)
            total += d
            largest = tl.maximum(largest, d)
        w_mean = tl.load(GateW).to(tl.float32)
        w_max = tl.load(GateW + 1).to(tl.float32)
        logit = w_mean * (total / R) + w_max * largest + tl.load(GateB).to(tl.float32)
        tl.store(Gate + b * sg_b + pos, tl.sigmoid(logit).to(Gate.dtype.element_ty), mask=p_ok)

    return difference_signals_fwd


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
    _triton_kernel()[grid](
        target, refs, gate_weight.reshape(2), gate_bias.reshape(1), tie_break(r, h * w, target.device), scores, gate,
        k, h * w,
        *target.stride(), *refs.stride(), scores.stride(0), gate.stride(0),
        EPS, 1.0 / math.log(2.0),
        R=int(r), BLOCK_P=block_p, BLOCK_K=block_k, **launch_options(4),
    )
    return scores, gate
