"""The temporal step's last stage: ``logits + crop(up2(up4(gate) * correction))``, with one dispatcher and a
fused CUDA kernel.

The temporal classifier gives a class correction at 1/8 that the difference gate (at 1/32) weighs per
position; the weighted correction is upsampled to the logits' 1/4 grid (bilinear, align_corners=False,
as ``F.interpolate``), cropped to the logits' size and added. :func:`gated_upsample_add` computes it:

| call (the first row that matches)                            | formulation                                   |
|--------------------------------------------------------------|-----------------------------------------------|
| CUDA, fused switch automatic or on, no autograd, no export   | ``sdcpc::gated_upsample_add``: one kernel     |
| otherwise (CPU, autograd, ``torch.export``, switch off)      | ``reference_gated_upsample_add``: four ops    |

The kernel reads each output's four 1/8 taps and their gate values (interpolated from 1/32 on the fly)
and writes the result once; the plain form is two upsamplings, a product and a sum, each a pass over a
full-size map. The fused switch is the window attention's (``sdcpc_core.ops.window_attention``). Both
agree within float rounding (tested, the kernel also under Triton's interpreter).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import window_attention as fused_switch
from .window_attention.triton import launch_options, triton_available

__all__ = ["gated_upsample_add", "reference_gated_upsample_add", "upsample_gate"]

OP_NAME = "sdcpc::gated_upsample_add"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def upsample_gate(gate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The gate ``(B, 1, h, w)`` at ``size`` (bilinear, align_corners=False)."""
    return F.interpolate(gate, size=size, mode="bilinear", align_corners=False)


def reference_gated_upsample_add(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Plain tensor ops: logits ``(B, K, H, W)``, correction ``(B, K, h, w)`` with ``H <= 2h``, ``W <= 2w``,
    gate ``(B, 1, h', w')`` -> ``logits + up2(upsample_gate(gate, (h, w)) * correction)[..., :H, :W]``."""
    weighted = correction * upsample_gate(gate, (correction.shape[-2], correction.shape[-1]))
    up = F.interpolate(weighted, scale_factor=2.0, mode="bilinear", align_corners=False)
    return logits + up[..., :logits.shape[-2], :logits.shape[-1]]


def gated_upsample_add(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``reference_gated_upsample_add``'s result (a new tensor); which formulation runs: the module's table."""
    if fused_switch.fused_kernel_takes(logits, correction, gate):
        return torch.ops.sdcpc.gated_upsample_add(logits, correction, gate)
    return reference_gated_upsample_add(logits, correction, gate)


# ------------------------------------------------------------------------------ the custom op
@torch.library.custom_op(OP_NAME, mutates_args=())
def _gated_upsample_add_op(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Default kernel (CPU and every device without its own kernel): the plain tensor ops."""
    return reference_gated_upsample_add(logits, correction, gate)


@_gated_upsample_add_op.register_kernel("cuda")
def _gated_upsample_add_cuda(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    if logits.dtype in _TRITON_DTYPES and triton_available():
        return triton_gated_upsample_add(logits, correction, gate)
    return reference_gated_upsample_add(logits, correction, gate)


@_gated_upsample_add_op.register_fake
def _gated_upsample_add_fake(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------ Triton kernel
@functools.cache
def _triton_kernel():
    """The ``@triton.jit`` kernel, imported on first use (so importing this module never imports triton)."""
    from .gated_upsample_kernel import gated_upsample_add_fwd

    return gated_upsample_add_fwd


def triton_gated_upsample_add(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Launches the Triton kernel. Also runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    b, k, h, w = logits.shape
    ch, cw = correction.shape[-2:]
    gh, gw = gate.shape[-2:]
    out = torch.empty((b, k, h, w), dtype=logits.dtype, device=logits.device)
    if out.numel() == 0:
        return out
    block = 256
    _triton_kernel()[(-(-(h * w) // block), b * k)](
        logits, correction, gate, out,
        k, h, w, ch, cw, gh, gw, gh / ch, gw / cw,  # the gate's scales as F.interpolate computes them for a size
        *logits.stride(), *correction.stride(), gate.stride(0), gate.stride(2), gate.stride(3), *out.stride(),
        BLOCK=block, **launch_options(4),
    )
    return out
