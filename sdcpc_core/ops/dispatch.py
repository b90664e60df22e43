"""Which formulation an operator takes: the in-place CPU ones serve eager inference only."""

from __future__ import annotations

import torch

__all__ = ["builds_autograd_graph", "eager_cpu_inference", "traced"]


def traced() -> bool:
    """Whether the code runs under ``torch.compile`` or ``torch.export`` (graphs, not eager calls)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def builds_autograd_graph(*tensors: torch.Tensor) -> bool:
    """Whether an operator on these tensors records autograd history (gradients on, an input requiring them)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def eager_cpu_inference(*tensors: torch.Tensor) -> bool:
    """True for eager CPU calls without autograd: there the operators write into preallocated or
    existing tensors (in-place formulations, faster on a CPU). Tracing and compiling (``torch.export``,
    ``torch.compile``), autograd and other devices get the plain-op formulations (same results, tested)."""
    if torch.compiler.is_compiling() or any(t.device.type != "cpu" for t in tensors):
        return False
    return not builds_autograd_graph(*tensors)
