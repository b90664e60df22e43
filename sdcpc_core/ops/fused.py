"""Fused custom ops of the temporal step's small element-wise stages: one registration pattern for all.

Each op ``sdcpc::<name>`` is registered from its plain-op reference function (which is also its kernel on
the CPU and every device without one of its own), a Triton forward for CUDA (used where ``triton`` is
importable and the tensor arguments share one dtype, float16, bfloat16 or float32) and a fake kernel for
tracing.
:func:`call_fused` is the dispatch rule the ops share: the custom op for CUDA inference while the fused
switch (``sdcpc_core.ops.window_attention.use_fused_window_attention``) allows it, the reference
elsewhere (CPU, autograd, autocast, ``torch.export``). The ops have no backward: autograd always takes the
reference, so gradients are plain autograd.

| op (module)                                  | replaces (plain ops per call) |
|----------------------------------------------|-------------------------------|
| ``difference_signals`` (``perceptual_difference``) | difference, selection scores, gate statistics (about 20) |
| ``gated_upsample_add`` (``gated_upsample``)  | gate upsampling, gating, 2x upsampling, addition (4) |
| ``upsample_add_layer_norm`` (``query_norm``) | context upsampling, addition, layer norm (3) |
| ``pooled_softmax`` (``pooled_softmax``)      | class softmax, average pooling (2) |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import window_attention as fused_switch
from .window_attention.triton import triton_available

__all__ = ["call_fused", "register_fused_op"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def register_fused_op(name: str, reference: Callable[..., Any], triton_forward: Callable[..., Any],
                      fake: Callable[..., Any]) -> None:
    """Registers ``sdcpc::name`` with ``reference`` (type-annotated: it gives the schema) as its default
    kernel, ``triton_forward`` on CUDA and ``fake`` as its fake kernel."""
    op = torch.library.custom_op(f"sdcpc::{name}", reference, mutates_args=())

    def cuda_kernel(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if tensors[0].dtype in _TRITON_DTYPES and all(t.dtype == tensors[0].dtype for t in tensors) \
                and triton_available():
            with torch.cuda.device(tensors[0].device):  # Triton launches on the current device
                return triton_forward(*args)
        return reference(*args)  # mixed dtypes: the plain ops' type promotion

    op.register_kernel("cuda")(cuda_kernel)
    op.register_fake(fake)


def call_fused(name: str, reference: Callable[..., Any], *args: Any) -> Any:
    """``torch.ops.sdcpc.<name>(*args)`` where the fused switch sends these tensors to a fused kernel
    (``fused_kernel_takes``) and no autocast region is active (training's mixed precision: there the plain
    ops keep autocast's per-operator dtypes), ``reference(*args)`` otherwise."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if fused_switch.fused_kernel_takes(*tensors) and not torch.is_autocast_enabled(tensors[0].device.type):
        return getattr(torch.ops.sdcpc, name)(*args)
    return reference(*args)
