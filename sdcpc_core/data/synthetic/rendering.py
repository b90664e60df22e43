"""Rendering one frame of a ``World``: ray-cast background, objects drawn far to near, shading, sky and haze.

``Renderer.render(t)`` gives the clean radiance (float32, before any camera effect) and the labels of
the true scene at time ``t``. The camera is a distortion-free pinhole: ``focal`` (pixels) and the
principal point at the image centre, ``(W / 2 - 0.5, H / 2 - 0.5)`` in pixel-centre coordinates.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .config import SyntheticConfig
from .scene import (
    BACKDROP,
    BLOBS,
    CELL,
    CLASS_ID,
    CURB,
    FACADE0,
    GLASS,
    HEDGE,
    MARKING,
    POLY,
    ROAD,
    SIDEWALK,
    SKY,
    T_LEAVES,
    TERRAIN,
    TEXTURE,
    World,
    pad_polygons,
)

_NEAR = 0.05  # near clipping plane in metres
# box faces: corner k has x = bit 0, y = bit 1, z = bit 2; faces -x, +x, -y, +y, -z, +z
_FACE_CORNERS = np.array([[0, 2, 6, 4], [1, 3, 7, 5], [0, 1, 5, 4], [2, 3, 7, 6], [0, 1, 3, 2], [4, 5, 7, 6]])
_CORNER_SIGNS = np.array([[(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)], np.float32) * 2 - 1


# ------------------------------------------------------------------------------------ primitives
class _Primitives:
    """What one frame draws over the background: boxes (their faces towards the camera), flat
    polygons and spheres, as columns per kind. ``depth`` (distance of the owning object) and
    ``order`` (drawing order inside it) sort them far to near; colours are RGB 0..255; boxes
    carry one colour per face ``(6, 3)``; polygons have ``POLY`` world points."""

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


class Renderer:
    """Draws the frames of one ``World`` with the configured camera."""

    def __init__(self, config: SyntheticConfig, world: World):
        self.config, self._world = config, world
        c = config
        self.focal = (c.width / 2) / math.tan(math.radians(c.hfov_deg) / 2)
        # camera-frame ray (x, y, 1) through each pixel centre: x per column, y per row
        self._ray_x = ((np.arange(c.width, dtype=np.float32) + 0.5 - c.width / 2) / self.focal)[None, :]
        self._ray_y = (-(np.arange(c.height, dtype=np.float32) + 0.5 - c.height / 2) / self.focal)[:, None]
        self._inverse_norm = 1 / np.sqrt(self._ray_x ** 2 + self._ray_y ** 2 + 1)

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(H, W, 3)`` float32 radiance and ``(H, W)`` uint8 train ids of the true scene at time ``t`` (seconds)."""
        c = self.config
        centre, rotation = self._world.camera(t, c)
        ids, depth, factor, up = self._background(centre, rotation, t)
        materials = self._draw(ids, self._objects(centre, rotation, t), centre, rotation)
        image = self._compose(ids, depth, factor, up, materials, t)
        labels = np.take(np.concatenate([self._world.labels, materials.labels]), ids)
        return image, labels

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
                cell = np.minimum((z_hit - w.z0) * (1 / CELL), last).astype(np.int32) + offset
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
            ids = np.zeros(depth.shape, np.int32)  # SKY
            # frontage (buildings with windows, hedges, walls, fences) and backdrop
            material = np.take(w.cell_material, cell, mode="clip")
            ids[front] = material[front]
            windows = self._windows(y_front, z_front - np.take(w.cell_origin, cell, mode="clip"), height)
            ids[front & (material >= FACADE0) & windows] = GLASS
            ids[back] = BACKDROP
            # ground, on the rows that show some: road (markings), kerbs and sidewalks, terrain beyond
            rows = np.flatnonzero(ground.any(1))
            g = slice(rows[0] if len(rows) else len(ground), None)
            ground_g, x_g, z_g, ids_g = ground[g], hx[g], hz[g], ids[g]
            ground_cell = np.clip((z_g - w.z0) * (1 / CELL), 0, last).astype(np.int32)
            ids_g[ground_g] = TERRAIN
            road = ground_g & (x_g > w.road[0]) & (x_g < w.road[1])
            outside = np.maximum(x_g - w.road[1], w.road[0] - x_g)  # distance beyond the kerb
            sidewalk = ground_g & ~road & np.where(x_g > 0, outside < w.sidewalk[1], outside < w.sidewalk[0])
            ids_g[sidewalk] = SIDEWALK
            ids_g[sidewalk & (outside < 0.25)] = CURB
            ids_g[road] = ROAD
            ids_g[road & self._markings(x_g, z_g, ground_cell)] = MARKING
            # texture: tile and texels per metre from the material; (z, x) on the ground, (z, y) on
            # the planes, the cloud plane 800 m up in the sky
            u, v = hz.copy(), hy.copy()
            np.copyto(v, hx, where=ground)
            cloud = 800 / dy
            np.copyto(u, cx + w.wind[0] * t + cloud * dx, where=sky)
            np.copyto(v, cz + w.wind[1] * t + cloud * dz, where=sky)
            scale = np.take(w.scale, ids)
            texel = ((u * scale).astype(np.int32) & (TEXTURE - 1)) * TEXTURE + ((v * scale).astype(np.int32)
                                                                              & (TEXTURE - 1))
            texture = np.take(w.textures, np.take(w.tile, ids) * TEXTURE ** 2 + texel) * np.float32(1 / 255)
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
            out.add("box", CLASS_ID["car"], d[near], 0, centre=point(x[near], 0.33, z[near] + axle * length[near]),
                    half=point(width[near] / 2 + 0.02, 0.33, 0.33), colour=faces((25, 25, 25), np.count_nonzero(near)))
        out.add("box", CLASS_ID["car"], d, 1, centre=point(x, (0.28 + top) / 2, z),
                half=point(width / 2, (top - 0.28) / 2, length / 2), colour=faces(cars["paint"][i], n))
        cabin = np.array(faces(cars["glass"][i], n))
        cabin[:, 3] = cars["paint"][i]
        out.add("box", CLASS_ID["car"], d, 2, centre=point(x, (top + height) / 2, z - 0.08 * length * heading),
                half=point(width / 2 - 0.08, (height - top) / 2, length * cars["cabin"][i] / 2), colour=cabin)
        towards = np.sign(centre[2] - z[near])  # the end of the car that faces the camera
        end = z[near] + towards * (length[near] / 2 + 0.01)
        rear = towards != heading[near]
        for side in (-0.35, 0.35):
            lx = x[near] + side * width[near]
            low, high = top[near] - 0.25, top[near] - 0.1
            quad = np.stack([point(lx - 0.15, high, end), point(lx + 0.15, high, end), point(lx + 0.15, low, end),
                             point(lx - 0.15, low, end)], 1)
            out.add("poly", CLASS_ID["car"], d[near] - 0.01, 3, points=pad_polygons(quad),
                    colour=np.where(rear[:, None], (200, 30, 30), (235, 235, 215)))
        # people: two legs (swinging while walking), torso, head (hair on top)
        persons = w.persons
        i, x, z, d, n = placed(persons, 2)
        height, width = persons["height"][i], persons["width"][i]
        stride, speed = persons["stride"][i], persons["speed"][i]
        swing = 0.25 * stride * np.sin(persons["phase"][i] + 2 * math.pi * np.abs(speed) * t / stride) * (speed != 0)
        hip, shoulder = 0.48 * height, 0.82 * height
        for side, step in ((-0.25, swing), (0.25, -swing)):
            out.add("box", CLASS_ID["person"], d, 0, centre=point(x + side * width, hip / 2, z + step),
                    half=point(0.1, hip / 2, 0.1), colour=faces(persons["trousers"][i], n))
        out.add("box", CLASS_ID["person"], d, 1, centre=point(x, (hip + shoulder) / 2, z),
                half=point(width / 2, (shoulder - hip) / 2, 0.13), colour=faces(persons["shirt"][i], n))
        head = np.array(faces(persons["skin"][i], n))
        head[:, 3] = persons["hair"][i]
        size = (height - shoulder) / 2
        out.add("box", CLASS_ID["person"], d, 2, centre=point(x, shoulder + size + 0.02, z),
                half=point(0.1, size, 0.11), colour=head)
        # poles and their signs
        poles = w.poles
        i, x, z, d, n = placed(poles, 1)
        out.add("box", CLASS_ID["pole"], d, 0, centre=point(x, poles["height"][i] / 2, z),
                half=point(poles["thickness"][i] / 2, poles["height"][i] / 2, poles["thickness"][i] / 2),
                colour=faces(poles["colour"][i], n))
        shown = np.isin(poles["sign_pole"], i)
        out.add("poly", CLASS_ID["traffic sign"], d[np.searchsorted(i, poles["sign_pole"][shown])] - 0.05,
                1 + np.arange(np.count_nonzero(shown)) % 2, points=poles["sign_outline"][shown],
                colour=poles["sign_colour"][shown])
        # trees: trunk and crown blobs
        trees = w.trees
        i, x, z, d, n = placed(trees, 3)
        reach = (trees["trunk"][i] + trees["radius"][i]) / 2
        out.add("box", CLASS_ID["vegetation"], d, 0, centre=point(x, reach, z),
                half=point(trees["thickness"][i] / 2, reach, trees["thickness"][i] / 2),
                colour=faces(trees["bark"][i], n))
        out.add("sphere", CLASS_ID["vegetation"], np.repeat(d, BLOBS) - 0.01, np.tile(1 + np.arange(BLOBS), n),
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
        polygons = [pad_polygons(face_points), (items.stacked("poly", "points", (POLY, 3)) - centre) @ rotation]
        colours = [items.stacked("box", "colour", (6, 3))[box, face] * face_shade[face, None],
                   items.stacked("poly", "colour", (3,)), items.stacked("sphere", "colour", (3,))]
        labels, depths, orders = ([items.stacked("box", name, ())[box], items.stacked("poly", name, ()),
                                   items.stacked("sphere", name, ())] for name in ("label", "depth", "order"))
        polygons = np.concatenate(polygons)  # (F + P, POLY, 3) camera coordinates
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
        u = ((cols - materials.sphere_centre[blob, 0]) * texels).astype(np.int32) & (TEXTURE - 1)
        v = ((rows - materials.sphere_centre[blob, 1]) * texels).astype(np.int32) & (TEXTURE - 1)
        texture = np.take(self._world.textures, T_LEAVES * TEXTURE ** 2 + u * TEXTURE + v)
        factor[rows, cols] = 1 + self._world.amp[HEDGE] * (texture * np.float32(2 / 255) - 1)

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
        sky = ids == SKY
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


def _fraction(values: np.ndarray) -> np.ndarray:
    """``values mod 1`` (much faster than ``%`` on floats)."""
    return values - np.floor(values)


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


__all__ = ["Renderer"]
