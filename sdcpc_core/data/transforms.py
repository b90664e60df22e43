"""Clip-consistent augmentation (numpy + OpenCV).

Every random parameter is drawn once per clip and applied to every frame (and label) of it, so
that the frames of a clip stay aligned with each other, which the cross-frame attention relies on
(spec section 2: "same augmentation for every frame of a clip").

Training pipeline (:class:`ClipTrainTransform`), in the order of mmsegmentation's SegFormer /
CFFM configs:

1. random resize: ratio ``r`` uniform in ``ratio_range`` (0.5-2.0) around ``base_scale``
   ((853, 480) for VSPW), keeping the aspect ratio: the image is scaled by
   ``min(r*max(base)/long_side, r*min(base)/short_side)``; bilinear for images, nearest for labels;
2. random crop to ``crop_size`` with ``cat_max_ratio``: up to 10 crop positions are tried and the
   first one where no single class covers ``cat_max_ratio`` or more of the non-ignore pixels of
   the target label (and at least two classes are present) is taken; if none qualifies, the try
   with the smallest largest-class fraction is used (mmseg would use an unchecked 11th position);
3. horizontal flip with probability ``flip_prob``;
4. photometric distortion (mmseg ``PhotoMetricDistortion`` ranges and order): brightness delta
   uniform in [-32, 32] (p = 0.5); contrast factor in [0.5, 1.5] (p = 0.5) applied first or last
   (a coin decides); saturation factor in [0.5, 1.5] (p = 0.5) and hue shift uniform integer in
   [-18, 18) on OpenCV's 0..179 hue scale (p = 0.5) in HSV; each step rounds to uint8;
5. ImageNet normalisation; padding to ``crop_size`` (images with 0 after normalisation, labels
   with 255);
6. tensors: images ``(T, 3, H, W)`` float32, target label ``(H, W)`` int64 and, when per-frame
   labels are given, labels ``(T, H, W)`` int64 (255 for frames without a label).

Inputs: frames are ``(H, W, 3)`` uint8 **RGB**; labels ``(H, W)`` uint8 train ids, 255 = ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'ClipTrainTransform', 'ClipEvalTransform',
           'normalize_to_tensor', 'rescale_size']

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE = 255


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio target size ``(new_h, new_w)`` that fits ``scale = (long, short)`` (either order):
    the long side <= max(scale) and the short side <= min(scale), one of them reached."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _resize(img: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def normalize_to_tensor(frames: Sequence[np.ndarray], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """RGB uint8 frames ``(H, W, 3)`` -> normalised float32 ``(T, 3, H, W)``."""
    arr = np.stack([np.asarray(f) for f in frames]).astype(np.float32)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _max_class_fraction(label: np.ndarray) -> tuple[int, float]:
    """(number of non-ignore classes, largest class fraction among non-ignore pixels)."""
    values, counts = np.unique(label, return_counts=True)
    counts = counts[values != IGNORE]
    if counts.size == 0:
        return 0, 1.0
    return int(counts.size), float(counts.max() / counts.sum())


@dataclass(frozen=True)
class _Photo:
    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def _apply_photo(img: np.ndarray, p: _Photo) -> np.ndarray:
    if p.brightness is not None:
        img = _convert(img, beta=p.brightness)
    if p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    if p.saturation is not None or p.hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        if p.saturation is not None:
            hsv[..., 1] = _convert(hsv[..., 1], alpha=p.saturation)
        if p.hue is not None:
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + p.hue) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    return img


class ClipTrainTransform:
    """Training augmentation of one clip; see the module docstring for the steps.

    Args:
        crop_size: ``(h, w)`` of the output (480, 480 for VSPW).
        base_scale: ``(long, short)`` scale the ratio multiplies ((853, 480) for VSPW).
        ratio_range: range of the random resize ratio.
        cat_max_ratio: largest fraction one class may cover in the crop (1.0 disables the check).
        flip_prob: probability of a horizontal flip.
        photometric: whether to apply the photometric distortion.
        mean, std: normalisation (RGB, 0..255 scale).
    """

    def __init__(self, crop_size=(480, 480), base_scale=(853, 480), ratio_range=(0.5, 2.0),
                 cat_max_ratio: float = 0.75, flip_prob: float = 0.5, photometric: bool = True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.base_scale = (int(base_scale[0]), int(base_scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f'ratio_range must be 0 < low <= high, got {ratio_range}')
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.mean, self.std = mean, std

    # -- parameter draws (once per clip) --------------------------------------------------
    def _draw_photo(self, rng: np.random.Generator) -> _Photo:
        brightness = float(rng.uniform(-32, 32)) if rng.integers(2) else None
        contrast_first = bool(rng.integers(2))
        contrast = float(rng.uniform(0.5, 1.5)) if rng.integers(2) else None
        saturation = float(rng.uniform(0.5, 1.5)) if rng.integers(2) else None
        hue = int(rng.integers(-18, 18)) if rng.integers(2) else None
        return _Photo(brightness, contrast, contrast_first, saturation, hue)

    def _choose_crop(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        ch, cw = self.crop_size
        h, w = label.shape
        margin_h, margin_w = max(h - ch, 0), max(w - cw, 0)
        best = None
        for _ in range(10):
            y = int(rng.integers(margin_h + 1))
            x = int(rng.integers(margin_w + 1))
            if self.cat_max_ratio >= 1.0:
                return y, x
            n_cls, frac = _max_class_fraction(label[y:y + ch, x:x + cw])
            if n_cls > 1 and frac < self.cat_max_ratio:
                return y, x
            if best is None or frac < best[0]:
                best = (frac, y, x)
        return best[1], best[2]

    # -- the transform ----------------------------------------------------------------------
    def __call__(self, frames: Sequence[np.ndarray], labels, rng: np.random.Generator) -> dict:
        """Augments one clip.

        Args:
            frames: T RGB uint8 frames ``(H, W, 3)`` of one size, target last.
            labels: the target's label ``(H, W)`` uint8, or a list of T labels (``None`` for a
                frame without one; the last, the target's, is required).
            rng: the generator all parameters are drawn from.

        Returns:
            dict with ``images`` ``(T, 3, ch, cw)`` float32, ``label`` ``(ch, cw)`` int64 and, when
            a list of labels was given, ``labels`` ``(T, ch, cw)`` int64.
        """
        frames = [np.asarray(f) for f in frames]
        per_frame = isinstance(labels, (list, tuple))
        label_list = list(labels) if per_frame else [None] * (len(frames) - 1) + [labels]
        if len(label_list) != len(frames) or label_list[-1] is None:
            raise ValueError('labels must be the target label or a list with one entry per frame, '
                             'the last (target) one not None')
        h, w = frames[0].shape[:2]
        for f in frames:
            if f.shape != (h, w, 3) or f.dtype != np.uint8:
                raise ValueError(f'every frame must be ({h}, {w}, 3) uint8, got {f.shape} {f.dtype}')
        for lab in label_list:
            if lab is not None and np.asarray(lab).shape != (h, w):
                raise ValueError(f'labels must be ({h}, {w}), got {np.asarray(lab).shape}')

        # 1. resize
        ratio = float(rng.uniform(*self.ratio_range))
        scale = (int(self.base_scale[0] * ratio), int(self.base_scale[1] * ratio))
        size = rescale_size(h, w, scale)
        frames = [_resize(f, size, nearest=False) for f in frames]
        label_list = [None if lab is None else _resize(np.asarray(lab, np.uint8), size, nearest=True)
                      for lab in label_list]
        # 2. crop (chosen on the target's label)
        y, x = self._choose_crop(label_list[-1], rng)
        ch, cw = self.crop_size
        frames = [f[y:y + ch, x:x + cw] for f in frames]
        label_list = [None if lab is None else lab[y:y + ch, x:x + cw] for lab in label_list]
        # 3. flip
        if rng.random() < self.flip_prob:
            frames = [f[:, ::-1] for f in frames]
            label_list = [None if lab is None else lab[:, ::-1] for lab in label_list]
        # 4. photometric distortion, the same draws for every frame
        if self.photometric:
            photo = self._draw_photo(rng)
            frames = [_apply_photo(np.ascontiguousarray(f), photo) for f in frames]
        # 5./6. normalise, pad, tensors
        images = normalize_to_tensor(frames, self.mean, self.std)
        fh, fw = images.shape[-2:]
        pad_h, pad_w = ch - fh, cw - fw
        if pad_h or pad_w:
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), value=0.0)
        lab_arr = np.full((len(frames), ch, cw), IGNORE, dtype=np.int64)
        for i, lab in enumerate(label_list):
            if lab is not None:
                lab_arr[i, :fh, :fw] = lab
        out = {'images': images, 'label': torch.from_numpy(lab_arr[-1].copy())}
        if per_frame:
            out['labels'] = torch.from_numpy(lab_arr)
        return out


class ClipEvalTransform:
    """Evaluation preprocessing: keep-ratio resize so the short side is ``short_side`` (480),
    then padding at the bottom/right to a multiple of ``size_divisor`` (32) (spec section 2:
    "short side 480, size divisible by 32"). Labels are *not* resized: predictions are scored at
    the label's resolution. Returns ``images`` ``(T, 3, H', W')`` float32 and ``valid_hw``, the
    resized image size before padding (crop the logits to it, then resize to the label size).
    """

    def __init__(self, short_side: int = 480, size_divisor: int = 32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.short_side = int(short_side)
        self.size_divisor = int(size_divisor)
        self.mean, self.std = mean, std

    def __call__(self, frames: Sequence[np.ndarray]) -> dict:
        h, w = np.asarray(frames[0]).shape[:2]
        factor = self.short_side / min(h, w)
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        resized = [_resize(np.asarray(f), size, nearest=False) for f in frames]
        images = normalize_to_tensor(resized, self.mean, self.std)
        d = self.size_divisor
        pad_h = (-size[0]) % d
        pad_w = (-size[1]) % d
        if pad_h or pad_w:
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), value=0.0)
        return {'images': images, 'valid_hw': size}
