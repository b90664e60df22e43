"""DSSA's stage-2 query: ``LayerNorm_channels(features + up(context))``, with one dispatcher and a fused CUDA kernel.

Stage 1's coarse context (1/32) is upsampled bilinearly (align_corners=False) to the features' grid
(1/8), added to them and normalised over channels; the window attention's query projection follows.
:func:`upsample_add_layer_norm` computes it:

| call (the first row that matches)                            | formulation                                        |
|--------------------------------------------------------------|----------------------------------------------------|
| CUDA, fused switch automatic or on, no autograd, no export   | ``sdcpc::upsample_add_layer_norm``: one kernel     |
| otherwise (CPU, autograd, ``torch.export``, switch off)      | ``reference_upsample_add_layer_norm``: three ops   |

The result is channels-last in memory (``(B, C, H, W)`` with channel stride 1), as ``LayerNorm2d``
gives it, for either formulation. The fused switch is the window attention's
(``sdcpc_core.ops.window_attention``); see ``sdcpc_core.ops.fused``. Both agree within float rounding
(tested, the kernel also under Triton's interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused import call_fused, register_fused_op
from .window_attention.triton import launch_options, next_power_of_2

__all__ = ["reference_upsample_add_layer_norm", "upsample_add_layer_norm"]

OP_NAME = "upsample_add_layer_norm"


def reference_upsample_add_layer_norm(context: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
                                      bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain tensor ops: context ``(B, C, h, w)``, features ``(B, C, H, W)``, the norm's ``weight`` and ``bias``
    ``(C,)`` -> ``(B, C, H, W)`` channels-last."""
    # context arrives channels-last (from tokens); on CPU, copying it to NCHW first makes the upsampling
    # 2.5x faster (6 against 15 ms for 256 channels, 1/32 -> 1/8 of 512x1024, copy included)
    size = (features.shape[-2], features.shape[-1])
    query = F.interpolate(context.contiguous(), size=size, mode="bilinear", align_corners=False).add_(features)
    return F.layer_norm(query.permute(0, 2, 3, 1), (query.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)


def upsample_add_layer_norm(context: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``reference_upsample_add_layer_norm``'s result; which formulation runs: the module's table."""
    return call_fused(OP_NAME, reference_upsample_add_layer_norm, context, features, weight, bias, eps)


def _channels_last_like(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    return features.new_empty((b, h, w, c)).permute(0, 3, 1, 2)


def _fake(context: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
          eps: float) -> torch.Tensor:
    return _channels_last_like(features)


def triton_upsample_add_layer_norm(context: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Launches the Triton kernel. Also runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    from .triton_kernels import upsample_add_layer_norm_fwd

    b, c, h, w = features.shape
    ch, cw = context.shape[-2:]
    out = _channels_last_like(features)
    if out.numel() == 0:
        return out
    block_e = max(16, next_power_of_2(c))
    block_p = max(1, min(64, 4096 // block_e))
    upsample_add_layer_norm_fwd[(-(-(h * w) // block_p), b)](
        context, features, weight, bias, out,
        c, h, w, ch, cw, ch / h, cw / w, float(eps),  # the scales as F.interpolate computes them for a size
        *context.stride(), *features.stride(), *out.stride(),
        BLOCK_P=block_p, BLOCK_E=block_e, **launch_options(4),
    )
    return out


register_fused_op(OP_NAME, reference_upsample_add_layer_norm, triton_upsample_add_layer_norm, _fake)
