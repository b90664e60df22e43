"""Class lists: id, name and display colour of every class a model predicts.

A class list comes from a YAML file (the shipped ones are in ``sdcpc_core/assets/classes``:
``cityscapes``, ``camvid``, ``vspw``) or from a checkpoint, which carries its own list in the
safetensors metadata key ``classes`` (JSON, see ``ClassList.to_json``)::

    dataset: cityscapes
    ignore_id: 255
    classes:
      - {id: 0, name: road, color: [128, 64, 128]}
      ...

Ids are the train ids ``0..N-1`` in order; ``ignore_id`` marks pixels without a label.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_LISTS_DIR = Path(__file__).resolve().parent / "assets" / "classes"
IGNORE_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class ClassInfo:
    """One class: train id, name, display colour (R, G, B in 0..255)."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassList:
    """The ordered classes of a model or data set; ``classes[i].id == i``."""

    classes: tuple[ClassInfo, ...]
    ignore_id: int = 255
    dataset: str = ""

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("a class list needs at least one class")
        for position, info in enumerate(self.classes):
            if info.id != position:
                raise ValueError(f"class ids must be 0..{len(self.classes) - 1} in order; entry {position} "
                                 f"({info.name!r}) has id {info.id}")
            if len(info.color) != 3 or not all(0 <= c <= 255 for c in info.color):
                raise ValueError(f"class {info.name!r}: color must be three integers in 0..255, got {info.color}")
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        if 0 <= self.ignore_id < len(self.classes):
            raise ValueError(f"ignore_id {self.ignore_id} collides with a class id (0..{len(self.classes) - 1})")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index(self, name: str) -> int:
        """The id of the class called ``name``; ``KeyError`` listing the names otherwise."""
        for info in self.classes:
            if info.name == name:
                return info.id
        raise KeyError(f"unknown class {name!r}; classes: {', '.join(self.names)}")

    def palette(self, size: int = 256) -> np.ndarray:
        """``(size, 3)`` uint8 lookup table: class colours, black for every other value."""
        table = np.zeros((max(size, len(self.classes)), 3), np.uint8)
        table[: len(self.classes)] = [c.color for c in self.classes]
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """``(H, W)`` integer class ids -> ``(H, W, 3)`` uint8 RGB image (ignore and unknown ids black)."""
        table = self.palette(65536 if labels.dtype == np.uint16 else 256)
        if labels.dtype not in (np.uint8, np.uint16):
            labels = np.clip(labels, 0, len(table) - 1).astype(np.int64)
        return table[labels]

    # ----------------------------------------------------------------------------- (de)serialising
    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "ignore_id": self.ignore_id,
                "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict, source: str = "class list") -> ClassList:
        """Builds a list from the YAML / JSON structure; ``ValueError`` naming ``source`` when malformed."""
        try:
            entries = data["classes"]
            classes = tuple(ClassInfo(int(e["id"]), str(e["name"]), tuple(int(c) for c in e["color"]))
                            for e in entries)
            return cls(classes, int(data.get("ignore_id", 255)), str(data.get("dataset", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source} is not a valid class list (expected 'classes': a list of "
                             f"{{id, name, color: [r, g, b]}}; {type(error).__name__}: {error})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "class list") -> ClassList:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid JSON ({error})") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClassList:
        """Reads a class-list YAML file; ``FileNotFoundError`` / ``ValueError`` naming the file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"class list file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a class list (expected a mapping with a 'classes' key)")
        return cls.from_dict(data, str(path))

    @classmethod
    def shipped(cls, name: str) -> ClassList:
        """A class list shipped with the package: ``cityscapes``, ``camvid`` or ``vspw``."""
        path = CLASS_LISTS_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown class list {name!r}; shipped: {', '.join(shipped_class_lists())}")
        return cls.from_yaml(path)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> ClassList:
        """A shipped name or the path of a YAML file."""
        text = os.fspath(name_or_path)
        if text in shipped_class_lists():
            return cls.shipped(text)
        return cls.from_yaml(text)

    @classmethod
    def generic(cls, num_classes: int) -> ClassList:
        """``class_0 .. class_{n-1}`` with distinct colours, for checkpoints that carry no list."""
        colors = _distinct_colors(num_classes)
        ignore_id = 255 if num_classes <= 255 else 65535  # mono16 label images above 255 classes
        return cls(tuple(ClassInfo(i, f"class_{i}", colors[i]) for i in range(num_classes)), ignore_id)


def shipped_class_lists() -> list[str]:
    return sorted(p.stem for p in CLASS_LISTS_DIR.glob("*.yaml"))


def _distinct_colors(count: int) -> list[tuple[int, int, int]]:
    """Hues stepped by the golden ratio; deterministic."""
    import colorsys

    colors = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3) / 2)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


__all__ = ["CLASS_LISTS_DIR", "ClassInfo", "ClassList", "shipped_class_lists"]
