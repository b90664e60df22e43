"""The world a seed fixes for one video: street layout, materials and palette, objects and their motion.

``World`` holds the road (lanes, parking strips, kerbs, sidewalks), the frontage and backdrop cells
along the street, the light, the textures, and the cars, people, poles (with signs) and trees with
their trajectories; ``World.camera`` gives the ego camera's pose at any time. The material and
texture ids below index its per-material tables (colour, label, texture tile, scale, contrast).
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from ...classes import ClassList
from .config import FRONTAGES, SyntheticConfig
from .sampling import jitter, pick, stream_rng, uniform

SYNTHETIC_CLASSES: ClassList = ClassList.shipped("cityscapes")

# train id of each class the scene draws
CLASS_ID = {name: SYNTHETIC_CLASSES.index(name) for name in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic sign", "vegetation", "terrain", "sky",
    "person", "car")}
CELL = 1.0  # metres of frontage per lookup cell
TEXTURE = 256  # side of the square periodic texture tiles
POLY = 16  # vertices of a flat polygon (shorter outlines repeat their last vertex)
BLOBS = 5  # leaf blobs of a tree crown


def _periodic_noise(rng: np.random.Generator, beta: float) -> np.ndarray:
    """``(N, N)`` float32 tileable noise in [0, 1] with a 1/f^beta amplitude spectrum."""
    frequency = np.fft.fftfreq(TEXTURE)
    radius = np.sqrt(frequency[:, None] ** 2 + frequency[None, : TEXTURE // 2 + 1] ** 2)
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) / radius ** beta
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(TEXTURE, TEXTURE))
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
SKY, ROAD, MARKING, SIDEWALK, CURB, TERRAIN, HEDGE, WALL, FENCE, BACKDROP, GLASS, FACADE0 = range(12)
_FACADES = 6  # facade colours per video
_FRONTAGE_MATERIALS = {"hedge": HEDGE, "wall": WALL, "fence": FENCE, "open": TERRAIN}
_FRONTAGE_HEIGHTS = {"hedge": (1.2, 2.6), "wall": (0.8, 2.2), "fence": (1.0, 2.0), "open": (0.0, 0.0)}  # metres
# texture tiles
T_GRAIN, T_LEAVES, T_PLASTER, T_CLOUDS = range(4)


def pad_polygons(points: np.ndarray) -> np.ndarray:
    """``(N, K, 3)`` polygons -> ``(N, POLY, 3)`` by repeating each last vertex."""
    return np.concatenate([points, np.repeat(points[:, -1:], POLY - points.shape[1], axis=1)], 1)


def _sign_outline(shape: str, x: float, y: float, z: float, half: float) -> np.ndarray:
    """``(K, 3)`` world points of a sign outline facing -z, centred at ``(x, y, z)``."""
    count, rotation, stretch = {"circle": (16, 0.0, 1.0), "triangle": (3, math.pi / 2, 1.0),
                                "square": (4, math.pi / 4, 1.0), "diamond": (4, 0.0, 1.0),
                                "rect": (4, math.pi / 4, 0.6)}[shape]
    angles = rotation + np.arange(count) * 2 * math.pi / count
    radius = half * (math.sqrt(2) if count == 4 else 1.0)
    return np.stack([x + radius * np.cos(angles), y + radius * np.sin(angles) * stretch, np.full(count, z)], 1)


# ------------------------------------------------------------------------------------ the world
class World:
    """Everything a seed fixes for one video: road, frontage cells, objects, palette, textures.

    World axes: x to the right, y up, z forward (the driving direction); the ground is y = 0 and
    the middle of the road x = 0 (oncoming lanes at x < 0). Sides are indexed 0 (left) and 1 (right).
    """

    def __init__(self, config: SyntheticConfig, seed: int):
        c = config
        rng = stream_rng(seed, 0)
        # -- ego trajectory: z(t) = v t + a sin(w t + phase), x(t) = lane centre + sway sin(...)
        self.ego_v = float(uniform(rng, c.ego_speed))
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
        self.sidewalk = tuple(float(v) for v in uniform(rng, c.sidewalk_width, 2))
        setback = uniform(rng, c.setback, 2)
        self.frontage_x = (-self.road[0] + self.sidewalk[0] + float(setback[0]),
                           self.road[1] + self.sidewalk[1] + float(setback[1]))  # planes at x = -left, +right
        self.backdrop_x = tuple(d + float(rng.uniform(8, 30)) for d in self.frontage_x)
        self.dash = (float(rng.uniform(2, 4)), float(rng.uniform(6, 12)))  # dash length, period (m)
        # -- frontage and backdrop cells along z (flat arrays: side * cells + cell)
        self.z0 = -40.0
        self.cells = int((far + 80 - self.z0) / CELL) + 1
        self.cell_height = np.zeros(2 * self.cells, np.float32)
        self.cell_material = np.full(2 * self.cells, TERRAIN, np.int32)
        self.cell_origin = np.zeros(2 * self.cells, np.float32)
        weights = np.asarray(c.frontage_weights, np.float64) / sum(c.frontage_weights)
        heights = {**_FRONTAGE_HEIGHTS, "building": c.building_height}
        for side in range(2):
            cell = 0
            while cell < self.cells:
                kind = FRONTAGES[int(rng.choice(len(FRONTAGES), p=weights))]
                length = int(rng.uniform(*((8, 30) if kind == "building" else (4, 16))) / CELL)
                span = slice(side * self.cells + cell, side * self.cells + min(cell + length, self.cells))
                self.cell_height[span] = uniform(rng, heights[kind])
                self.cell_material[span] = (FACADE0 + int(rng.integers(_FACADES)) if kind == "building"
                                            else _FRONTAGE_MATERIALS[kind])
                self.cell_origin[span] = self.z0 + cell * CELL
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
            first = int((z - self.z0) / CELL)
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
        colours = np.zeros((FACADE0 + _FACADES, 3), np.float32)
        colours[SKY] = 0  # the sky is drawn from its own gradient
        colours[ROAD] = jitter(rng, (grey, grey, grey * 1.03), 6)
        colours[MARKING] = jitter(rng, (225, 222, 210) if rng.random() < 0.7 else (230, 190, 60), 10)
        colours[SIDEWALK] = jitter(rng, _SIDEWALK_COLOURS[rng.integers(len(_SIDEWALK_COLOURS))], 15)
        colours[CURB] = jitter(rng, (185, 185, 180), 15)
        green = (rng.uniform(60, 120), rng.uniform(95, 150), rng.uniform(30, 70))
        colours[TERRAIN] = jitter(rng, green if rng.random() < 0.75 else (150, 135, 95), 12)
        colours[HEDGE] = jitter(rng, (green[0] * 0.7, green[1] * 0.75, green[2] * 0.7), 10)
        colours[WALL] = jitter(rng, (150, 145, 140), 20)
        colours[FENCE] = jitter(rng, (80, 100, 80) if rng.random() < 0.5 else (115, 115, 118), 15)
        colours[BACKDROP] = (jitter(rng, (125, 130, 145), 15) if self.skyline else
                             jitter(rng, (green[0] * 0.55, green[1] * 0.65, green[2] * 0.6), 8))
        colours[GLASS] = jitter(rng, (60, 75, 95), 15)
        colours[FACADE0:] = jitter(rng, pick(rng, _BUILDING_COLOURS, _FACADES), 20, _FACADES)
        self.colours = colours
        self.labels = np.full(len(colours), CLASS_ID["building"], np.uint8)
        self.labels[:GLASS] = [CLASS_ID[n] for n in ("sky", "road", "road", "sidewalk", "sidewalk", "terrain",
                                                     "vegetation", "wall", "fence",
                                                     "building" if self.skyline else "vegetation")]
        self.tile = np.full(len(colours), T_PLASTER, np.int32)
        self.tile[[SKY, ROAD, MARKING, SIDEWALK, CURB, WALL, FENCE]] = [
            T_CLOUDS, T_GRAIN, T_GRAIN, T_GRAIN, T_GRAIN, T_PLASTER, T_GRAIN]
        self.tile[[TERRAIN, HEDGE]] = T_LEAVES
        self.tile[BACKDROP] = T_PLASTER if self.skyline else T_LEAVES
        self.scale = np.full(len(colours), 12.0, np.float32)
        self.scale[[SKY, ROAD, MARKING, SIDEWALK, CURB, TERRAIN, HEDGE, BACKDROP]] = [
            1 / 40, 8, 8, 10, 10, 10, 14, 3]
        amp = np.full(len(colours), 0.2, np.float32)
        amp[[SKY, ROAD, SIDEWALK, CURB, GLASS]] = [0, 0.35, 0.3, 0.25, 0.4]
        amp[[TERRAIN, HEDGE, BACKDROP]] = 0.6
        amp[MARKING] = 0.15
        self.amp = amp * c.texture_strength
        self.sky = (jitter(rng, (150, 155, 165) if self.overcast else (70, 120, 200), 15),  # zenith
                    jitter(rng, (200, 200, 205) if self.overcast else (175, 200, 228), 12))  # horizon
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
            speed = direction * float(uniform(rng, c.car_speed))
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
                "paint": jitter(rng, pick(rng, _CAR_COLOURS, n), 12, n),
                "glass": jitter(rng, (45, 55, 65), 15, n)}

    def _persons(self, rng, c, times, ego_z) -> dict:
        rows = []
        mean_gap = 200 / c.persons_per_100m if c.persons_per_100m else math.inf  # per walking direction
        for side in (0, 1):
            inward = 1.0 if side else -1.0  # from the kerb towards the frontage
            for direction in (-1.0, 1.0):
                low, high = self._span(times, ego_z, direction * c.person_speed[1], 20, c.view_distance + 10)
                for z in _segments(rng, low, high, mean_gap, 0.8):
                    offset = rng.uniform(0.5, max(self.sidewalk[side] - 0.4, 0.6))
                    speed = direction * float(uniform(rng, c.person_speed))
                    rows.append((self.road[side] + inward * offset, z, speed))
        n = len(rows)
        columns = np.array(rows, np.float64).reshape(n, 3)
        shirts = np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(
            rng.random(n), rng.uniform(0.2, 0.9, n), rng.uniform(0.25, 0.95, n))]).reshape(n, 3) * 255
        return {"x": columns[:, 0], "z": columns[:, 1], "speed": columns[:, 2],
                "height": rng.uniform(1.55, 1.9, n), "width": rng.uniform(0.42, 0.55, n),
                "phase": rng.uniform(0, 2 * math.pi, n), "stride": rng.uniform(0.6, 0.8, n),
                "shirt": shirts.astype(np.float32),
                "trousers": jitter(rng, pick(rng, _TROUSERS, n), 10, n),
                "skin": jitter(rng, pick(rng, _SKIN, n), 8, n),
                "hair": jitter(rng, (40, 30, 25), 20, n)}

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
                 "colour": jitter(rng, (130, 132, 135) if metal else (55, 75, 62), 15, n)}
        # signs: an outline and a smaller inner shape, facing the ego (-z), just in front of the pole
        outlines, colours, owners = [], [], []
        for i in np.flatnonzero(rng.random(n) < c.p_sign):
            shape, outer, inner = _SIGNS[rng.integers(len(_SIGNS))]
            size, height = rng.uniform(0.7, 0.95), rng.uniform(2.3, 3.0)
            front = poles["z"][i] - poles["thickness"][i] / 2
            for layer, (scale, colour) in enumerate(((1.0, outer), (0.7, inner))):
                outlines.append(pad_polygons(_sign_outline(shape, poles["x"][i], height, front - 0.02 * (layer + 1),
                                                           size * scale / 2)[None])[0])
                colours.append(_SIGN_COLOURS[colour])
                owners.append(i)
        poles["sign_outline"] = np.array(outlines, np.float64).reshape(len(owners), POLY, 3)
        poles["sign_colour"] = np.array(colours, np.float32).reshape(len(owners), 3)
        poles["sign_pole"] = np.array(owners, np.int64)
        return poles

    def _trees(self, rng, c, far) -> dict:
        position = self._kerbside(rng, far, c.trees_per_100m, 5, (self.sidewalk[0] - 0.7, self.sidewalk[1] - 0.7))
        n = len(position)
        trunk, radius = rng.uniform(1.8, 3.0, n), rng.uniform(1.3, 2.8, n)
        crown = np.stack([position[:, 0], trunk + 0.8 * radius, position[:, 1]], 1)
        return {"x": position[:, 0], "z": position[:, 1], "trunk": trunk, "radius": radius,
                "thickness": rng.uniform(0.25, 0.4, n), "bark": jitter(rng, (80, 65, 50), 12, n),
                # the crown: overlapping leaf blobs in several greens
                "blob_centre": crown[:, None] + rng.uniform(-0.55, 0.55, (n, BLOBS, 3)) * radius[:, None, None],
                "blob_radius": rng.uniform(0.5, 0.8, (n, BLOBS)) * radius[:, None],
                "blob_colour": np.clip(self.colours[HEDGE] * rng.uniform(0.7, 1.35, (n, BLOBS, 1)), 0, 255)}


__all__ = ["BACKDROP", "BLOBS", "CELL", "CLASS_ID", "CURB", "FACADE0", "FENCE", "GLASS", "HEDGE", "MARKING", "POLY",
           "ROAD", "SIDEWALK", "SKY", "SYNTHETIC_CLASSES", "TERRAIN", "TEXTURE", "T_CLOUDS", "T_GRAIN", "T_LEAVES",
           "T_PLASTER", "WALL", "World", "pad_polygons"]
