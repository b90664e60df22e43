"""The class probabilities a frame leaves for DSSA: ``avg_pool(softmax_classes(logits), pool)``, with one
dispatcher and a fused CUDA kernel.

| call (the first row that matches)                            | formulation                               |
|--------------------------------------------------------------|-------------------------------------------|
| CUDA, fused switch automatic or on, no autograd, no export   | ``sdcpc::pooled_softmax``: one kernel     |
| otherwise (CPU, autograd, ``torch.export``, switch off)      | ``reference_pooled_softmax``: two ops     |

The kernel reads each logit once and writes only the pooled map; the plain form writes the full-size
probabilities in between. The fused switch is the window attention's; see ``sdcpc_core.ops.fused``.
Both agree within float rounding (tested, the kernel also under Triton's interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused import call_fused, register_fused_op
from .window_attention.triton import launch_options, next_power_of_2

__all__ = ["pooled_softmax", "reference_pooled_softmax"]

OP_NAME = "pooled_softmax"


def reference_pooled_softmax(logits: torch.Tensor, pool: int) -> torch.Tensor:
    """Plain tensor ops: logits ``(B, K, H, W)``, H and W multiples of ``pool`` -> ``(B, K, H/pool, W/pool)``."""
    return F.avg_pool2d(logits.softmax(dim=1), pool)


def pooled_softmax(logits: torch.Tensor, pool: int) -> torch.Tensor:
    """``reference_pooled_softmax``'s result; which formulation runs: the module's table."""
    return call_fused(OP_NAME, reference_pooled_softmax, logits, pool)


def _fake(logits: torch.Tensor, pool: int) -> torch.Tensor:
    b, k, h, w = logits.shape
    return logits.new_empty((b, k, h // pool, w // pool))


def triton_pooled_softmax(logits: torch.Tensor, pool: int) -> torch.Tensor:
    """Launches the Triton kernel (``pool`` a power of two). Also runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    from .triton_kernels import pooled_softmax_fwd

    if pool & (pool - 1):
        return reference_pooled_softmax(logits, pool)
    out = _fake(logits, pool)
    b, k, oh, ow = out.shape
    if out.numel() == 0:
        return out
    pooled_softmax_fwd[(oh * ow, b)](
        logits, out, k, ow, *logits.stride(), *out.stride(),
        POOL=int(pool), BLOCK_K=max(16, next_power_of_2(k)), **launch_options(4),
    )
    return out


register_fused_op(OP_NAME, reference_pooled_softmax, triton_pooled_softmax, _fake)
