"""The checkpoints shipped with the package (``sdcpc_core/assets/<name>.safetensors``) and name lookup.

``shipped_checkpoints()`` lists their names; ``resolve_checkpoint(path_or_name)`` turns what a user
passes (a checkpoint file or folder, or a shipped name) into a path; ``shipped_name(path)`` tells whether
a path is a shipped checkpoint. ``SHIPPED_INFO`` holds what a shipped file does not say itself: its
recommended input size (the scale it was trained at) and whether it is a demo model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CHECKPOINT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ShippedInfo:
    """What is known about a shipped checkpoint beyond its file."""

    input_size: tuple[int, int] | None = None  # recommended network input (height, width)
    demo: str = ""  # non-empty: a demo model, not for a real camera; says what it is


SHIPPED_INFO: dict[str, ShippedInfo] = {
    # trained on 128x128 crops of 240x480 frames (config/train/synthetic_b0.yaml): at 256x480 it scores
    # 46.8 mIoU on a 60-frame synthetic bag against 41.2 at 480x864, for a seventh of the time
    "sdcpc_b0_synthetic": ShippedInfo((256, 480), "a demo model trained on synthetic streets, not a perception "
                                                  "model"),
}


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints shipped in ``sdcpc_core/assets`` (``<name>.safetensors``)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name[: -len(CHECKPOINT_SUFFIX)] for p in ASSETS_DIR.glob(f"*{CHECKPOINT_SUFFIX}"))


def shipped_name(path: str | os.PathLike) -> str | None:
    """The shipped name of ``path`` when it is a checkpoint shipped in ``sdcpc_core/assets``, else None."""
    path = Path(path)
    if path.suffix != CHECKPOINT_SUFFIX or not path.is_file():
        return None
    try:
        same = path.resolve().parent == ASSETS_DIR
    except OSError:
        return None
    return path.stem if same else None


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint path as given, or the file of a shipped name; ``ValueError`` for an unknown name."""
    text = os.fspath(path_or_name)
    path = Path(text)
    looks_like_path = isinstance(path_or_name, os.PathLike) or os.sep in text or "/" in text or text.endswith(
        CHECKPOINT_SUFFIX) or text.startswith(".")
    if looks_like_path or path.exists():
        return path
    shipped = ASSETS_DIR / f"{text}{CHECKPOINT_SUFFIX}"
    if shipped.is_file():
        return shipped
    names = shipped_checkpoints()
    installed = f"shipped names: {', '.join(names)}" if names else "no shipped checkpoints are installed"
    raise ValueError(f"unknown checkpoint name {text!r} ({installed}); pass the path of a checkpoint file or of "
                     "a Hugging Face SegFormer folder instead")


__all__ = ["ASSETS_DIR", "CHECKPOINT_SUFFIX", "SHIPPED_INFO", "ShippedInfo", "resolve_checkpoint",
           "shipped_checkpoints", "shipped_name"]
