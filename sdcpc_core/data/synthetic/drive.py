"""``SyntheticDrive``: one synthetic video, frame by frame (a ``World``, its ``Renderer`` and ``CameraEffects``)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .config import CORRUPTIONS, SyntheticConfig
from .corruptions import CameraEffects, schedule
from .rendering import Renderer
from .sampling import stream_rng
from .scene import World

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SyntheticFrame:
    """One frame of a synthetic video."""

    index: int  # position in the video (0..num_frames-1), counting dropped frames too
    stamp_ns: int  # index * 1e9 / fps plus the optional jitter, in integer nanoseconds
    image: np.ndarray  # (H, W, 3) uint8 RGB, corrupted as a camera would deliver it
    labels: np.ndarray  # (H, W) uint8 Cityscapes train ids of the TRUE scene, 255 = ignore
    corruptions: tuple[str, ...]  # names of the corruptions of this frame (see CORRUPTIONS)


_HEAP_PAD = 64 << 20  # bytes of free heap glibc keeps instead of returning them to the system
_heap_tuned = False


def keep_heap() -> None:
    """Asks glibc (where it is the C library) to keep ``_HEAP_PAD`` bytes at the top of the heap.

    A frame allocates and frees some 30 MB of NumPy temporaries; by default glibc hands the freed
    top of the heap back to the kernel and page-faults it in again on the next frame, which doubles
    the time per frame. Once per process; a no-op elsewhere (musl, macOS, Windows).

    An opt-in for processes that do little else than render frames (``write_vspw``'s worker
    processes, the ``sdcpc-synth`` and ``sdcpc-bag synth`` commands): it changes the allocator of the
    whole process, so building a ``SyntheticDrive`` never calls it.
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
        self._world = World(config, self.seed)
        self._events = schedule(config, self.seed)
        self._renderer = Renderer(config, self._world)
        self.focal = self._renderer.focal
        self._effects = CameraEffects(config, self.seed, self._events)

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
            stamp += stream_rng(self.seed, 2, index).uniform(-1, 1) * self.config.stamp_jitter_ms * 1e6
        return max(round(stamp), 0)

    def _check(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"frame index must be an integer in 0..{len(self) - 1}, got {index!r}")
        return int(index)

    def frame(self, index: int) -> SyntheticFrame:
        """Frame ``index`` (dropped or not): the same ``(config, seed, index)`` gives bitwise the same frame."""
        index = self._check(index)
        image, labels = self._renderer.render(index / self.config.fps)
        corruptions = self.corruptions(index)
        return SyntheticFrame(index, self.stamp_ns(index), self._effects.apply(image, index, corruptions), labels,
                              corruptions)


__all__ = ["SyntheticDrive", "SyntheticFrame", "keep_heap"]
