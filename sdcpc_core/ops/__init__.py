"""Tensor operators used by the SD-CPC model (plain PyTorch, exportable)."""

from .window_attention import window_attention

__all__ = ["window_attention"]
