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

import torch
import torch.nn.functional as F

from .fused import call_fused, register_fused_op
from .window_attention.triton import launch_options

__all__ = ["gated_upsample_add", "reference_gated_upsample_add", "upsample_gate"]

OP_NAME = "gated_upsample_add"


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
    return call_fused(OP_NAME, reference_gated_upsample_add, logits, correction, gate)


def _fake(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def triton_gated_upsample_add(logits: torch.Tensor, correction: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Launches the Triton kernel. Also runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    b, k, h, w = logits.shape
    ch, cw = correction.shape[-2:]
    gh, gw = gate.shape[-2:]
    out = torch.empty((b, k, h, w), dtype=logits.dtype, device=logits.device)
    if out.numel() == 0:
        return out
    block = 256
    from .triton_kernels import gated_upsample_add_fwd

    gated_upsample_add_fwd[(b * k, -(-(h * w) // block))](
        logits, correction, gate, out,
        k, h, w, ch, cw, gh, gw, gh / ch, gw / cw,  # the gate's scales as F.interpolate computes them for a size
        *logits.stride(), *correction.stride(), gate.stride(0), gate.stride(2), gate.stride(3), *out.stride(),
        BLOCK=block, **launch_options(4),
    )
    return out


register_fused_op(OP_NAME, reference_gated_upsample_add, triton_gated_upsample_add, _fake)
