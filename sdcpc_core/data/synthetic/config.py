"""``SyntheticConfig``: every knob of the generator, validated when it is built, and read from YAML."""
from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CORRUPTIONS = ("noise", "blur", "flicker", "occlusion", "drop")
FRONTAGES = ("building", "hedge", "wall", "fence", "open")
MAX_SIDE = 4096  # frame sides in pixels: beyond it one frame and its label maps take gigabytes to render


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; invalid values raise ``ValueError`` naming the field.

    Ranges ``(low, high)`` are drawn from uniformly per video (or per object / event). The defaults
    are the distribution the shipped model was trained on; the scene light (``brightness``,
    ``contrast``, ``color_cast``) and ``vignetting`` default to no change at all, so every existing
    seed renders bit-identically. ``config/synthetic/shifted.yaml`` is a distribution-shifted preset.
    """

    height: int = 240  # image height in pixels (16..4096)
    width: int = 480  # image width in pixels (16..4096)
    fps: float = 30.0  # frame rate in Hz: motion per frame and stamps follow it
    num_frames: int = 300  # frames per video, dropped frames included (>= 1)
    stamp_jitter_ms: float = 0.0  # each stamp moves by up to +- this many ms (< half a frame period)
    hfov_deg: float = 80.0  # horizontal field of view in degrees (20..150)
    camera_height: float = 1.5  # camera height above the road in metres (0.5..5)
    camera_pitch_deg: float = 3.0  # downward tilt of the camera in degrees (-20..30)
    shake_deg: float = 0.3  # amplitude of the camera's pitch/roll/yaw vibration in degrees (0..5)
    ego_speed: tuple[float, float] = (6.0, 14.0)  # range of the ego's mean speed in m/s (0..40)
    ego_speed_variation: float = 0.25  # relative amplitude of the ego's slow speed changes (0..0.9)
    ego_sway: float = 0.3  # amplitude in metres of the ego's lateral drift inside its lane (0..1)
    view_distance: float = 120.0  # metres: objects farther away are not drawn; sets the haze scale (20..1000)
    lanes: tuple[int, int] = (2, 4)  # range of the number of driving lanes, oncoming on the left half (1..6)
    lane_width: float = 3.5  # width of a driving lane in metres (2.5..5)
    p_parking_lane: float = 0.5  # probability of a parking lane on each side of the road
    sidewalk_width: tuple[float, float] = (2.5, 5.0)  # range of each sidewalk's width in metres (1.5..10)
    setback: tuple[float, float] = (0.0, 4.0)  # range of the terrain strip between sidewalk and frontage (0..30 m)
    building_height: tuple[float, float] = (6.0, 25.0)  # range of building heights in metres (3..100)
    frontage_weights: tuple[float, ...] = (0.6, 0.15, 0.08, 0.07, 0.1)  # weights of building, hedge, wall, fence, open
    cars_per_100m: float = 3.0  # moving cars per 100 m of each driving lane (0..20)
    car_speed: tuple[float, float] = (4.0, 15.0)  # range of lane speeds of moving cars in m/s (0..40)
    parked_cars_per_100m: float = 8.0  # parked cars per 100 m of each parking lane (0..20)
    persons_per_100m: float = 10.0  # people per 100 m of each sidewalk (0..50)
    person_speed: tuple[float, float] = (0.5, 1.8)  # range of walking speeds in m/s (0..4)
    poles_per_100m: float = 4.0  # poles per 100 m of each sidewalk (0..20)
    p_sign: float = 0.6  # probability that a pole carries a traffic sign
    trees_per_100m: float = 4.0  # trees per 100 m of each side (0..20)
    light_drift: float = 0.15  # relative amplitude of the slow global brightness and tint drift (0..0.5)
    light_period_s: float = 6.0  # period in seconds of that drift (> 0)
    brightness: tuple[float, float] = (1.0, 1.0)  # range of a per-video gain of the scene light (0.05..4; dusk ~0.4)
    contrast: tuple[float, float] = (1.0, 1.0)  # range of a per-video contrast factor about mid grey (0.2..2)
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # red, green, blue gains of the light (0.2..3 each)
    shadow_strength: float = 0.4  # darkening of the ground in building shadows on sunny videos (0..0.9)
    haze: float = 0.5  # strength of distance haze (0..1)
    texture_strength: float = 1.0  # contrast of the procedural textures (0: flat colours .. 2)
    lens_blur: float = 0.5  # sigma in pixels of the always-on lens blur (0..3; 0 = sharp)
    vignetting: float = 0.0  # lens fall-off: brightness lost in the image corners (0..0.9; 0 = none)
    noise_sigma: float = 2.0  # sigma of the always-on sensor noise in grey levels (0..50)
    p_noise: float = 0.03  # probability per frame that a heavy-noise event starts
    noise_frames: tuple[int, int] = (1, 3)  # range of a heavy-noise event's length in frames (>= 1)
    heavy_noise_sigma: tuple[float, float] = (25.0, 60.0)  # range of its noise sigma in grey levels (0..255)
    p_blur: float = 0.03  # probability per frame that a motion-blur event starts
    blur_frames: tuple[int, int] = (1, 3)  # range of a motion-blur event's length in frames
    blur_length: tuple[float, float] = (0.04, 0.1)  # range of the blur length as a fraction of the width (0..0.5)
    p_flicker: float = 0.03  # probability per frame that an exposure-flicker event starts
    flicker_frames: tuple[int, int] = (1, 2)  # range of a flicker event's length in frames
    flicker_stops: tuple[float, float] = (1.0, 2.5)  # range of its exposure change in stops, sign random (0..8)
    p_occlusion: float = 0.03  # probability per frame that an occlusion (wiper, dirt, glare) starts
    occlusion_frames: tuple[int, int] = (1, 4)  # range of an occlusion's length in frames
    occlusion_area: tuple[float, float] = (0.1, 0.5)  # range of the occluded fraction of the image (0..1)
    p_drop: float = 0.02  # probability per frame that the camera starts dropping frames
    drop_frames: tuple[int, int] = (1, 2)  # range of the number of consecutive dropped frames

    def __post_init__(self) -> None:
        for spec in fields(self):
            object.__setattr__(self, spec.name, _coerce(spec.name, getattr(self, spec.name), spec.default))
        period_ms = 1000.0 / self.fps if self.fps > 0 else 0.0
        checks = [
            ("height", 16 <= self.height <= MAX_SIDE, f"an integer in 16..{MAX_SIDE}"),
            ("width", 16 <= self.width <= MAX_SIDE, f"an integer in 16..{MAX_SIDE}"),
            ("fps", 0 < self.fps <= 1000, "in (0, 1000]"),
            ("num_frames", self.num_frames >= 1, "an integer >= 1"),
            ("stamp_jitter_ms", 0 <= self.stamp_jitter_ms < period_ms / 2,
             f"in [0, {period_ms / 2:g}) (half a frame period)"),
            ("hfov_deg", 20 <= self.hfov_deg <= 150, "in [20, 150]"),
            ("camera_height", 0.5 <= self.camera_height <= 5, "in [0.5, 5]"),
            ("camera_pitch_deg", -20 <= self.camera_pitch_deg <= 30, "in [-20, 30]"),
            ("shake_deg", 0 <= self.shake_deg <= 5, "in [0, 5]"),
            ("ego_speed", _is_range(self.ego_speed, 0, 40), "a range (low, high) within [0, 40]"),
            ("ego_speed_variation", 0 <= self.ego_speed_variation <= 0.9, "in [0, 0.9]"),
            ("ego_sway", 0 <= self.ego_sway <= 1, "in [0, 1]"),
            ("view_distance", 20 <= self.view_distance <= 1000, "in [20, 1000]"),
            ("lanes", _is_range(self.lanes, 1, 6), "a range (low, high) within [1, 6]"),
            ("lane_width", 2.5 <= self.lane_width <= 5, "in [2.5, 5]"),
            ("p_parking_lane", 0 <= self.p_parking_lane <= 1, "in [0, 1]"),
            ("sidewalk_width", _is_range(self.sidewalk_width, 1.5, 10), "a range (low, high) within [1.5, 10]"),
            ("setback", _is_range(self.setback, 0, 30), "a range (low, high) within [0, 30]"),
            ("building_height", _is_range(self.building_height, 3, 100), "a range (low, high) within [3, 100]"),
            ("frontage_weights", min(self.frontage_weights) >= 0 and sum(self.frontage_weights) > 0,
             f"five weights >= 0 ({', '.join(FRONTAGES)}) with a positive sum"),
            ("cars_per_100m", 0 <= self.cars_per_100m <= 20, "in [0, 20]"),
            ("car_speed", _is_range(self.car_speed, 0, 40), "a range (low, high) within [0, 40]"),
            ("parked_cars_per_100m", 0 <= self.parked_cars_per_100m <= 20, "in [0, 20]"),
            ("persons_per_100m", 0 <= self.persons_per_100m <= 50, "in [0, 50]"),
            ("person_speed", _is_range(self.person_speed, 0, 4), "a range (low, high) within [0, 4]"),
            ("poles_per_100m", 0 <= self.poles_per_100m <= 20, "in [0, 20]"),
            ("p_sign", 0 <= self.p_sign <= 1, "in [0, 1]"),
            ("trees_per_100m", 0 <= self.trees_per_100m <= 20, "in [0, 20]"),
            ("light_drift", 0 <= self.light_drift <= 0.5, "in [0, 0.5]"),
            ("light_period_s", self.light_period_s > 0, "a number of seconds > 0"),
            ("brightness", _is_range(self.brightness, 0.05, 4), "a range (low, high) within [0.05, 4]"),
            ("contrast", _is_range(self.contrast, 0.2, 2), "a range (low, high) within [0.2, 2]"),
            ("color_cast", all(0.2 <= g <= 3 for g in self.color_cast), "three gains (red, green, blue) in [0.2, 3]"),
            ("shadow_strength", 0 <= self.shadow_strength <= 0.9, "in [0, 0.9]"),
            ("haze", 0 <= self.haze <= 1, "in [0, 1]"),
            ("texture_strength", 0 <= self.texture_strength <= 2, "in [0, 2]"),
            ("lens_blur", 0 <= self.lens_blur <= 3, "in [0, 3]"),
            ("vignetting", 0 <= self.vignetting <= 0.9, "in [0, 0.9]"),
            ("noise_sigma", 0 <= self.noise_sigma <= 50, "in [0, 50]"),
            ("heavy_noise_sigma", _is_range(self.heavy_noise_sigma, 0, 255), "a range (low, high) within [0, 255]"),
            ("blur_length", _is_range(self.blur_length, 0, 0.5), "a range (low, high) within [0, 0.5]"),
            ("flicker_stops", _is_range(self.flicker_stops, 0, 8), "a range (low, high) within [0, 8]"),
            ("occlusion_area", _is_range(self.occlusion_area, 0, 1), "a range (low, high) within [0, 1]"),
        ]
        for kind in CORRUPTIONS:
            checks.append((f"p_{kind}", 0 <= getattr(self, f"p_{kind}") <= 1, "in [0, 1]"))
            checks.append((f"{kind}_frames", _is_range(getattr(self, f"{kind}_frames"), 1, 10_000),
                           "a range (low, high) of frame counts >= 1"))
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig.{name} must be {accepted}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict) -> SyntheticConfig:
        """A config from a mapping of field names (YAML lists become tuples); unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a synthetic config must be a mapping of field names to values, "
                             f"got {type(data).__name__}")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig key(s): {', '.join(unknown)}; "
                             f"known keys: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SyntheticConfig:
        """Reads a YAML mapping of fields, or the ``config`` section of a ``synthetic.yaml`` (``write_vspw``)."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"synthetic config file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML ({error})") from None
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and "seeds" in data:
            data = data["config"]
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        """Plain YAML-able values (tuples as lists); ``from_dict(to_dict())`` gives the same config."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _coerce(name: str, value, default):
    """``value`` converted to the type of the field's ``default`` (int, float or a tuple of them)."""
    def number(item, like):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise ValueError
        if isinstance(like, int):
            if int(item) != item:
                raise ValueError
            return int(item)
        return float(item)

    try:
        if isinstance(default, tuple):
            items = tuple(value)
            if len(items) != len(default):
                raise ValueError
            return tuple(number(item, like) for item, like in zip(items, default))
        return number(value, default)
    except (TypeError, ValueError):
        kind = type(default[0] if isinstance(default, tuple) else default).__name__
        expected = f"a list of {len(default)} {kind}s" if isinstance(default, tuple) else f"a number ({kind})"
        raise ValueError(f"SyntheticConfig.{name} must be {expected}, got {value!r}") from None


def _is_range(pair: tuple, low: float, high: float) -> bool:
    return low <= pair[0] <= pair[-1] <= high and all(pair[i] <= pair[i + 1] for i in range(len(pair) - 1))


__all__ = ["CORRUPTIONS", "FRONTAGES", "SyntheticConfig"]
