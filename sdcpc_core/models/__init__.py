"""SD-CPC models: ``build_model(variant, num_classes, **overrides)`` and the model parts.

Variants: ``sdcpc_b0``..``sdcpc_b5`` (MiT), ``sdcpc_r101`` (dilated ResNet-101, output stride 8)
and the per-frame baselines ``segformer_b0``..``segformer_b5`` (same modules, temporal part off;
decoder width 256 for B0/B1 and 768 for B2..B5, as in the released SegFormer weights).
"""
from __future__ import annotations

from dataclasses import replace

from ..options import check_names
from .sdcpc import SDCPC, ClipOutput, FrameCache, SDCPCConfig

_MIT = ("b0", "b1", "b2", "b3", "b4", "b5")

VARIANTS: dict[str, dict] = {
    **{f"sdcpc_{v}": {"backbone": f"mit_{v}"} for v in _MIT},
    "sdcpc_r101": {"backbone": "resnet101"},
    **{
        f"segformer_{v}": {"backbone": f"mit_{v}", "temporal": False, "embed_dim": 256 if v in ("b0", "b1") else 768}
        for v in _MIT
    },
}


def list_models() -> list[str]:
    return list(VARIANTS)


def model_config(variant: str, num_classes: int, **overrides) -> SDCPCConfig:
    """The ``SDCPCConfig`` of a named variant with ``overrides`` applied (validated)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    valid = [name for name in SDCPCConfig.field_names() if name not in ("backbone", "num_classes")]
    check_names(overrides, valid, "model option", valid_label="valid options")
    if "ssea_grids" in overrides:
        overrides["ssea_grids"] = tuple(overrides["ssea_grids"])
    config = SDCPCConfig(num_classes=num_classes, **VARIANTS[variant])
    return replace(config, **overrides)


def build_model(variant: str, num_classes: int, **overrides) -> SDCPC:
    """Builds a named variant, e.g. ``build_model("sdcpc_b1", 124, window=9)``."""
    return SDCPC(model_config(variant, num_classes, **overrides))


__all__ = ["SDCPC", "SDCPCConfig", "FrameCache", "ClipOutput", "VARIANTS", "build_model", "list_models",
           "model_config"]
