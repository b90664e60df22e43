"""Tensor operators used by the SD-CPC model (plain PyTorch, exportable).

``window_attention`` (a subpackage) is the windowed cross-frame attention; its one dispatcher,
``sdcpc_core.ops.window_attention.window_attention``, chooses between the plain-op reference, the
eager CPU in-place path, the tiled formulation of exported graphs and, for CUDA inference unless
``use_fused_window_attention(False)`` or ``SDCPC_FUSED_WINDOW=0`` turns it off, the custom op
``torch.ops.sdcpc.window_attention`` (a Triton kernel); its docstring has the table.
``upsample_bilinear_add_`` adds a bilinear upsampling into a map (in place on a CPU).
"""

from .upsample import upsample_bilinear_add_
from .window_attention import (
    fused_window_attention,
    fused_window_attention_enabled,
    use_fused_window_attention,
)

__all__ = [
    "fused_window_attention",
    "fused_window_attention_enabled",
    "upsample_bilinear_add_",
    "use_fused_window_attention",
]
