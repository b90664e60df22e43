"""torchvision ResNet state dicts (``conv1``, ``bn1``, ``layer1..4``, ``fc``) onto ``backbone.*`` of ``sdcpc_r101``.

The ImageNet classifier ``fc.*`` has no place in the model and is skipped.
"""
from __future__ import annotations

from collections.abc import Mapping

from .keymap import MappedState, Rule, rename

RESNET_RULES: list[Rule] = [(r"^(conv1|bn1|layer[1-4])\.", r"backbone.\1.")]
RESNET_SKIP = (r"^fc\.",)


def convert_resnet(state: Mapping) -> MappedState:
    """A torchvision ResNet state dict in model key names (backbone only)."""
    tensors, origin, skipped = rename(state, RESNET_RULES, RESNET_SKIP)
    return MappedState("torchvision ResNet (backbone only)", tensors, origin, skipped, ("backbone.",))


__all__ = ["RESNET_RULES", "RESNET_SKIP", "convert_resnet"]
