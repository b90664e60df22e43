"""Segmentation metrics: confusion-matrix mIoU and VSPW's video consistency (mVC).

Both follow the VSPW definitions (spec section 4):

* **mIoU**: one confusion matrix accumulated over every evaluated frame;
  ``IoU_c = TP / (TP + FP + FN)``; classes with no ground-truth pixel in the whole set are left out
  of the mean.
* **mVC_n**: the fraction of the pixels whose ground truth stays constant over a window of ``n``
  consecutive frames whose prediction stays constant as well, averaged over all windows of all
  videos. Two modes, see :func:`video_consistency`.
* **mVC_n correct** (``mVC8_correct``; ``video_consistency(..., correct=True)``): the same windows and
  denominators, but a pixel counts only when its prediction is *correct* in all ``n`` frames (hence
  also stable). mVC rewards a prediction that stays the same whether or not it is right (a model
  that always says "road" scores 100); this one rewards only stability that is right, so it is
  ``<= mVC_n`` window by window and, unlike mVC, cannot be raised by smoothing wrong answers.

Arrays are numpy or torch integer arrays; torch tensors are moved to the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ['ConfusionMatrix', 'video_consistency', 'consistency_scores', 'VC_MODES']

VC_MODES = ('vspw', 'corrected')

# Length cut of the public VSPW evaluation scripts: videos with this many frames or fewer are
# skipped (``if len(images) <= clip_num: continue`` with ``clip_num = 16``).
_VSPW_MIN_FRAMES_EXCLUSIVE = 16


def _to_numpy(x) -> np.ndarray:
    """A numpy view/copy of a numpy array or torch tensor (any device)."""
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, 'detach', None)
    if detach is not None:  # torch.Tensor, without importing torch here
        return detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix; rows = ground truth, columns = prediction.

    Args:
        num_classes: K, the number of train ids (0..K-1).
        ignore_index: ground-truth value that is skipped (default 255).

    Ground-truth values outside ``0..K-1`` other than ``ignore_index`` raise ``ValueError``
    (they mean the label mapping is wrong); so do prediction values outside ``0..K-1`` at
    pixels that are evaluated.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[...] = 0

    def update(self, gt, pred) -> None:
        """Adds one batch of pixels. ``gt`` and ``pred``: integer arrays of the same shape."""
        gt = _to_numpy(gt)
        pred = _to_numpy(pred)
        if gt.shape != pred.shape:
            raise ValueError(f'gt and pred must have the same shape, got {gt.shape} and {pred.shape}')
        for name, a in (('gt', gt), ('pred', pred)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
                raise ValueError(f'{name} must be an integer array, got dtype {a.dtype}')
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        keep = gt != self.ignore_index
        gt = gt[keep]
        pred = pred[keep]
        k = self.num_classes
        if gt.size == 0:
            return
        if gt.min() < 0 or gt.max() >= k:
            bad = gt[(gt < 0) | (gt >= k)][0]
            raise ValueError(
                f'ground truth value {bad} is neither a class id in 0..{k - 1} '
                f'nor the ignore index {self.ignore_index}')
        if pred.min() < 0 or pred.max() >= k:
            bad = pred[(pred < 0) | (pred >= k)][0]
            raise ValueError(f'prediction value {bad} is outside the class ids 0..{k - 1}')
        counts = np.bincount(gt * k + pred, minlength=k * k)
        self.matrix += counts.reshape(k, k)

    def merge(self, other: ConfusionMatrix | np.ndarray) -> ConfusionMatrix:
        """Adds another matrix (a ``ConfusionMatrix`` or a ``(K, K)`` array, e.g. after an
        all-reduce across processes) into this one; returns ``self``."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else _to_numpy(other)
        if m.shape != self.matrix.shape:
            raise ValueError(f'cannot merge a {m.shape} matrix into a {self.matrix.shape} one')
        self.matrix += m.astype(np.int64)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU, ``(K,)`` float64.

        ``NaN`` for every class with no ground-truth pixel in the whole set (even if it was
        predicted: such false positives still lower the IoU of the true classes, but the class
        itself is left out of the mean, as in VSPW's evaluator).
        """
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt_count = m.sum(axis=1)
        union = gt_count + m.sum(axis=0) - tp
        out = np.full(self.num_classes, np.nan)
        present = gt_count > 0
        out[present] = tp[present] / union[present]
        return out

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth; ``NaN`` if there is none."""
        iou = self.iou()
        if np.all(np.isnan(iou)):
            return float('nan')
        return float(np.nanmean(iou))

    def pixel_accuracy(self) -> float:
        """Correct pixels / evaluated pixels; ``NaN`` if nothing was evaluated."""
        total = self.matrix.sum()
        if total == 0:
            return float('nan')
        return float(np.trace(self.matrix) / total)


def _window_ratios(gt: np.ndarray, pred: np.ndarray, n: int, starts: range,
                   mask_ignore: bool, ignore_index: int) -> list[tuple[float, float]]:
    """Per-window ``(stable, correct)`` ratios for one video; windows with an empty denominator are
    left out (the public script yields NaN there and drops it with ``nanmean``)."""
    out = []
    for i in starts:
        g = gt[i:i + n]
        p = pred[i:i + n]
        gt_const = np.all(g == g[0], axis=0)
        if mask_ignore:
            gt_const &= ~np.any(g == ignore_index, axis=0)
        den = int(gt_const.sum())
        if den == 0:
            continue
        pred_const = np.all(p == p[0], axis=0)
        # ground truth constant and prediction equal to it in every frame: correct and stable. An ignore
        # pixel (kept in the vspw mode) has no class to be right about, so it never counts as correct.
        correct = gt_const & np.all(p == g, axis=0) & (g[0] != ignore_index)
        out.append((float((gt_const & pred_const).sum()) / den, float(correct.sum()) / den))
    return out


def video_consistency(gt_videos: Sequence, pred_videos: Sequence, n: int = 8,
                      mode: str = 'vspw', ignore_index: int = 255, correct: bool = False) -> float:
    """Video consistency mVC_n in [0, 1] (with ``correct=True``: mVC_n correct, see below).

    Args:
        gt_videos, pred_videos: lists of videos, each a ``(T, H, W)`` integer array (numpy or
            torch) of train ids, ``ignore_index`` = ignore; ``pred_videos[v]`` must have the
            shape of ``gt_videos[v]``.
        n: window length in frames (8 and 16 are the published ones).
        mode: ``'vspw'`` or ``'corrected'``.

    For a window of frames ``i..i+n-1`` the denominator is the set of pixels whose ground truth
    is the same in all ``n`` frames, the numerator those of them whose prediction is also the
    same in all ``n`` frames (the prediction is *not* compared with the ground truth). Each
    window gives a ratio; the result is the mean of the ratios of all windows of all videos.
    Windows with an empty denominator are left out.

    ``mode='vspw'`` reproduces the public VSPW script ``VC_perclip.py`` (repository
    ``sssdddwww2/CVPR2021_VSPW_Implement``, function ``get_common``; the same function is in the
    evaluation scripts that CFFM / MRCFA use to report mVC8 and mVC16):

    * videos with 16 frames or fewer are skipped (``len(images) <= 16``; the peers' script keeps
      this 16-frame cut for mVC8 too; the VSPW script sets the cut to its single ``clip_num``,
      which equals 16 in the published file);
    * window starts ``range(L - n)``: the last possible window (start ``L - n``) is dropped;
    * ignore pixels are not masked: an ignore pixel that stays ignore counts like a class.
      (Those scripts read the raw VSPW masks, or map 0 -> 255 and 255 -> 255 like here, so raw 0
      and 255 become one value; a raw pixel switching between 0 and 255 is "changing" there and
      "constant" here, a negligible difference.)
    * ratios averaged with ``nanmean`` over all windows, i.e. windows with an empty denominator
      are dropped.

    ``mode='corrected'``: a pixel that is ``ignore_index`` in any frame of the window is
    excluded from the denominator (and hence the numerator); every window is used
    (``range(L - n + 1)``); no length cut (a video with ``L >= n`` frames contributes).

    ``correct=True`` gives **mVC_n correct**: the same windows, videos and denominators as mVC_n in
    that mode, but the numerator holds only the pixels whose prediction equals the ground truth in
    all ``n`` frames, i.e. the share of ground-truth-stable pixels whose prediction is correct and
    stable over the window. Window by window it is ``<= mVC_n`` and ``<=`` the window's pixel
    accuracy over those pixels; only stability that is right counts. In the ``vspw`` mode an ignore
    pixel that stays ignore is in the denominator (as for mVC) and never in the numerator, since it
    has no class to be right about; the ``corrected`` mode leaves such pixels out altogether.

    Raises:
        ValueError: unknown mode, mismatched inputs, or no window at all in any video.
    """
    ratios, lengths = _all_window_ratios(gt_videos, pred_videos, (n,), mode, ignore_index)
    if not ratios[int(n)]:
        cut = (f'more than {_VSPW_MIN_FRAMES_EXCLUSIVE} frames and more than {n}'
               if mode == 'vspw' else f'at least {n}')
        raise ValueError(
            f'video consistency (mode {mode!r}, n={n}) has no window to evaluate: it needs videos '
            f'with {cut} frames and some pixel with constant ground truth; got video lengths '
            f'{lengths[:10]}{"..." if len(lengths) > 10 else ""}')
    return float(np.mean([pair[int(bool(correct))] for pair in ratios[int(n)]]))


def consistency_scores(gt_videos: Sequence, pred_videos: Sequence, windows: Sequence[int] = (8, 16),
                       mode: str = 'vspw', ignore_index: int = 255) -> dict[str, float]:
    """``{"mVC8": .., "mVC16": .., "mVC8_correct": .., "mVC16_correct": ..}`` (for ``windows=(8, 16)``)
    in [0, 1], NaN where no window fits; each video is read once (see :func:`video_consistency`).

    Inputs and errors as :func:`video_consistency`, except that a window length without any window
    gives NaN instead of raising.
    """
    ratios, _ = _all_window_ratios(gt_videos, pred_videos, windows, mode, ignore_index)
    scores = {}
    for suffix, k in (('', 0), ('_correct', 1)):
        for n in windows:
            values = [pair[k] for pair in ratios[int(n)]]
            scores[f'mVC{int(n)}{suffix}'] = float(np.mean(values)) if values else float('nan')
    return scores


def _all_window_ratios(gt_videos: Sequence, pred_videos: Sequence, windows: Sequence[int], mode: str,
                       ignore_index: int) -> tuple[dict[int, list[tuple[float, float]]], list[int]]:
    """Per window length, the ``(stable, correct)`` ratios of all windows of all videos; the video lengths."""
    if mode not in VC_MODES:
        raise ValueError(f'unknown video consistency mode {mode!r}; expected one of {VC_MODES}')
    windows = [int(n) for n in windows]
    for n in windows:
        if n < 2:
            raise ValueError(f'window length n must be >= 2, got {n}')
    if len(gt_videos) != len(pred_videos):
        raise ValueError(f'got {len(gt_videos)} ground-truth videos but {len(pred_videos)} predicted ones')
    ratios: dict[int, list[tuple[float, float]]] = {n: [] for n in windows}
    lengths = []
    for idx, (g, p) in enumerate(zip(gt_videos, pred_videos)):
        g = _to_numpy(g)
        p = _to_numpy(p)
        if g.ndim != 3 or g.shape != p.shape:
            raise ValueError(
                f'video {idx}: ground truth and prediction must both be (T, H, W) of the same '
                f'shape, got {g.shape} and {p.shape}')
        length = g.shape[0]
        lengths.append(length)
        if mode == 'vspw' and length <= _VSPW_MIN_FRAMES_EXCLUSIVE:
            continue
        for n in windows:
            starts = range(length - n) if mode == 'vspw' else range(length - n + 1)
            ratios[n].extend(_window_ratios(g, p, n, starts, mode == 'corrected', ignore_index))
    return ratios, lengths
