"""Renaming a foreign state dict onto our model's key names: the tools every converter shares.

A converter (``convert_*`` in :mod:`.format`, :mod:`.segformer`, :mod:`.resnet`) applies a list of
regular-expression rules to each checkpoint key, drops known heads the model has no place for, and
returns a :class:`MappedState`: the tensors under model key names, where each came from, and which
model parts the source provides.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

Rule = tuple[str, "str | Callable[[re.Match], str]"]


def stage_rule(template: str) -> Callable[[re.Match], str]:
    """Replacement for 1-based stage numbers: ``{s}`` is group 1 minus one, ``{b}`` group 2."""
    return lambda m: template.format(s=int(m[1]) - 1, b=m[2] if m.re.groups > 1 else "")


@dataclass
class MappedState:
    """A checkpoint translated to model key names."""

    format: str
    tensors: dict[str, torch.Tensor]  # model key -> tensor
    origin: dict[str, tuple[str, ...]]  # model key -> checkpoint key(s) it came from
    skipped: list[str]  # checkpoint keys of known heads the model has no place for
    provides: tuple[str, ...] | None  # model key prefixes the source provides; None: everything
    config: dict | None = None  # embedded model config (our format)


def rename(state: Mapping[str, torch.Tensor], rules: list[Rule], skip: tuple[str, ...] = ()) -> tuple[
        dict[str, torch.Tensor], dict[str, tuple[str, ...]], list[str]]:
    """``(tensors, origin, skipped)``: each key rewritten by every rule in turn (first match of each), keys
    matching a ``skip`` pattern set aside."""
    tensors, origin, skipped = {}, {}, []
    for key, tensor in state.items():
        if any(re.search(pattern, key) for pattern in skip):
            skipped.append(key)
            continue
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new, count=1)
        tensors[new], origin[new] = tensor, (key,)
    return tensors, origin, skipped


def head_provided(tensors: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The model parts a SegFormer-like source provides: the backbone, and the decode head when it has one."""
    return ("backbone.", "decode_head.") if any(k.startswith("decode_head.") for k in tensors) else ("backbone.",)


__all__ = ["MappedState", "Rule", "head_provided", "rename", "stage_rule"]
