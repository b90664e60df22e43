"""``StreamingConfig``: the settings of the streaming runtime, validated when built."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..eval.smoothing import SMOOTHING_SYNTAX, is_smoothing
from ..models.sdcpc import SIZE_MULTIPLE
from .image import OUTPUT_RESOLUTIONS, RESIZE_MODES


@dataclass(frozen=True)
class StreamingConfig:
    """Settings of ``StreamingSegmenter``; invalid values raise ``ValueError`` naming the field."""

    input_size: tuple[int, int] = (480, 864)  # network input (height, width) in pixels, each >= 32
    reference_offsets: tuple[int, ...] = (9, 6, 3)  # reference frames before the target, in frame periods
    frame_period_s: float = 1.0 / 30.0  # nominal camera frame period in seconds (30 Hz)
    max_gap_s: float = 1.0  # a larger gap between consecutive frames clears the reference buffer
    output_resolution: str = "camera"  # "camera": labels at the image size; "network": at the 1/4 logits size
    upsample_logits: bool = False  # camera output: bilinear logits to camera size before argmax (slower)
    resize_mode: str = "letterbox"  # "letterbox": keep aspect ratio and pad; "stretch": plain resize
    max_entries: int | None = None  # most frames in the reference buffer; None: max(reference_offsets) + 2
    smoothing: str = "none"  # temporal smoothing of the output probabilities: none | ema:A | window[:O1,O2,..]

    def __post_init__(self) -> None:
        try:
            size = tuple(int(v) for v in self.input_size)
            size_ok = (len(size) == 2 and all(v == s for v, s in zip(size, self.input_size))
                       and min(size) >= SIZE_MULTIPLE)
        except (TypeError, ValueError):
            size, size_ok = None, False
        try:
            offsets = tuple(sorted({int(v) for v in self.reference_offsets}, reverse=True))
            offsets_ok = len(offsets) == len(tuple(self.reference_offsets)) > 0 and min(offsets) >= 1 and all(
                int(v) == v for v in self.reference_offsets)
        except (TypeError, ValueError):
            offsets, offsets_ok = None, False
        checks = [
            ("input_size", size_ok, f"two integers (height, width), each >= {SIZE_MULTIPLE}"),
            ("reference_offsets", offsets_ok, "a non-empty list of distinct integers >= 1"),
            ("frame_period_s", _positive(self.frame_period_s), "a number of seconds > 0"),
            ("max_gap_s", _positive(self.max_gap_s), "a number of seconds > 0"),
            ("output_resolution", self.output_resolution in OUTPUT_RESOLUTIONS,
             f"one of {', '.join(OUTPUT_RESOLUTIONS)}"),
            ("upsample_logits", isinstance(self.upsample_logits, bool), "true or false"),
            ("resize_mode", self.resize_mode in RESIZE_MODES, f"one of {', '.join(RESIZE_MODES)}"),
            ("max_entries", self.max_entries is None or (
                isinstance(self.max_entries, int) and not isinstance(self.max_entries, bool) and self.max_entries >= 1),
             "an integer >= 1 or null (automatic)"),
            ("smoothing", is_smoothing(self.smoothing), SMOOTHING_SYNTAX),
        ]
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"StreamingConfig.{name} must be {accepted}, got {getattr(self, name)!r}")
        if self.upsample_logits and self.output_resolution != "camera":
            raise ValueError("StreamingConfig.upsample_logits applies to output_resolution 'camera' only, got "
                             f"output_resolution {self.output_resolution!r}; set upsample_logits to false")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "reference_offsets", offsets)  # farthest first

    @property
    def entries_limit(self) -> int:
        """``max_entries`` or its automatic value ``max(reference_offsets) + 2``."""
        return self.max_entries if self.max_entries is not None else max(self.reference_offsets) + 2

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


__all__ = ["StreamingConfig"]
