"""Tensor operators used by the SD-CPC model (plain PyTorch, exportable).

``window_attention`` runs the plain-op reference (``.window_attention``) unless the fused switch
``use_fused_window_attention(True)`` is on and the inputs are CUDA tensors; then it calls the
custom op ``torch.ops.sdcpc.window_attention`` (a Triton kernel). See ``.window_attention_op``.
``upsample_bilinear_add_`` adds a bilinear upsampling into a map (in place on a CPU).
"""

from .upsample import upsample_bilinear_add_
from .window_attention_op import (
    fused_window_attention,
    fused_window_attention_enabled,
    register_tensorrt_plugin,
    use_fused_window_attention,
    window_attention,
)

__all__ = [
    "fused_window_attention",
    "fused_window_attention_enabled",
    "register_tensorrt_plugin",
    "upsample_bilinear_add_",
    "use_fused_window_attention",
    "window_attention",
]
