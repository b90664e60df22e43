"""A procedural driving video with Cityscapes classes, for training and testing without data downloads.

Every video is a drive along a straight street, rendered with a pinhole camera from a world that a
seed fixes: a road with 2-4 lanes (oncoming traffic on the left half, lane markings, crossings,
parking lanes), kerbs, sidewalks with poles, traffic signs and trees, terrain, a frontage of
buildings (with windows), hedges, walls, fences and gaps, a backdrop of tree lines or a skyline,
and a sky with drifting clouds. Cars drive in their lanes at their own speeds or stand parked;
people walk along the sidewalks. The camera moves forward (slow speed changes), sways in its lane
and vibrates; the light drifts slowly. Colours, widths, heights and densities vary from seed to
seed, and every surface carries cheap procedural texture (asphalt grain, tiles, windows, leaves,
clouds), so no class is separable by flat colour.

On top of the clean image, a frame can carry *corruptions* that make it ambiguous on its own but
that the previous frames resolve, so that temporal context pays off:

* ``noise``: heavy sensor noise (sigma ``heavy_noise_sigma`` grey levels) for ``noise_frames``;
* ``blur``: linear motion blur (``blur_length`` x width pixels) for ``blur_frames``;
* ``flicker``: an exposure jump of ``flicker_stops`` stops (darker or brighter, clipping);
* ``occlusion``: a wiper sweep, a lens-dirt blob or a glare blob over ``occlusion_area`` of the
  image for ``occlusion_frames``;
* ``drop``: the camera delivers nothing for ``drop_frames`` frames (``SyntheticDrive.__iter__``
  skips them, so stamps jump; ``write_vspw`` leaves gaps in the frame numbers).

Each kind is an *event*: on every frame where no event of that kind is running, one starts with
probability ``p_<kind>`` and lasts a number of frames drawn from ``<kind>_frames`` (inclusive), so
``p = 1`` corrupts every frame and ``p = 0`` none (the first frame is never dropped). A weak sensor
noise (``noise_sigma``) and lens blur (``lens_blur``) are always on and are not listed as
corruptions. Labels always describe the TRUE scene: corruptions never touch them (a car behind a
wiper stays ``car``).

Labels are Cityscapes train ids (:data:`SYNTHETIC_CLASSES`): road, sidewalk, building, wall, fence,
pole, traffic sign, vegetation, terrain, sky, person and car occur; 255 (ignore) does not, but
keeps its meaning.

Determinism: a frame is a pure function of ``(config, seed, index)``: the world, the trajectories
and the corruption events are drawn once per video from ``numpy.random.SeedSequence([seed, ...])``
streams, and each frame's own randomness (noise, stamp jitter) from a stream keyed by its index, so
random access gives bitwise the frames that sequential reading gives.

Speed (default config at 240x480, one process, one thread, on a 2-core virtual machine shared with
other jobs): median 65 frames/s over five 300-frame videos (57-72), about 15 ms a frame (6 ms ray
casting, 3.5 ms objects, 2.5 ms composition, 2 ms camera effects); ``write_vspw`` adds about 2 ms a
frame for JPEG and PNG encoding, and ``sdcpc-synth --workers 2`` wrote 3000 frames (2919 delivered)
in 34 s.

``write_vspw`` writes videos in the VSPW 480p layout that :class:`sdcpc_core.data.VSPWDataset`
reads; ``sdcpc-synth`` (:mod:`sdcpc_core.tools.synth`) is its command line.
"""
from __future__ import annotations

import colorsys
import contextlib
import math
import multiprocessing
import numbers
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ..classes import CLASS_LISTS_DIR, ClassList
from ..io import atomic_write

__all__ = ["SYNTHETIC_CLASSES", "CORRUPTIONS", "SyntheticConfig", "SyntheticFrame", "SyntheticDrive",
           "write_vspw", "video_name"]

SYNTHETIC_CLASSES: ClassList = ClassList.shipped("cityscapes")
CORRUPTIONS = ("noise", "blur", "flicker", "occlusion", "drop")
FRONTAGES = ("building", "hedge", "wall", "fence", "open")

_C = {name: SYNTHETIC_CLASSES.index(name) for name in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic sign", "vegetation", "terrain", "sky",
    "person", "car")}
_NS_PER_S = 1_000_000_000
_CELL = 1.0  # metres of frontage per lookup cell
_TEXTURE = 256  # side of the square periodic texture tiles
_NEAR = 0.05  # near clipping plane in metres


# ----------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; invalid values raise ``ValueError`` naming the field.

    Ranges ``(low, high)`` are drawn from uniformly per video (or per object / event).
    """

    height: int = 240  # image height in pixels (>= 16)
    width: int = 480  # image width in pixels (>= 16)
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
    shadow_strength: float = 0.4  # darkening of the ground in building shadows on sunny videos (0..0.9)
    haze: float = 0.5  # strength of distance haze (0..1)
    texture_strength: float = 1.0  # contrast of the procedural textures (0: flat colours .. 2)
    lens_blur: float = 0.5  # sigma in pixels of the always-on lens blur (0..3; 0 = sharp)
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
            ("height", self.height >= 16, "an integer >= 16"),
            ("width", self.width >= 16, "an integer >= 16"),
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
            ("shadow_strength", 0 <= self.shadow_strength <= 0.9, "in [0, 0.9]"),
            ("haze", 0 <= self.haze <= 1, "in [0, 1]"),
            ("texture_strength", 0 <= self.texture_strength <= 2, "in [0, 2]"),
            ("lens_blur", 0 <= self.lens_blur <= 3, "in [0, 3]"),
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
    def from_dict(cls, data: dict) -> "SyntheticConfig":
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
    def from_yaml(cls, path: str | os.PathLike) -> "SyntheticConfig":
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


@dataclass(frozen=True)
class SyntheticFrame:
    """One frame of a synthetic video."""

    index: int  # position in the video (0..num_frames-1), counting dropped frames too
    stamp_ns: int  # index * 1e9 / fps plus the optional jitter, in integer nanoseconds
    image: np.ndarray  # (H, W, 3) uint8 RGB, corrupted as a camera would deliver it
    labels: np.ndarray  # (H, W) uint8 Cityscapes train ids of the TRUE scene, 255 = ignore
    corruptions: tuple[str, ...]  # names of the corruptions of this frame (see CORRUPTIONS)


# --------------------------------------------------------------------------------- randomness
def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator per ``(seed, stream...)``: what one stream draws never shifts another."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _uniform(rng: np.random.Generator, bounds, size=None):
    return rng.uniform(bounds[0], bounds[1], size)


def _jitter(rng: np.random.Generator, rgb, amount: float, size=None) -> np.ndarray:
    """``rgb`` (3,) plus uniform noise of +-``amount`` per channel, clipped to 0..255."""
    shape = (3,) if size is None else (size, 3)
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, shape), 0, 255).astype(np.float32)


def _pick(rng: np.random.Generator, palette, n: int) -> np.ndarray:
    """``(n, 3)`` float32 colours drawn from ``palette``."""
    return np.asarray(palette, np.float32)[rng.integers(len(palette), size=n)]


def _periodic_noise(rng: np.random.Generator, beta: float) -> np.ndarray:
    """``(N, N)`` float32 tileable noise in [0, 1] with a 1/f^beta amplitude spectrum."""
    frequency = np.fft.fftfreq(_TEXTURE)
    radius = np.sqrt(frequency[:, None] ** 2 + frequency[None, : _TEXTURE // 2 + 1] ** 2)
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) / radius ** beta
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(_TEXTURE, _TEXTURE))
    low, high = np.percentile(field, [1, 99])
    return np.clip((field - low) / (high - low), 0, 1).astype(np.float32)


def _segments(rng: np.random.Generator, start: float, stop: float, mean_gap: float, min_gap: float) -> np.ndarray:
    """Positions in [start, stop) with gaps ``min_gap`` + exponential(``mean_gap - min_gap``); none for an
    infinite ``mean_gap``."""
    if not math.isfinite(mean_gap):
        return np.zeros(0)
    count = int((stop - start) / max(mean_gap, min_gap) * 1.5) + 4
    gaps = min_gap + rng.exponential(max(mean_gap - min_gap, 1e-3), count)
    positions = start + rng.uniform(0, gaps[0]) + np.cumsum(gaps) - gaps[0]
    return positions[positions < stop]


# ------------------------------------------------------------------------------------ palettes
_BUILDING_COLOURS = ((200, 185, 160), (150, 80, 60), (215, 215, 210), (130, 130, 135), (210, 190, 120),
                     (200, 160, 150), (90, 85, 80), (120, 135, 150), (170, 120, 90))
_SIDEWALK_COLOURS = ((150, 150, 150), (170, 160, 148), (160, 112, 100), (125, 122, 118))
_CAR_COLOURS = ((225, 225, 225), (175, 178, 182), (30, 30, 33), (95, 97, 100), (160, 25, 25), (30, 55, 130),
                (35, 75, 50), (190, 175, 140), (120, 20, 40))
_TROUSERS = ((40, 45, 70), (30, 30, 32), (150, 135, 105), (75, 75, 80), (60, 80, 120))
_SKIN = ((235, 200, 170), (200, 150, 115), (140, 95, 65), (90, 60, 45))
_SIGN_COLOURS = {"red": (200, 30, 35), "white": (235, 235, 235), "blue": (30, 80, 180), "yellow": (235, 190, 30),
                 "green": (20, 120, 70)}
# a sign: (outline shape, outer colour, inner colour)
_SIGNS = (("circle", "red", "white"), ("circle", "blue", "white"), ("triangle", "red", "white"),
          ("square", "blue", "white"), ("diamond", "white", "yellow"), ("rect", "green", "white"))

# background materials (index -> surface); facade colours follow
_SKY, _ROAD, _MARKING, _SIDEWALK, _CURB, _TERRAIN, _HEDGE, _WALL, _FENCE, _BACKDROP, _GLASS, _FACADE0 = range(12)
_FACADES = 6  # facade colours per video
_FRONTAGE_MATERIALS = {"hedge": _HEDGE, "wall": _WALL, "fence": _FENCE, "open": _TERRAIN}
_FRONTAGE_HEIGHTS = {"hedge": (1.2, 2.6), "wall": (0.8, 2.2), "fence": (1.0, 2.0), "open": (0.0, 0.0)}  # metres
# texture tiles
_T_GRAIN, _T_LEAVES, _T_PLASTER, _T_CLOUDS = range(4)
# box faces: corner k has x = bit 0, y = bit 1, z = bit 2; faces -x, +x, -y, +y, -z, +z
_FACE_CORNERS = np.array([[0, 2, 6, 4], [1, 3, 7, 5], [0, 1, 5, 4], [2, 3, 7, 6], [0, 1, 3, 2], [4, 5, 7, 6]])
_CORNER_SIGNS = np.array([[(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)], np.float32) * 2 - 1


# ------------------------------------------------------------------------------------ the world
class _World:
    """Everything a seed fixes for one video: road, frontage cells, objects, palette, textures.

    World axes: x to the right, y up, z forward (the driving direction); the ground is y = 0 and
    the middle of the road x = 0 (oncoming lanes at x < 0). Sides are indexed 0 (left) and 1 (right).
    """

    def __init__(self, config: SyntheticConfig, seed: int):
        c = config
        rng = _rng(seed, 0)
        # -- ego trajectory: z(t) = v t + a sin(w t + phase), x(t) = lane centre + sway sin(...)
        self.ego_v = float(_uniform(rng, c.ego_speed))
        self.ego_period = float(rng.uniform(6, 14))
        self.ego_phase = float(rng.uniform(0, 2 * math.pi))
        self.sway_period = float(rng.uniform(4, 10))
        self.sway_phase = float(rng.uniform(0, 2 * math.pi))
        self.shake = rng.uniform(0, 2 * math.pi, (3, 3))  # phases of three frequencies for yaw, pitch, roll
        times = np.arange(c.num_frames) / c.fps
        ego_z = self.ego_z(times, c)
        far = float(ego_z.max()) + c.view_distance + 10  # the farthest z any frame can show objects at
        # -- road: lanes from lanes_left, parking strips outside them, then kerbs, sidewalks, terrain
        self.n_lanes = int(rng.integers(c.lanes[0], c.lanes[1] + 1))
        self.n_oncoming = self.n_lanes // 2
        self.lanes_left = -self.n_oncoming * c.lane_width
        self.ego_lane = int(rng.integers(self.n_oncoming, self.n_lanes))
        self.ego_x = self.lanes_left + (self.ego_lane + 0.5) * c.lane_width
        parking = [bool(p) for p in rng.random(2) < c.p_parking_lane]
        self.parking = parking
        self.road = (self.lanes_left - 2.2 * parking[0],
                     self.lanes_left + self.n_lanes * c.lane_width + 2.2 * parking[1])  # x of the kerbs
        self.sidewalk = tuple(float(v) for v in _uniform(rng, c.sidewalk_width, 2))
        setback = _uniform(rng, c.setback, 2)
        self.frontage_x = (-self.road[0] + self.sidewalk[0] + float(setback[0]),
                           self.road[1] + self.sidewalk[1] + float(setback[1]))  # planes at x = -left, +right
        self.backdrop_x = tuple(d + float(rng.uniform(8, 30)) for d in self.frontage_x)
        self.dash = (float(rng.uniform(2, 4)), float(rng.uniform(6, 12)))  # dash length, period (m)
        # -- frontage and backdrop cells along z (flat arrays: side * cells + cell)
        self.z0 = -40.0
        self.cells = int((far + 80 - self.z0) / _CELL) + 1
        self.cell_height = np.zeros(2 * self.cells, np.float32)
        self.cell_material = np.full(2 * self.cells, _TERRAIN, np.int32)
        self.cell_origin = np.zeros(2 * self.cells, np.float32)
        weights = np.asarray(c.frontage_weights, np.float64) / sum(c.frontage_weights)
        heights = {**_FRONTAGE_HEIGHTS, "building": c.building_height}
        for side in range(2):
            cell = 0
            while cell < self.cells:
                kind = FRONTAGES[int(rng.choice(len(FRONTAGES), p=weights))]
                length = int(rng.uniform(*((8, 30) if kind == "building" else (4, 16))) / _CELL)
                span = slice(side * self.cells + cell, side * self.cells + min(cell + length, self.cells))
                self.cell_height[span] = _uniform(rng, heights[kind])
                self.cell_material[span] = (_FACADE0 + int(rng.integers(_FACADES)) if kind == "building"
                                            else _FRONTAGE_MATERIALS[kind])
                self.cell_origin[span] = self.z0 + cell * _CELL
                cell += length
        self.skyline = bool(rng.random() < 0.35)
        if self.skyline:  # far buildings: piecewise constant heights
            steps = np.repeat(rng.uniform(10, 40, 2 * self.cells // 12 + 1), 12)[: 2 * self.cells]
            self.backdrop_height = steps.astype(np.float32)
        else:  # a tree line
            profile = np.cumsum(rng.normal(0, 0.35, 2 * self.cells))
            self.backdrop_height = np.clip(9 + profile - profile.mean(), 4, 18).astype(np.float32)
        self.crossings = np.zeros(self.cells, bool)
        for z in _segments(rng, 20, far, 180, 60):
            first = int((z - self.z0) / _CELL)
            self.crossings[first: first + 4] = True
        self.window = (float(rng.uniform(2.4, 4.0)), float(rng.uniform(2.8, 3.6)),  # spacing, floor height (m)
                       float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.35, 0.6)))  # width, height fraction
        # -- light and palette
        self.overcast = bool(rng.random() < 0.35)
        self.sun_side = int(rng.integers(2))  # the frontage side whose buildings shade the road
        self.sun_slope = float(rng.uniform(0.4, 1.2))  # shadow length per metre of building height
        self.gain = float(rng.uniform(0.75, 1.1))
        self.tint = rng.uniform(0.93, 1.07, 3)
        self.light_phase = rng.uniform(0, 2 * math.pi, 4)
        self.wind = tuple(float(v) for v in rng.normal(0, 3, 2))
        self._palette(rng, c)
        self.textures = np.concatenate([(_periodic_noise(rng, beta) * 255).astype(np.uint8).ravel()
                                        for beta in (1.0, 0.6, 1.0, 2.2)])  # uint8: four times fewer cache misses
        # -- objects
        self.cars = self._cars(rng, c, times, ego_z, far)
        self.persons = self._persons(rng, c, times, ego_z)
        self.poles = self._poles(rng, c, far)
        self.trees = self._trees(rng, c, far)

    # -- trajectory
    def ego_z(self, t, c: SyntheticConfig):
        amplitude = self.ego_v * c.ego_speed_variation * self.ego_period / (2 * math.pi)
        return self.ego_v * t + amplitude * (np.sin(2 * math.pi * t / self.ego_period + self.ego_phase)
                                             - math.sin(self.ego_phase))

    def camera(self, t: float, c: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
        """Camera centre (3,) and rotation (3, 3) from camera to world axes at time ``t``."""
        omega = 2 * math.pi / self.sway_period
        x = self.ego_x + c.ego_sway * math.sin(omega * t + self.sway_phase)
        lateral_speed = c.ego_sway * omega * math.cos(omega * t + self.sway_phase)
        heading = math.atan(lateral_speed / self.ego_v) if self.ego_v > 1 else 0.0
        vibration = [sum(math.sin(2 * math.pi * f * t + self.shake[axis, k]) for k, f in enumerate((0.7, 1.9, 3.1)))
                     / 3 for axis in range(3)]
        shake = math.radians(c.shake_deg)
        yaw, roll = heading + shake * vibration[0], shake * vibration[2]
        pitch = math.radians(c.camera_pitch_deg) + shake * vibration[1]
        bob = 0.05 * c.shake_deg * vibration[1]  # metres: the vertical part of the vibration
        centre = np.array([x, c.camera_height + bob, float(self.ego_z(t, c))])
        cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                                  math.cos(roll), math.sin(roll))
        r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])  # positive pitch looks down
        r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return centre, r_yaw @ r_pitch @ r_roll

    # -- palette: colour, label, texture tile, texels per metre and texture contrast of each background material
    def _palette(self, rng, c: SyntheticConfig) -> None:
        grey = rng.uniform(55, 115)
        colours = np.zeros((_FACADE0 + _FACADES, 3), np.float32)
        colours[_SKY] = 0  # the sky is drawn from its own gradient
        colours[_ROAD] = _jitter(rng, (grey, grey, grey * 1.03), 6)
        colours[_MARKING] = _jitter(rng, (225, 222, 210) if rng.random() < 0.7 else (230, 190, 60), 10)
        colours[_SIDEWALK] = _jitter(rng, _SIDEWALK_COLOURS[rng.integers(len(_SIDEWALK_COLOURS))], 15)
        colours[_CURB] = _jitter(rng, (185, 185, 180), 15)
        green = (rng.uniform(60, 120), rng.uniform(95, 150), rng.uniform(30, 70))
        colours[_TERRAIN] = _jitter(rng, green if rng.random() < 0.75 else (150, 135, 95), 12)
        colours[_HEDGE] = _jitter(rng, (green[0] * 0.7, green[1] * 0.75, green[2] * 0.7), 10)
        colours[_WALL] = _jitter(rng, (150, 145, 140), 20)
        colours[_FENCE] = _jitter(rng, (80, 100, 80) if rng.random() < 0.5 else (115, 115, 118), 15)
        colours[_BACKDROP] = (_jitter(rng, (125, 130, 145), 15) if self.skyline else
                              _jitter(rng, (green[0] * 0.55, green[1] * 0.65, green[2] * 0.6), 8))
        colours[_GLASS] = _jitter(rng, (60, 75, 95), 15)
        colours[_FACADE0:] = _jitter(rng, _pick(rng, _BUILDING_COLOURS, _FACADES), 20, _FACADES)
        self.colours = colours
        self.labels = np.full(len(colours), _C["building"], np.uint8)
        self.labels[:_GLASS] = [_C[n] for n in ("sky", "road", "road", "sidewalk", "sidewalk", "terrain", "vegetation",
                                                "wall", "fence", "building" if self.skyline else "vegetation")]
        self.tile = np.full(len(colours), _T_PLASTER, np.int32)
        self.tile[[_SKY, _ROAD, _MARKING, _SIDEWALK, _CURB, _WALL, _FENCE]] = [
            _T_CLOUDS, _T_GRAIN, _T_GRAIN, _T_GRAIN, _T_GRAIN, _T_PLASTER, _T_GRAIN]
        self.tile[[_TERRAIN, _HEDGE]] = _T_LEAVES
        self.tile[_BACKDROP] = _T_PLASTER if self.skyline else _T_LEAVES
        self.scale = np.full(len(colours), 12.0, np.float32)
        self.scale[[_SKY, _ROAD, _MARKING, _SIDEWALK, _CURB, _TERRAIN, _HEDGE, _BACKDROP]] = [
            1 / 40, 8, 8, 10, 10, 10, 14, 3]
        amp = np.full(len(colours), 0.2, np.float32)
        amp[[_SKY, _ROAD, _SIDEWALK, _CURB, _GLASS]] = [0, 0.35, 0.3, 0.25, 0.4]
        amp[[_TERRAIN, _HEDGE, _BACKDROP]] = 0.6
        amp[_MARKING] = 0.15
        self.amp = amp * c.texture_strength
        self.sky = (_jitter(rng, (150, 155, 165) if self.overcast else (70, 120, 200), 15),  # zenith
                    _jitter(rng, (200, 200, 205) if self.overcast else (175, 200, 228), 12))  # horizon
        self.clouds = float(0.9 if self.overcast else rng.uniform(0.2, 0.6)) * c.texture_strength

    # -- objects: each kind as a dict of per-object columns
    @staticmethod
    def _span(times, ego_z, speed: float, behind: float, ahead: float) -> tuple[float, float]:
        """The start positions z0 whose ``z0 + speed t`` comes within view of the ego at some time."""
        return float((ego_z - behind - speed * times).min()), float((ego_z + ahead - speed * times).max())

    def _cars(self, rng, c, times, ego_z, far) -> dict:
        rows = []
        mean_gap = 100 / c.cars_per_100m if c.cars_per_100m else math.inf
        for lane in range(self.n_lanes):
            direction = -1.0 if lane < self.n_oncoming else 1.0
            speed = direction * float(_uniform(rng, c.car_speed))
            low, high = self._span(times, ego_z, speed, 30, c.view_distance + 10)
            for z in _segments(rng, low, high, mean_gap, 9):
                if lane == self.ego_lane and (z + speed * times - ego_z).min() < 8:
                    continue  # it would run into (or through) the ego
                rows.append((self.lanes_left + (lane + 0.5) * c.lane_width, z, speed, direction))
        mean_gap = 100 / c.parked_cars_per_100m if c.parked_cars_per_100m else math.inf
        for side in (0, 1):
            if self.parking[side]:
                x = self.road[side] + (1.1 if side == 0 else -1.1)
                for z in _segments(rng, -30, far, mean_gap, 5.5):
                    rows.append((x + rng.uniform(-0.15, 0.15), z, 0.0, 1.0 if side else -1.0))
        n = len(rows)
        columns = np.array(rows, np.float64).reshape(n, 4)
        van = rng.random(n) < 0.15
        return {"x": columns[:, 0], "z": columns[:, 1], "speed": columns[:, 2], "heading": columns[:, 3],
                "length": np.where(van, rng.uniform(4.8, 5.4, n), rng.uniform(3.8, 4.8, n)),
                "width": rng.uniform(1.7, 1.95, n),
                "height": np.where(van, rng.uniform(1.9, 2.2, n), rng.uniform(1.4, 1.6, n)),
                "cabin": np.where(van, rng.uniform(0.75, 0.85, n), rng.uniform(0.45, 0.6, n)),
                "paint": _jitter(rng, _pick(rng, _CAR_COLOURS, n), 12, n),
                "glass": _jitter(rng, (45, 55, 65), 15, n)}

    def _persons(self, rng, c, times, ego_z) -> dict:
        rows = []
        mean_gap = 200 / c.persons_per_100m if c.persons_per_100m else math.inf  # per walking direction
        for side in (0, 1):
            inward = 1.0 if side else -1.0  # from the kerb towards the frontage
            for direction in (-1.0, 1.0):
                low, high = self._span(times, ego_z, direction * c.person_speed[1], 20, c.view_distance + 10)
                for z in _segments(rng, low, high, mean_gap, 0.8):
                    offset = rng.uniform(0.5, max(self.sidewalk[side] - 0.4, 0.6))
                    speed = direction * float(_uniform(rng, c.person_speed))
                    rows.append((self.road[side] + inward * offset, z, speed))
        n = len(rows)
        columns = np.array(rows, np.float64).reshape(n, 3)
        shirts = np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(
            rng.random(n), rng.uniform(0.2, 0.9, n), rng.uniform(0.25, 0.95, n))]).reshape(n, 3) * 255
        return {"x": columns[:, 0], "z": columns[:, 1], "speed": columns[:, 2],
                "height": rng.uniform(1.55, 1.9, n), "width": rng.uniform(0.42, 0.55, n),
                "phase": rng.uniform(0, 2 * math.pi, n), "stride": rng.uniform(0.6, 0.8, n),
                "shirt": shirts.astype(np.float32),
                "trousers": _jitter(rng, _pick(rng, _TROUSERS, n), 10, n),
                "skin": _jitter(rng, _pick(rng, _SKIN, n), 8, n),
                "hair": _jitter(rng, (40, 30, 25), 20, n)}

    def _kerbside(self, rng, far: float, per_100m: float, min_gap: float, inset: tuple[float, float]) -> np.ndarray:
        """``(N, 2)`` positions (x, z) along both sidewalks, ``inset`` metres from the kerb (per side)."""
        rows = []
        for side in (0, 1):
            x = self.road[side] + (inset[side] if side else -inset[side])
            rows += [(x, z) for z in _segments(rng, -30, far, 100 / per_100m if per_100m else math.inf, min_gap)]
        return np.array(rows, np.float64).reshape(len(rows), 2)

    def _poles(self, rng, c, far) -> dict:
        position = self._kerbside(rng, far, c.poles_per_100m, 6, (0.45, 0.45))
        n = len(position)
        metal = rng.random() < 0.7
        poles = {"x": position[:, 0], "z": position[:, 1], "height": rng.uniform(4, 8, n),
                 "thickness": rng.uniform(0.22, 0.32, n),
                 "colour": _jitter(rng, (130, 132, 135) if metal else (55, 75, 62), 15, n)}
        # signs: an outline and a smaller inner shape, facing the ego (-z), just in front of the pole
        outlines, colours, owners = [], [], []
        for i in np.flatnonzero(rng.random(n) < c.p_sign):
            shape, outer, inner = _SIGNS[rng.integers(len(_SIGNS))]
            size, height = rng.uniform(0.7, 0.95), rng.uniform(2.3, 3.0)
            front = poles["z"][i] - poles["thickness"][i] / 2
            for layer, (scale, colour) in enumerate(((1.0, outer), (0.7, inner))):
                outlines.append(_pad(_sign_outline(shape, poles["x"][i], height, front - 0.02 * (layer + 1),
                                                   size * scale / 2)[None])[0])
                colours.append(_SIGN_COLOURS[colour])
                owners.append(i)
        poles["sign_outline"] = np.array(outlines, np.float64).reshape(len(owners), _POLY, 3)
        poles["sign_colour"] = np.array(colours, np.float32).reshape(len(owners), 3)
        poles["sign_pole"] = np.array(owners, np.int64)
        return poles

    def _trees(self, rng, c, far) -> dict:
        position = self._kerbside(rng, far, c.trees_per_100m, 5, (self.sidewalk[0] - 0.7, self.sidewalk[1] - 0.7))
        n = len(position)
        trunk, radius = rng.uniform(1.8, 3.0, n), rng.uniform(1.3, 2.8, n)
        crown = np.stack([position[:, 0], trunk + 0.8 * radius, position[:, 1]], 1)
        return {"x": position[:, 0], "z": position[:, 1], "trunk": trunk, "radius": radius,
                "thickness": rng.uniform(0.25, 0.4, n), "bark": _jitter(rng, (80, 65, 50), 12, n),
                # the crown: overlapping leaf blobs in several greens
                "blob_centre": crown[:, None] + rng.uniform(-0.55, 0.55, (n, _BLOBS, 3)) * radius[:, None, None],
                "blob_radius": rng.uniform(0.5, 0.8, (n, _BLOBS)) * radius[:, None],
                "blob_colour": np.clip(self.colours[_HEDGE] * rng.uniform(0.7, 1.35, (n, _BLOBS, 1)), 0, 255)}


# ------------------------------------------------------------------------------------ primitives
class _Primitives:
    """What one frame draws over the background: boxes (their faces towards the camera), flat
    polygons and spheres, as columns per kind. ``depth`` (distance of the owning object) and
    ``order`` (drawing order inside it) sort them far to near; colours are RGB 0..255; boxes
    carry one colour per face ``(6, 3)``; polygons have ``_POLY`` world points."""

    def __init__(self):
        self._columns: dict[tuple[str, str], list[np.ndarray]] = {}

    def add(self, kind: str, label: int, depth: np.ndarray, order, **columns) -> None:
        """Appends ``len(depth)`` primitives of ``kind`` (box, poly, sphere); ``order``: scalar or per primitive."""
        n = len(depth)
        columns.update(label=np.full(n, label), depth=depth, order=np.broadcast_to(order, (n,)))
        for name, value in columns.items():
            self._columns.setdefault((kind, name), []).append(
                np.asarray(value, np.float64).reshape(n, *np.shape(value)[1:]))

    def stacked(self, kind: str, name: str, shape: tuple) -> np.ndarray:
        """All primitives' column ``name`` of ``kind``: ``(N, *shape)``."""
        parts = self._columns.get((kind, name))
        return np.concatenate(parts) if parts else np.zeros((0, *shape))


class _Materials(NamedTuple):
    """The materials of the drawn primitives (ids from the background's count on), spheres last."""

    colours: np.ndarray  # (M, 3) float32 RGB
    labels: np.ndarray  # (M,) uint8 train ids
    depths: np.ndarray  # (M,) float32 distance of the owning object in metres
    first_sphere: int  # material id of the first sphere
    sphere_centre: np.ndarray  # (S, 2) float32 pixel (column, row) of each sphere's centre
    sphere_radius: np.ndarray  # (S,) float32 radius in pixels


_POLY = 16  # vertices of a flat polygon (shorter outlines repeat their last vertex)
_BLOBS = 5  # leaf blobs of a tree crown


# ------------------------------------------------------------------------------------ the drive
_HEAP_PAD = 64 << 20  # bytes of free heap glibc keeps instead of returning them to the system
_heap_tuned = False


def _keep_heap() -> None:
    """Asks glibc (where it is the C library) to keep ``_HEAP_PAD`` bytes at the top of the heap.

    A frame allocates and frees some 30 MB of NumPy temporaries; by default glibc hands the freed
    top of the heap back to the kernel and page-faults it in again on the next frame, which doubles
    the time per frame. Once per process; a no-op elsewhere (musl, macOS, Windows).
    """
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-2, _HEAP_PAD)  # -2: M_TOP_PAD
    except (AttributeError, OSError, TypeError):
        pass


class SyntheticDrive:
    """One synthetic video: ``len(drive)`` frames, random access with ``frame(i)``, camera order with ``iter``.

    ``frame(i)`` always returns the frame, even a dropped one (its ``corruptions`` then contain
    ``"drop"``); iterating yields only the frames the camera delivered. The camera is a distortion-free
    pinhole: ``focal`` (pixels) and the principal point at the image centre, ``(W / 2 - 0.5, H / 2 - 0.5)``
    in pixel-centre coordinates.
    """

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), seed: int = 0):
        if not isinstance(config, SyntheticConfig):
            raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.config, self.seed = config, int(seed)
        _keep_heap()
        self._world = _World(config, self.seed)
        self._events = self._schedule()
        c = config
        self.focal = (c.width / 2) / math.tan(math.radians(c.hfov_deg) / 2)
        # camera-frame ray (x, y, 1) through each pixel centre: x per column, y per row
        self._ray_x = ((np.arange(c.width, dtype=np.float32) + 0.5 - c.width / 2) / self.focal)[None, :]
        self._ray_y = (-(np.arange(c.height, dtype=np.float32) + 0.5 - c.height / 2) / self.focal)[:, None]
        self._inverse_norm = 1 / np.sqrt(self._ray_x ** 2 + self._ray_y ** 2 + 1)
        # unit Gaussian sensor noise, twice a frame's size (each frame reads a window of it)
        self._noise = _rng(self.seed, 3).standard_normal(2 * c.height * c.width * 3, np.float32) \
            if c.noise_sigma or c.p_noise else None

    def __len__(self) -> int:
        return self.config.num_frames

    def __iter__(self) -> Iterator[SyntheticFrame]:
        for index in range(len(self)):
            if not self.is_dropped(index):
                yield self.frame(index)

    def is_dropped(self, index: int) -> bool:
        """Whether the camera delivers nothing at ``index`` (a drop event covers it)."""
        return bool(self._events["drop"][self._check(index)] >= 0)

    def corruptions(self, index: int) -> tuple[str, ...]:
        """Names of the corruption events covering frame ``index``."""
        index = self._check(index)
        return tuple(kind for kind in CORRUPTIONS if self._events[kind][index] >= 0)

    def stamp_ns(self, index: int) -> int:
        """The frame's time stamp in nanoseconds (``index / fps`` plus the configured jitter)."""
        index = self._check(index)
        stamp = index * _NS_PER_S / self.config.fps
        if self.config.stamp_jitter_ms:
            stamp += _rng(self.seed, 2, index).uniform(-1, 1) * self.config.stamp_jitter_ms * 1e6
        return max(int(round(stamp)), 0)

    def _check(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"frame index must be an integer in 0..{len(self) - 1}, got {index!r}")
        return int(index)

    def _schedule(self) -> dict[str, np.ndarray]:
        """Per kind, for each frame the start index of the event covering it, or -1."""
        c, n = self.config, self.config.num_frames
        events = {}
        for number, kind in enumerate(CORRUPTIONS):
            rng = _rng(self.seed, 1, number)
            starts = rng.random(n) < getattr(c, f"p_{kind}")
            low, high = getattr(c, f"{kind}_frames")
            lengths = rng.integers(low, high + 1, n)
            covered = np.full(n, -1, np.int64)
            index = 1 if kind == "drop" else 0  # the first frame is always delivered
            while index < n:
                if starts[index]:
                    covered[index: index + lengths[index]] = index
                    index += int(lengths[index])
                else:
                    index += 1
            events[kind] = covered
        return events

    # ------------------------------------------------------------------------------- one frame
    def frame(self, index: int) -> SyntheticFrame:
        """Frame ``index`` (dropped or not): the same ``(config, seed, index)`` gives bitwise the same frame."""
        index = self._check(index)
        c = self.config
        t = index / c.fps
        centre, rotation = self._world.camera(t, c)
        ids, depth, factor, up = self._background(centre, rotation, t)
        materials = self._draw(ids, self._objects(centre, rotation, t), centre, rotation)
        image = self._compose(ids, depth, factor, up, materials, t)
        corruptions = self.corruptions(index)
        labels = np.take(np.concatenate([self._world.labels, materials.labels]), ids)
        return SyntheticFrame(index, self.stamp_ns(index), self._corrupt(image, index, corruptions), labels,
                              corruptions)

    def _background(self, centre: np.ndarray, rotation: np.ndarray, t: float):
        """Ray-casts the ground, the frontage and the backdrop planes.

        Returns ``ids`` (H, W) int32 background material per pixel, ``depth`` (H, W) float32 ray
        length to the hit (1e4 for the sky), ``factor`` (H, W) float32 brightness from texture and
        shading (cloud cover in the sky) and ``up`` (H, W) float32, the upward component of each
        pixel's ray (rays are ``(x, y, 1)`` in camera axes, not unit length).
        """
        c, w = self.config, self._world
        (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = rotation.tolist()
        x, y = self._ray_x, self._ray_y
        dx, dy, dz = r00 * x + (r01 * y + r02), r10 * x + (r11 * y + r12), r20 * x + (r21 * y + r22)
        cx, cy, cz = centre.tolist()
        last = w.cells - 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t_ground = -cy / dy
            right = dx >= 0
            offset = right.astype(np.int32) * w.cells  # index of the right side's cells
            inverse_dx = 1 / dx
            planes = []  # frontage, backdrop: (hit, ray length, hit height y, hit z, cell index, plane height)
            for (left, far_right), heights in ((w.frontage_x, w.cell_height), (w.backdrop_x, w.backdrop_height)):
                t_plane = (right * np.float32(far_right + left) - np.float32(left + cx)) * inverse_dx
                y_hit, z_hit = cy + t_plane * dy, cz + t_plane * dz
                cell = np.minimum((z_hit - w.z0) * (1 / _CELL), last).astype(np.int32) + offset
                height = np.take(heights, cell, mode="clip")  # cells < 0 only where t_plane < 0 (no hit)
                planes.append(((y_hit >= 0) & (y_hit < height) & (t_plane > 0), t_plane, y_hit, z_hit, cell, height))
            (front, t_front, y_front, z_front, cell, height), (back, t_back, *_) = planes
            back &= ~front
            ground = (t_ground > 0) & ~front & ~back
            sky = ~(front | back | ground)
            depth = np.where(ground, t_ground, np.float32(1e4))
            np.copyto(depth, t_back, where=back)
            np.copyto(depth, t_front, where=front)
            hx, hy, hz = cx + depth * dx, cy + depth * dy, cz + depth * dz  # hit points
            ids = np.zeros(depth.shape, np.int32)  # _SKY
            # frontage (buildings with windows, hedges, walls, fences) and backdrop
            material = np.take(w.cell_material, cell, mode="clip")
            ids[front] = material[front]
            windows = self._windows(y_front, z_front - np.take(w.cell_origin, cell, mode="clip"), height)
            ids[front & (material >= _FACADE0) & windows] = _GLASS
            ids[back] = _BACKDROP
            # ground, on the rows that show some: road (markings), kerbs and sidewalks, terrain beyond
            rows = np.flatnonzero(ground.any(1))
            g = slice(rows[0] if len(rows) else len(ground), None)
            ground_g, x_g, z_g, ids_g = ground[g], hx[g], hz[g], ids[g]
            ground_cell = np.clip((z_g - w.z0) * (1 / _CELL), 0, last).astype(np.int32)
            ids_g[ground_g] = _TERRAIN
            road = ground_g & (x_g > w.road[0]) & (x_g < w.road[1])
            outside = np.maximum(x_g - w.road[1], w.road[0] - x_g)  # distance beyond the kerb
            sidewalk = ground_g & ~road & np.where(x_g > 0, outside < w.sidewalk[1], outside < w.sidewalk[0])
            ids_g[sidewalk] = _SIDEWALK
            ids_g[sidewalk & (outside < 0.25)] = _CURB
            ids_g[road] = _ROAD
            ids_g[road & self._markings(x_g, z_g, ground_cell)] = _MARKING
            # texture: tile and texels per metre from the material; (z, x) on the ground, (z, y) on
            # the planes, the cloud plane 800 m up in the sky
            u, v = hz.copy(), hy.copy()
            np.copyto(v, hx, where=ground)
            cloud = 800 / dy
            np.copyto(u, cx + w.wind[0] * t + cloud * dx, where=sky)
            np.copyto(v, cz + w.wind[1] * t + cloud * dz, where=sky)
            scale = np.take(w.scale, ids)
            texel = ((u * scale).astype(np.int32) & (_TEXTURE - 1)) * _TEXTURE + ((v * scale).astype(np.int32)
                                                                                & (_TEXTURE - 1))
            texture = np.take(w.textures, np.take(w.tile, ids) * _TEXTURE ** 2 + texel) * np.float32(1 / 255)
        texture_g = texture[g]
        joints = sidewalk & ((_fraction(x_g * (1 / 0.6)) < 0.08) | (_fraction(z_g * (1 / 0.6)) < 0.08))
        np.multiply(texture_g, np.float32(0.3), out=texture_g, where=joints)
        # brightness: texture contrast fading with distance (no shimmering far away), shaded
        # frontage side, building shadows on the ground
        fade = 1 / (1 + depth * (1 / 60))
        factor = 1 + np.take(w.amp, ids) * fade * (texture * 2 - 1)
        factor[front & (right != bool(w.sun_side))] *= 0.8
        if c.shadow_strength and not w.overcast:
            across = x_g if w.sun_side == 1 else -x_g
            reach = w.frontage_x[w.sun_side] - w.sun_slope * np.take(w.cell_height, ground_cell + w.sun_side * w.cells)
            factor[g][ground_g & (across > reach)] *= 1 - c.shadow_strength
        factor[sky] = texture[sky]  # the sky's "factor" is its cloud texture
        return ids, depth, factor, dy

    def _markings(self, x: np.ndarray, z: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """Lane lines (dashed between lanes of one direction, solid at the centre and the edges) and zebra crossings."""
        c, w = self.config, self._world
        position = (x - w.lanes_left) * (1 / c.lane_width)
        boundary = np.rint(position)
        line = (np.abs(position - boundary) < 0.1 / c.lane_width) & (boundary >= 0) & (boundary <= w.n_lanes)
        solid = (boundary == 0) | (boundary == w.n_lanes) | (boundary == w.n_oncoming)
        dashed = _fraction(z * (1 / w.dash[1])) < w.dash[0] / w.dash[1]
        zebra = np.take(w.crossings, cell) & (_fraction(x * (1 / 1.2)) < 0.5)
        return (line & (solid | dashed)) | zebra

    def _windows(self, y: np.ndarray, along: np.ndarray, height: np.ndarray) -> np.ndarray:
        """A window grid on building facades, above the ground floor and below the roof edge."""
        spacing, floor, width, tall = self._world.window
        level = _fraction(y * (1 / floor))
        return ((_fraction(along * (1 / spacing)) < width) & (level > (1 - tall) / 2) & (level < (1 + tall) / 2)
                & (y > 3.2) & (y < height - 0.8))

    def _objects(self, centre: np.ndarray, rotation: np.ndarray, t: float) -> _Primitives:
        """Cars, people, poles with signs and trees near enough to be seen at time ``t``."""
        c, w = self.config, self._world
        sideways, forward = rotation[:, 0], rotation[:, 2]
        half_view = math.tan(math.radians(c.hfov_deg) / 2)
        out = _Primitives()

        def visible(x, z, reach):
            """Indices of objects at (x, z) within ``reach`` metres (their size) of the view, and in range."""
            ahead = (x - centre[0]) * forward[0] + (z - centre[2]) * forward[2]
            across = (x - centre[0]) * sideways[0] + (z - centre[2]) * sideways[2]
            return np.flatnonzero((ahead > -reach) & (ahead < c.view_distance)
                                  & (np.abs(across) < np.maximum(ahead, 0) * half_view + reach))

        def placed(objects: dict, reach: float):
            """The visible ``objects`` at time ``t``: indices, x, z, distance from the camera, count."""
            z_all = objects["z"] + objects["speed"] * t if "speed" in objects else objects["z"]
            i = visible(objects["x"], z_all, reach)
            x, z = objects["x"][i], z_all[i]
            return i, x, z, np.hypot(x - centre[0], z - centre[2]), len(i)

        def point(x, y, z):
            return np.stack(np.broadcast_arrays(x, y, z), -1)

        def faces(colour, n):
            """One colour for all six faces: ``colour`` (3,) or (n, 3) -> (n, 6, 3)."""
            return np.broadcast_to(np.asarray(colour, np.float64)[..., None, :], (n, 6, 3))

        # cars: two axles (wheels), body, cabin (glass, roof in the paint colour), lights when near
        cars = w.cars
        i, x, z, d, n = placed(cars, 6)
        length, width, height, heading = cars["length"][i], cars["width"][i], cars["height"][i], cars["heading"][i]
        top = 0.3 + 0.5 * (height - 0.3)  # top of the body
        near = d < 50  # details (wheels, lights) only where they cover a few pixels
        for axle in (-0.32, 0.32):
            out.add("box", _C["car"], d[near], 0, centre=point(x[near], 0.33, z[near] + axle * length[near]),
                    half=point(width[near] / 2 + 0.02, 0.33, 0.33), colour=faces((25, 25, 25), np.count_nonzero(near)))
        out.add("box", _C["car"], d, 1, centre=point(x, (0.28 + top) / 2, z),
                half=point(width / 2, (top - 0.28) / 2, length / 2), colour=faces(cars["paint"][i], n))
        cabin = np.array(faces(cars["glass"][i], n))
        cabin[:, 3] = cars["paint"][i]
        out.add("box", _C["car"], d, 2, centre=point(x, (top + height) / 2, z - 0.08 * length * heading),
                half=point(width / 2 - 0.08, (height - top) / 2, length * cars["cabin"][i] / 2), colour=cabin)
        towards = np.sign(centre[2] - z[near])  # the end of the car that faces the camera
        end = z[near] + towards * (length[near] / 2 + 0.01)
        rear = towards != heading[near]
        for side in (-0.35, 0.35):
            lx = x[near] + side * width[near]
            low, high = top[near] - 0.25, top[near] - 0.1
            quad = np.stack([point(lx - 0.15, high, end), point(lx + 0.15, high, end), point(lx + 0.15, low, end),
                             point(lx - 0.15, low, end)], 1)
            out.add("poly", _C["car"], d[near] - 0.01, 3, points=_pad(quad),
                    colour=np.where(rear[:, None], (200, 30, 30), (235, 235, 215)))
        # people: two legs (swinging while walking), torso, head (hair on top)
        persons = w.persons
        i, x, z, d, n = placed(persons, 2)
        height, width = persons["height"][i], persons["width"][i]
        stride, speed = persons["stride"][i], persons["speed"][i]
        swing = 0.25 * stride * np.sin(persons["phase"][i] + 2 * math.pi * np.abs(speed) * t / stride) * (speed != 0)
        hip, shoulder = 0.48 * height, 0.82 * height
        for side, step in ((-0.25, swing), (0.25, -swing)):
            out.add("box", _C["person"], d, 0, centre=point(x + side * width, hip / 2, z + step),
                    half=point(0.1, hip / 2, 0.1), colour=faces(persons["trousers"][i], n))
        out.add("box", _C["person"], d, 1, centre=point(x, (hip + shoulder) / 2, z),
                half=point(width / 2, (shoulder - hip) / 2, 0.13), colour=faces(persons["shirt"][i], n))
        head = np.array(faces(persons["skin"][i], n))
        head[:, 3] = persons["hair"][i]
        size = (height - shoulder) / 2
        out.add("box", _C["person"], d, 2, centre=point(x, shoulder + size + 0.02, z), half=point(0.1, size, 0.11),
                colour=head)
        # poles and their signs
        poles = w.poles
        i, x, z, d, n = placed(poles, 1)
        out.add("box", _C["pole"], d, 0, centre=point(x, poles["height"][i] / 2, z),
                half=point(poles["thickness"][i] / 2, poles["height"][i] / 2, poles["thickness"][i] / 2),
                colour=faces(poles["colour"][i], n))
        shown = np.isin(poles["sign_pole"], i)
        out.add("poly", _C["traffic sign"], d[np.searchsorted(i, poles["sign_pole"][shown])] - 0.05,
                1 + np.arange(np.count_nonzero(shown)) % 2, points=poles["sign_outline"][shown],
                colour=poles["sign_colour"][shown])
        # trees: trunk and crown blobs
        trees = w.trees
        i, x, z, d, n = placed(trees, 3)
        reach = (trees["trunk"][i] + trees["radius"][i]) / 2
        out.add("box", _C["vegetation"], d, 0, centre=point(x, reach, z),
                half=point(trees["thickness"][i] / 2, reach, trees["thickness"][i] / 2),
                colour=faces(trees["bark"][i], n))
        out.add("sphere", _C["vegetation"], np.repeat(d, _BLOBS) - 0.01, np.tile(1 + np.arange(_BLOBS), n),
                centre=trees["blob_centre"][i].reshape(-1, 3), radius=trees["blob_radius"][i].reshape(-1),
                colour=trees["blob_colour"][i].reshape(-1, 3))
        return out

    def _draw(self, ids: np.ndarray, items: _Primitives, centre: np.ndarray, rotation: np.ndarray) -> _Materials:
        """Fills the primitives' visible faces, polygons and spheres far to near into ``ids``.

        Each drawn primitive gets its own material id (after the background's, spheres last).
        """
        import cv2

        sun = (0.7, 0.9) if self._world.sun_side == 1 else (0.9, 0.7)
        face_shade = np.array([sun[0], sun[1], 0.5, 1.0, 0.82, 0.82])  # -x, +x, -y, +y, -z, +z
        # boxes -> their faces that look towards the camera, in camera coordinates
        box_centre = items.stacked("box", "centre", (3,))
        half = items.stacked("box", "half", (3,))
        corners = (box_centre[:, None] + half[:, None] * _CORNER_SIGNS) - centre
        offset = centre - box_centre
        facing = np.stack([offset[:, 0] < -half[:, 0], offset[:, 0] > half[:, 0], offset[:, 1] < -half[:, 1],
                           offset[:, 1] > half[:, 1], offset[:, 2] < -half[:, 2], offset[:, 2] > half[:, 2]], 1)
        box, face = np.nonzero(facing)
        face_points = corners[box[:, None], _FACE_CORNERS[face]] @ rotation  # (F, 4, 3)
        polygons = [_pad(face_points), (items.stacked("poly", "points", (_POLY, 3)) - centre) @ rotation]
        colours = [items.stacked("box", "colour", (6, 3))[box, face] * face_shade[face, None],
                   items.stacked("poly", "colour", (3,)), items.stacked("sphere", "colour", (3,))]
        labels, depths, orders = ([items.stacked("box", name, ())[box], items.stacked("poly", name, ()),
                                   items.stacked("sphere", name, ())] for name in ("label", "depth", "order"))
        polygons = np.concatenate(polygons)  # (F + P, _POLY, 3) camera coordinates
        spheres = (items.stacked("sphere", "centre", (3,)) - centre) @ rotation
        radii = items.stacked("sphere", "radius", ())
        # projection to pixel coordinates in cv2's fixed point (4 fractional bits)
        focal, unit = self.focal, 16
        in_front = (polygons[..., 2] >= _NEAR).all(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = self._project(polygons, unit)
            sphere_pixels = self._project(spheres, unit)
            sphere_radius = np.clip(focal * radii / spheres[:, 2] * unit, 0, 1e7).astype(np.int32)
        count = len(polygons)
        order = np.lexsort((np.concatenate(orders), -np.concatenate(depths)))
        seen = np.concatenate([(polygons[..., 2] >= _NEAR).any(1), spheres[:, 2] > radii + _NEAR])
        order = order[seen[order]]
        base = len(self._world.colours)
        for k in order.tolist():
            if k >= count:
                s = k - count
                cv2.circle(ids, tuple(sphere_pixels[s].tolist()), int(sphere_radius[s]), base + k, -1, cv2.LINE_8, 4)
            elif in_front[k]:
                cv2.fillPoly(ids, [pixels[k]], base + k, cv2.LINE_8, 4)
            else:
                clipped = _clip_near(polygons[k])
                if len(clipped) >= 3:
                    cv2.fillPoly(ids, [self._project(clipped, unit)], base + k, cv2.LINE_8, 4)
        return _Materials(np.concatenate(colours).astype(np.float32), np.concatenate(labels).astype(np.uint8),
                          np.concatenate(depths).astype(np.float32), base + count,
                          sphere_pixels.astype(np.float32) / unit, sphere_radius.astype(np.float32) / unit)

    def _leaves(self, ids: np.ndarray, factor: np.ndarray, materials: _Materials) -> None:
        """Leaf texture on the tree crowns' pixels of ``factor``, anchored to each crown blob (it moves with it)."""
        rows, cols = np.nonzero(ids >= materials.first_sphere)
        blob = ids[rows, cols] - materials.first_sphere
        texels = 40 / np.maximum(materials.sphere_radius[blob], 1)  # a blob's radius spans 40 texels
        u = ((cols - materials.sphere_centre[blob, 0]) * texels).astype(np.int32) & (_TEXTURE - 1)
        v = ((rows - materials.sphere_centre[blob, 1]) * texels).astype(np.int32) & (_TEXTURE - 1)
        texture = np.take(self._world.textures, _T_LEAVES * _TEXTURE ** 2 + u * _TEXTURE + v)
        factor[rows, cols] = 1 + self._world.amp[_HEDGE] * (texture * np.float32(2 / 255) - 1)

    def _project(self, points: np.ndarray, unit: int) -> np.ndarray:
        """Camera-space points ``(..., 3)`` -> ``(..., 2)`` int32 pixel coordinates times ``unit``."""
        c = self.config
        u = (c.width / 2 - 0.5 + self.focal * points[..., 0] / points[..., 2]) * unit
        v = (c.height / 2 - 0.5 - self.focal * points[..., 1] / points[..., 2]) * unit
        return np.clip(np.stack([u, v], -1), -1e7, 1e7).astype(np.int32)

    def _compose(self, ids, depth, factor, up, materials: _Materials, t: float) -> np.ndarray:
        """Materials, texture and shading -> ``(H, W, 3)`` float32 radiance, with sky, haze and the light at ``t``."""
        import cv2

        c, w = self.config, self._world
        colours, object_depth = materials.colours, materials.depths
        is_object = ids >= len(w.colours)
        factor[is_object] = 1
        self._leaves(ids, factor, materials)
        haze_scale = c.view_distance * 0.6
        haze = np.concatenate([np.zeros(len(w.colours), np.float32), object_depth / (object_depth + haze_scale)])
        haze = np.take(haze * c.haze, ids)
        np.copyto(haze, depth / (depth + haze_scale) * c.haze, where=~is_object)
        sky = ids == _SKY
        haze[sky] = 0
        drift = c.light_drift * np.sin(2 * math.pi * t / c.light_period_s + w.light_phase)
        light = w.gain * (1 + drift[0]) * w.tint * (1 + 0.3 * drift[1:])
        colours = np.concatenate([w.colours, colours]) * light
        zenith, horizon = (w.sky * light).tolist()
        light = light.tolist()
        rows = np.flatnonzero(sky.any(1))
        top = rows[-1] + 1 if len(rows) else 0
        elevation = np.clip(up[:top] * self._inverse_norm[:top] * 3, 0, 1)
        cover = np.clip((factor[:top] - 0.45) * 2.5, 0, 1) * (w.clouds * np.sqrt(np.sqrt(elevation)))
        shaded = factor * (1 - haze)
        channels = []
        for k in range(3):
            channel = np.take(colours[:, k].astype(np.float32), ids) * shaded + np.float32(horizon[k]) * haze
            sky_colour = (horizon[k] + (zenith[k] - horizon[k]) * elevation) * (1 - cover) + 235 * light[k] * cover
            np.copyto(channel[:top], sky_colour, where=sky[:top])
            channels.append(channel)
        return cv2.merge(channels)

    # ------------------------------------------------------------------------------ corruptions
    def _corrupt(self, image: np.ndarray, index: int, corruptions: tuple[str, ...]) -> np.ndarray:
        """Float radiance -> the uint8 image a camera delivers: blur, occlusion, exposure, noise."""
        import cv2

        c = self.config
        h, w = image.shape[:2]
        if c.lens_blur:
            image = cv2.GaussianBlur(image, (0, 0), c.lens_blur)
        if "blur" in corruptions:
            rng = self._event_rng("blur", index)
            length = max(int(_uniform(rng, c.blur_length) * w) | 1, 1)
            angle = rng.normal(0, 25) + (90 if rng.random() < 0.2 else 0)
            kernel = np.zeros((length, length), np.float32)
            r = (length - 1) / 2
            dx, dy = r * math.cos(math.radians(angle)), r * math.sin(math.radians(angle))
            cv2.line(kernel, (int(round(r - dx)), int(round(r - dy))), (int(round(r + dx)), int(round(r + dy))), 1.0)
            image = cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
        if "occlusion" in corruptions:
            image = self._occlude(image, index)
        if "flicker" in corruptions:
            rng = self._event_rng("flicker", index)
            stops = _uniform(rng, c.flicker_stops) * (1 if rng.random() < 0.5 else -1)
            image = image * np.float32(2.0 ** stops)
        sigma = c.noise_sigma
        if "noise" in corruptions:
            sigma = math.hypot(sigma, _uniform(self._event_rng("noise", index), c.heavy_noise_sigma))
        if sigma:  # a window of the drive's noise sequence at a random offset: drawing anew costs 4 ms a frame
            start = int(_rng(self.seed, 3, index).integers(image.size + 1))
            image = cv2.scaleAdd(self._noise[start: start + image.size].reshape(image.shape), sigma, image)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    def _event_rng(self, kind: str, index: int) -> np.random.Generator:
        """The generator of the event covering ``index``: the same for all frames of one event."""
        return _rng(self.seed, 4, CORRUPTIONS.index(kind), int(self._events[kind][index]))

    def _occlude(self, image: np.ndarray, index: int) -> np.ndarray:
        """A wiper sweeping across, a lens-dirt blob or a glare blob, covering ``occlusion_area`` of the image."""
        import cv2

        c = self.config
        h, w = image.shape[:2]
        rng = self._event_rng("occlusion", index)
        start = int(self._events["occlusion"][index])
        length = int(np.count_nonzero(self._events["occlusion"] == start))
        progress = (index - start + 0.5) / length
        target = float(_uniform(rng, c.occlusion_area))
        kind = ("wiper", "dirt", "glare")[int(rng.integers(3))]
        if kind == "wiper":  # a dark blade rotating about a pivot below the image
            pivot = (rng.uniform(0.2, 0.8) * w, 1.4 * h)
            start_angle, sweep = rng.uniform(-60, -30), rng.uniform(40, 80)
            angle = math.radians(start_angle + sweep * progress) - math.pi / 2
            tip = (pivot[0] + 2 * h * math.cos(angle), pivot[1] + 2 * h * math.sin(angle))

            def draw(size: float) -> np.ndarray:  # size: blade thickness in image heights
                mask = np.zeros((h, w), np.float32)
                return cv2.line(mask, _pixel(pivot), _pixel(tip), 1.0, max(int(size * h), 1))

            mask = _calibrated(draw, target, target * w / h, exponent=1.0)
            colour, opacity = np.float32(rng.uniform(10, 35)), 0.97
        else:  # overlapping ellipses around one point, shaped like the image
            centre = (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h)
            blobs = [(rng.normal(0, 0.15, 2), rng.uniform(0.7, 1.1, 2), rng.uniform(-20, 20)) for _ in range(4)]

            def draw(size: float) -> np.ndarray:  # size: blob radius in image widths / heights
                mask = np.zeros((h, w), np.float32)
                for offset, axes, tilt in blobs:
                    cv2.ellipse(mask, _pixel((centre[0] + offset[0] * size * w, centre[1] + offset[1] * size * h)),
                                _pixel((axes[0] * size * w, axes[1] * size * h)), tilt, 0, 360, 1.0, -1)
                return mask

            mask = _calibrated(draw, target, math.sqrt(target / math.pi), exponent=0.5)
            if kind == "dirt":
                colour, opacity = _jitter(rng, (70, 60, 45), 20), float(rng.uniform(0.85, 0.97))
            else:
                colour, opacity = np.float32(600), 1.0  # glare saturates
        softness = max(w / 100, 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), softness)[..., None] * np.float32(opacity)
        return image + (colour - image) * mask


def _pixel(point) -> tuple[int, int]:
    return int(round(point[0])), int(round(point[1]))


def _calibrated(draw, target: float, size: float, exponent: float, steps: int = 3) -> np.ndarray:
    """``draw(size)`` -> a 0/1 mask; rescales ``size`` so that the mask covers about ``target`` of the
    image (the covered fraction grows like ``size ** (1 / exponent)``, clipped by the image border)."""
    mask = draw(size)
    for _ in range(steps):
        covered = float(mask.mean())
        if target <= 0 or abs(covered - target) < 0.02 * target:
            break
        size *= min(max((target / max(covered, 1e-6)) ** exponent, 0.5), 2.0)
        mask = draw(size)
    return mask


def _fraction(values: np.ndarray) -> np.ndarray:
    """``values mod 1`` (much faster than ``%`` on floats)."""
    return values - np.floor(values)


def _pad(points: np.ndarray) -> np.ndarray:
    """``(N, K, 3)`` polygons -> ``(N, _POLY, 3)`` by repeating each last vertex."""
    return np.concatenate([points, np.repeat(points[:, -1:], _POLY - points.shape[1], axis=1)], 1)


def _sign_outline(shape: str, x: float, y: float, z: float, half: float) -> np.ndarray:
    """``(K, 3)`` world points of a sign outline facing -z, centred at ``(x, y, z)``."""
    count, rotation, stretch = {"circle": (16, 0.0, 1.0), "triangle": (3, math.pi / 2, 1.0),
                                "square": (4, math.pi / 4, 1.0), "diamond": (4, 0.0, 1.0),
                                "rect": (4, math.pi / 4, 0.6)}[shape]
    angles = rotation + np.arange(count) * 2 * math.pi / count
    radius = half * (math.sqrt(2) if count == 4 else 1.0)
    return np.stack([x + radius * np.cos(angles), y + radius * np.sin(angles) * stretch, np.full(count, z)], 1)


def _clip_near(points: np.ndarray) -> np.ndarray:
    """Clips a camera-space polygon ``(K, 3)`` to ``z >= _NEAR`` (Sutherland-Hodgman, one plane)."""
    inside = points[:, 2] >= _NEAR
    if inside.all():
        return points
    if not inside.any():
        return points[:0]
    kept = []
    for k in range(len(points)):
        a, b = points[k], points[(k + 1) % len(points)]
        if inside[k]:
            kept.append(a)
        if inside[k] != inside[(k + 1) % len(points)]:
            kept.append(a + (b - a) * (_NEAR - a[2]) / (b[2] - a[2]))
    return np.array(kept)


# ------------------------------------------------------------------------------- VSPW writer
def video_name(seed: int) -> str:
    """The folder name of the video of ``seed``."""
    return f"synthetic_{seed:05d}"


def _write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def _encode(extension: str, array: np.ndarray, params: list[int]) -> bytes:
    import cv2

    ok, data = cv2.imencode(extension, array, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {extension} image")
    return data.tobytes()


def _write_video(job: tuple) -> tuple[str, int, int]:
    """Writes one video's frames and masks; returns (split, frames written, frames dropped)."""
    import cv2

    root, split, seed, config, quality = job
    folder = Path(root) / "data" / video_name(seed)
    if folder.exists():
        shutil.rmtree(folder)  # an overwritten video must not keep frames of an earlier run
    (folder / "origin").mkdir(parents=True)
    (folder / "mask").mkdir()
    drive = SyntheticDrive(config, seed)
    written = 0
    for frame in drive:
        stem = f"{frame.index:08d}"
        _write_bytes(folder / "origin" / f"{stem}.jpg", _encode(
            ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]))
        mask = frame.labels + np.uint8(1)  # train id + 1; 255 (ignore) wraps to 0
        _write_bytes(folder / "mask" / f"{stem}.png", _encode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1]))
        written += 1
    return split, written, len(drive) - written


def _worker_setup() -> None:
    import cv2

    cv2.setNumThreads(1)


def write_vspw(root: str | os.PathLike, *, videos: dict[str, list[int]], config: SyntheticConfig = SyntheticConfig(),
               progress: bool = True, workers: int = 1, overwrite: bool = False, jpeg_quality: int = 95) -> dict:
    """Writes one synthetic video per seed in the VSPW 480p layout that ``VSPWDataset`` reads.

    Layout: ``<root>/<split>.txt`` (video names), ``<root>/data/<video>/origin/<index:08d>.jpg``,
    ``<root>/data/<video>/mask/<index:08d>.png`` (grey PNG, train id + 1, 0 = ignore), dropped
    frames left out; ``<root>/classes.yaml`` (the Cityscapes class list) and ``<root>/synthetic.yaml``
    (config, seeds and JPEG quality, to reproduce the set). Every file is written atomically, and the
    split lists last, so an interrupted run is not a readable data set. ``root`` must be empty or
    absent unless ``overwrite`` (which replaces the folders and split lists of the videos written).

    Args:
        videos: split name (``train``, ``val``, ``test``) -> list of seeds (integers >= 0, unique overall).
        workers: processes generating videos in parallel (1: in this process). More use the ``spawn``
            start method, so a script calling this needs the usual ``if __name__ == "__main__":`` guard.
        jpeg_quality: JPEG quality of the frames (1..100).

    Returns: ``{"root", "frames": {split: written}, "dropped": {split: n}, "videos": {split: n},
    "seconds", "frames_per_second"}``.
    """
    from tqdm.auto import tqdm
    import yaml

    root = Path(root)
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if not isinstance(videos, dict) or not videos:
        raise ValueError("videos must map at least one split name to a list of seeds")
    seen: dict[int, str] = {}
    for split, seeds in videos.items():
        if split not in ("train", "val", "test"):
            raise ValueError(f"split names must be train, val or test, got {split!r}")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seeds must be integers >= 0, got {seed!r} in split {split!r}")
            if int(seed) in seen:
                raise ValueError(f"seed {seed} is listed twice (splits {seen[int(seed)]!r} and {split!r})")
            seen[int(seed)] = split
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output folder {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {root} is not empty; choose an empty folder or allow overwriting")
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name in [f"{split}.txt" for split in videos] + ["synthetic.yaml"]:
        (root / name).unlink(missing_ok=True)  # until the new videos are complete, their splits are not listed
    jobs = [(str(root), split, int(seed), config, jpeg_quality) for split, seeds in videos.items() for seed in seeds]
    summary = {"root": str(root), "frames": {split: 0 for split in videos}, "dropped": {split: 0 for split in videos},
               "videos": {split: len(seeds) for split, seeds in videos.items()}}
    began = time.perf_counter()
    bar = tqdm(total=len(jobs) * config.num_frames, unit="frame", desc="synthetic videos", disable=not progress)
    with contextlib.ExitStack() as stack:
        if min(workers, len(jobs)) > 1:  # fresh interpreters: no threads or locks inherited from the caller
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                min(workers, len(jobs)), initializer=_worker_setup))
            results = pool.imap_unordered(_write_video, jobs)
        else:
            results = map(_write_video, jobs)
        for split, written, dropped in results:
            summary["frames"][split] += written
            summary["dropped"][split] += dropped
            bar.update(written + dropped)
    bar.close()
    _write_bytes(root / "classes.yaml", (CLASS_LISTS_DIR / "cityscapes.yaml").read_bytes())
    record = {"generator": "sdcpc_core.data.synthetic", "jpeg_quality": jpeg_quality,
              "seeds": {split: [int(s) for s in seeds] for split, seeds in videos.items()}, "config": config.to_dict()}
    _write_bytes(root / "synthetic.yaml", yaml.safe_dump(record, sort_keys=False).encode("utf-8"))
    for split, seeds in videos.items():
        _write_bytes(root / f"{split}.txt", "".join(f"{video_name(int(s))}\n" for s in seeds).encode("utf-8"))
    summary["seconds"] = time.perf_counter() - began
    summary["frames_per_second"] = sum(summary["frames"].values()) / max(summary["seconds"], 1e-9)
    return summary
