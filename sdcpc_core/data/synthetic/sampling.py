"""Seeded random streams and the small draws every part of the generator makes.

Each purpose draws from its own stream, keyed by ``(seed, stream...)``, so that what one part draws
never shifts what another gets: that is what makes a frame a pure function of ``(config, seed, index)``.
"""
from __future__ import annotations

import numpy as np


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator per ``(seed, stream...)``: what one stream draws never shifts another."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def uniform(rng: np.random.Generator, bounds, size=None):
    return rng.uniform(bounds[0], bounds[1], size)


def jitter(rng: np.random.Generator, rgb, amount: float, size=None) -> np.ndarray:
    """``rgb`` (3,) plus uniform noise of +-``amount`` per channel, clipped to 0..255."""
    shape = (3,) if size is None else (size, 3)
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, shape), 0, 255).astype(np.float32)


def pick(rng: np.random.Generator, palette, n: int) -> np.ndarray:
    """``(n, 3)`` float32 colours drawn from ``palette``."""
    return np.asarray(palette, np.float32)[rng.integers(len(palette), size=n)]


__all__ = ["jitter", "pick", "stream_rng", "uniform"]
