"""What the camera does to the clean radiance: scene light, lens fall-off, always-on lens blur and sensor
noise, and corruption events.

``schedule`` draws, once per video, which frames each kind of event (:data:`CORRUPTIONS`) covers;
``CameraEffects.apply`` turns a frame's float radiance into the uint8 image the camera delivers,
with the events covering it. Each event draws its parameters from its own stream, so all frames of
one event share them (a wiper keeps sweeping the same way).
"""
from __future__ import annotations

import math

import numpy as np

from .config import CORRUPTIONS, SyntheticConfig
from .sampling import jitter, stream_rng, uniform


def schedule(config: SyntheticConfig, seed: int) -> dict[str, np.ndarray]:
    """Per kind, for each frame the start index of the event covering it, or -1."""
    c, n = config, config.num_frames
    events = {}
    for number, kind in enumerate(CORRUPTIONS):
        rng = stream_rng(seed, 1, number)
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


class CameraEffects:
    """Lens blur, corruption events and sensor noise of one video's camera; ``events`` from ``schedule``."""

    def __init__(self, config: SyntheticConfig, seed: int, events: dict[str, np.ndarray]):
        self.config, self.seed, self._events = config, seed, events
        c = config
        # unit Gaussian sensor noise, twice a frame's size (each frame reads a window of it)
        self._noise = stream_rng(seed, 3).standard_normal(2 * c.height * c.width * 3, np.float32) \
            if c.noise_sigma or c.p_noise else None
        self._light = _scene_light(c, seed)
        self._vignette = _vignette(c.height, c.width, c.vignetting) if c.vignetting else None

    def apply(self, image: np.ndarray, index: int, corruptions: tuple[str, ...]) -> np.ndarray:
        """Float radiance -> the uint8 image a camera delivers: light, fall-off, blur, occlusion, exposure, noise."""
        import cv2

        c = self.config
        w = image.shape[1]
        if self._light is not None:  # skipped at the defaults: the frames stay bit-identical
            gains, contrast, pivot = self._light
            image = (image * gains - pivot) * contrast + pivot
        if self._vignette is not None:
            image = image * self._vignette
        if c.lens_blur:
            image = cv2.GaussianBlur(image, (0, 0), c.lens_blur)
        if "blur" in corruptions:
            rng = self._event_rng("blur", index)
            length = max(int(uniform(rng, c.blur_length) * w) | 1, 1)
            angle = rng.normal(0, 25) + (90 if rng.random() < 0.2 else 0)
            kernel = np.zeros((length, length), np.float32)
            r = (length - 1) / 2
            dx, dy = r * math.cos(math.radians(angle)), r * math.sin(math.radians(angle))
            cv2.line(kernel, (round(r - dx), round(r - dy)), (round(r + dx), round(r + dy)), 1.0)
            image = cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
        if "occlusion" in corruptions:
            image = self._occlude(image, index)
        if "flicker" in corruptions:
            rng = self._event_rng("flicker", index)
            stops = uniform(rng, c.flicker_stops) * (1 if rng.random() < 0.5 else -1)
            image = image * np.float32(2.0 ** stops)
        sigma = c.noise_sigma
        if "noise" in corruptions:
            sigma = math.hypot(sigma, uniform(self._event_rng("noise", index), c.heavy_noise_sigma))
        if sigma:  # a window of the drive's noise sequence at a random offset: drawing anew costs 4 ms a frame
            start = int(stream_rng(self.seed, 3, index).integers(image.size + 1))
            image = cv2.scaleAdd(self._noise[start: start + image.size].reshape(image.shape), sigma, image)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    def _event_rng(self, kind: str, index: int) -> np.random.Generator:
        """The generator of the event covering ``index``: the same for all frames of one event."""
        return stream_rng(self.seed, 4, CORRUPTIONS.index(kind), int(self._events[kind][index]))

    def _occlude(self, image: np.ndarray, index: int) -> np.ndarray:
        """A wiper sweeping across, a lens-dirt blob or a glare blob, covering ``occlusion_area`` of the image."""
        import cv2

        c = self.config
        h, w = image.shape[:2]
        rng = self._event_rng("occlusion", index)
        start = int(self._events["occlusion"][index])
        length = int(np.count_nonzero(self._events["occlusion"] == start))
        progress = (index - start + 0.5) / length
        target = float(uniform(rng, c.occlusion_area))
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
                colour, opacity = jitter(rng, (70, 60, 45), 20), float(rng.uniform(0.85, 0.97))
            else:
                colour, opacity = np.float32(600), 1.0  # glare saturates
        softness = max(w / 100, 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), softness)[..., None] * np.float32(opacity)
        return image + (colour - image) * mask


def _scene_light(c: SyntheticConfig, seed: int) -> tuple[np.ndarray, np.float32, np.float32] | None:
    """This video's ``(RGB gains, contrast, pivot)``: ``brightness`` x ``color_cast``, and a contrast factor about
    mid grey after the gain (128 x brightness), so that lower contrast flattens the image without lifting it;
    None when all three knobs are at their defaults (no change)."""
    if c.brightness == (1.0, 1.0) and c.contrast == (1.0, 1.0) and c.color_cast == (1.0, 1.0, 1.0):
        return None
    rng = stream_rng(seed, 5)
    gain, contrast = float(uniform(rng, c.brightness)), float(uniform(rng, c.contrast))
    return np.asarray(c.color_cast, np.float32) * np.float32(gain), np.float32(contrast), np.float32(128 * gain)


def _vignette(height: int, width: int, strength: float) -> np.ndarray:
    """``(H, W, 1)`` float32 lens fall-off ``1 - strength r^2``, ``r`` = distance from the centre, 1 at a corner."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
    x = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    radius2 = (x[None, :] ** 2 * width ** 2 + y[:, None] ** 2 * height ** 2) / np.float32(width ** 2 + height ** 2)
    return (1 - np.float32(strength) * radius2)[..., None].astype(np.float32)


def _pixel(point) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


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


__all__ = ["CameraEffects", "schedule"]
