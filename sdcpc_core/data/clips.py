"""Clip sampling: which frames form a training / evaluation clip.

A clip is the reference frames followed by the target, **target last**, the order
``SDCPC.forward_clip`` expects: with the default offsets ``(9, 6, 3)`` the clip of target ``t`` is
``[t-9, t-6, t-3, t]`` (spec section 2, the protocol of CFFM / MRCFA / TV3S).

Near the start of a video the references are clamped to the first frame, so a clip may repeat a
frame (``t = 4`` gives ``[0, 0, 1, 4]``). The streaming node sees exactly such clips after every
start or reset of its cache, so :class:`ClipSampler` draws targets from the first frames of a
video with probability ``p_start`` to train on them on purpose. With probability ``p_reverse`` a
clip is taken in reversed time (references after the target), a simple augmentation.

All randomness comes from a ``numpy.random.Generator`` passed in by the caller: the same
generator state gives the same clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ['reference_indices', 'ClipIndex', 'ClipSampler', 'DEFAULT_OFFSETS']

DEFAULT_OFFSETS = (9, 6, 3)


def _check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    offsets = tuple(int(o) for o in offsets)
    if any(o < 0 for o in offsets):
        raise ValueError(f'reference offsets must be >= 0, got {offsets}')
    return offsets


def reference_indices(target: int, offsets: Sequence[int] = DEFAULT_OFFSETS,
                      num_frames: int | None = None, reverse: bool = False) -> list[int]:
    """Frame indices of the references of ``target``, in clip order (the target is not included).

    Forward time: ``target - o`` for each offset, clamped at 0 (duplicates allowed).
    ``reverse=True``: ``target + o``, clamped at ``num_frames - 1`` (which is then required).
    """
    offsets = _check_offsets(offsets)
    target = int(target)
    if target < 0 or (num_frames is not None and target >= num_frames):
        raise ValueError(f'target frame {target} is outside the video (0..{num_frames})')
    if not reverse:
        return [max(0, target - o) for o in offsets]
    if num_frames is None:
        raise ValueError('reverse=True needs num_frames to clamp at the end of the video')
    return [min(int(num_frames) - 1, target + o) for o in offsets]


@dataclass(frozen=True)
class ClipIndex:
    """One sampled clip: ``frames`` are indices into the video, target last."""

    video: int
    target: int
    frames: tuple[int, ...]
    reversed: bool = False


class ClipSampler:
    """Draws training clips.

    Args:
        video_lengths: number of frames of every video.
        offsets: reference offsets (frames before the target).
        labelled: per video, the frame indices that may be targets (default: every frame).
            Cityscapes, for instance, labels one frame of each 30-frame snippet.
        p_start: probability that a clip's target is drawn from the targets that lie in the first
            ``max(offsets)`` frames of its video (so its references are clamped/duplicated),
            when the video has such targets.
        p_reverse: probability of a time-reversed clip (references after the target).

    A video is chosen with probability proportional to its number of targets, i.e. targets are
    uniform over the whole set, except for the ``p_start`` draws.
    """

    def __init__(self, video_lengths: Sequence[int], offsets: Sequence[int] = DEFAULT_OFFSETS,
                 labelled: Sequence[Sequence[int]] | None = None, p_start: float = 0.1,
                 p_reverse: float = 0.0):
        self.offsets = _check_offsets(offsets)
        for name, p in (('p_start', p_start), ('p_reverse', p_reverse)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {p}')
        self.p_start = float(p_start)
        self.p_reverse = float(p_reverse)
        self.video_lengths = [int(n) for n in video_lengths]
        if labelled is None:
            labelled = [range(n) for n in self.video_lengths]
        if len(labelled) != len(self.video_lengths):
            raise ValueError(f'labelled has {len(labelled)} entries for {len(self.video_lengths)} videos')
        self.targets = []
        for v, (n, cand) in enumerate(zip(self.video_lengths, labelled)):
            cand = np.asarray(sorted(int(c) for c in cand), dtype=np.int64)
            if cand.size and (cand[0] < 0 or cand[-1] >= n):
                raise ValueError(f'video {v}: labelled frame indices must lie in 0..{n - 1}')
            self.targets.append(cand)
        counts = np.array([t.size for t in self.targets], dtype=np.float64)
        if counts.sum() == 0:
            raise ValueError('ClipSampler needs at least one video with a labelled frame')
        self._video_p = counts / counts.sum()
        span = max(self.offsets) if self.offsets else 0
        self.start_targets = [t[t < span] for t in self.targets]
        start_counts = np.array([t.size for t in self.start_targets], dtype=np.float64)
        self._start_p = start_counts / start_counts.sum() if start_counts.sum() else None

    def __len__(self) -> int:
        """Number of distinct (video, target) pairs."""
        return int(sum(t.size for t in self.targets))

    def sample(self, rng: np.random.Generator) -> ClipIndex:
        """One clip; deterministic given ``rng``'s state."""
        if self._start_p is not None and rng.random() < self.p_start:
            video = int(rng.choice(len(self._start_p), p=self._start_p))
            cand = self.start_targets[video]
        else:
            video = int(rng.choice(len(self._video_p), p=self._video_p))
            cand = self.targets[video]
        target = int(cand[rng.integers(cand.size)])
        reverse = self.p_reverse > 0 and rng.random() < self.p_reverse
        refs = reference_indices(target, self.offsets, self.video_lengths[video], reverse=reverse)
        return ClipIndex(video, target, (*refs, target), bool(reverse))

    def sample_many(self, rng: np.random.Generator, count: int) -> list[ClipIndex]:
        return [self.sample(rng) for _ in range(int(count))]
