"""Which formulation an operator takes: the in-place CPU ones serve eager inference only."""

from __future__ import annotations

import torch

__all__ = ["eager_cpu_inference"]


def eager_cpu_inference(*tensors: torch.Tensor) -> bool:
    """True for eager CPU calls without autograd: there the operators write into preallocated or
    existing tensors (in-place formulations, faster on a CPU). Tracing and compiling (``torch.export``,
    ``torch.compile``), autograd and other devices get the plain-op formulations (same results, tested)."""
    if torch.compiler.is_compiling() or any(t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
