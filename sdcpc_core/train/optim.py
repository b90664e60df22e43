"""Optimiser and learning-rate schedule of the SegFormer / VSS-peer protocol (spec section 2).

* AdamW over four parameter groups: backbone or head (everything outside ``backbone.``: decode
  head, SSEA, DSSA, temporal classifier, projector; learning rate x ``head_lr_mult``), each with or
  without weight decay. No decay on normalisation layers (LayerNorm, BatchNorm, GroupNorm, found by
  module type) and position embeddings (parameters named ``pos_block``, ``pos_embed`` or
  ``token_embed``, SSEA's per-level/grid token embedding), as mmseg's ``custom_keys`` do. A part
  named in ``optim.part_lr_mult`` (e.g. ``{backbone: 0.1, decode_head: 1.0}``) gets groups of its own
  with that factor instead.
* :func:`freeze_parts` (``model.freeze``): a frozen part's parameters get ``requires_grad=False`` (so
  no optimiser group holds them and the backward pass skips them), and :func:`set_frozen_eval` keeps
  its modules in eval mode, so that batch-norm running statistics (the decode head's) and dropout
  stay as loaded: frozen means the part computes exactly what it computed before training.
* :class:`PolyWarmupLR`: poly decay ``(1 - t/T)^power`` from the base rate to ``min_lr``, times a
  linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` steps (mmseg's ``linear`` warm-up).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .config import OptimSection, ScheduleSection

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
POSITION_NAMES = ("pos_block", "pos_embed", "token_embed")
BACKBONE_PREFIX = "backbone."


def parameter_groups(model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float,
                     part_lr_mult: Mapping[str, float] | None = None) -> list[dict]:
    """AdamW groups ``{name, params, lr, lr_mult, weight_decay}`` (empty groups left out), in a fixed order:
    backbone, head, then the parts of ``part_lr_mult`` (top-level module names) in the model's order."""
    part_lr_mult = dict(part_lr_mult or {})
    norm_parameters = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = name.split(".", 1)[0]
        group = part if part in part_lr_mult else "backbone" if name.startswith(BACKBONE_PREFIX) else "head"
        decay = id(parameter) not in norm_parameters and not any(key in name for key in POSITION_NAMES)
        groups.setdefault((group, decay), []).append(parameter)
    factors = {"backbone": 1.0, "head": head_lr_mult, **part_lr_mult}
    result = []
    for group, mult in factors.items():
        for decay in (True, False):
            params = groups.get((group, decay))
            if params:
                result.append({"name": f"{group}{'' if decay else '_no_decay'}", "params": params, "lr": lr * mult,
                               "lr_mult": mult, "weight_decay": weight_decay if decay else 0.0})
    return result


def freeze_parts(model: nn.Module, parts: Sequence[str]) -> list[nn.Module]:
    """Stops the training of the top-level modules ``parts`` of ``model`` (``requires_grad=False``) and puts
    them in eval mode; returns them for :func:`set_frozen_eval`. ``ValueError`` for a part the model lacks."""
    modules = []
    for part in parts:
        module = getattr(model, part, None)
        if not isinstance(module, nn.Module):
            children = ", ".join(name for name, _ in model.named_children())
            raise ValueError(f"cannot freeze {part!r}: the model has no such part; its parts: {children}")
        module.requires_grad_(False)
        modules.append(module)
    set_frozen_eval(modules)
    return modules


def set_frozen_eval(modules: Sequence[nn.Module]) -> None:
    """Eval mode for the frozen ``modules`` (after ``model.train()``, which would switch them back)."""
    for module in modules:
        module.eval()


def build_optimizer(model: nn.Module, config: OptimSection) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`."""
    groups = parameter_groups(model, config.lr, config.head_lr_mult, config.weight_decay, config.part_lr_mult)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay)


def lr_factor(step: int, schedule: ScheduleSection, base_lr: float) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based) relative to each group's base rate."""
    progress = min(step, schedule.iterations) / schedule.iterations
    floor = schedule.min_lr / base_lr
    factor = (1.0 - floor) * (1.0 - progress) ** schedule.power + floor
    if step < schedule.warmup_iters:
        factor *= 1.0 - (1.0 - step / schedule.warmup_iters) * (1.0 - schedule.warmup_ratio)
    return factor


class PolyWarmupLR(LRScheduler):
    """Each group's rate is its initial rate times :func:`lr_factor` of the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleSection, base_lr: float,
                 last_epoch: int = -1) -> None:
        self.schedule = schedule
        self.base_lr = base_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.last_epoch, self.schedule, self.base_lr)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        """Plain values only (the schedule section is rebuilt from the configuration)."""
        return {k: v for k, v in super().state_dict().items() if k != "schedule"}


__all__ = ["BACKBONE_PREFIX", "PolyWarmupLR", "build_optimizer", "freeze_parts", "lr_factor", "parameter_groups",
           "set_frozen_eval"]
