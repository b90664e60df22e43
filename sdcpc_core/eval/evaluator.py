"""Dataset evaluation of an SD-CPC model: mIoU, per-class IoU and video consistency, in two modes.

``mode="clip"`` scores every labelled frame from its own clip: the references the dataset gives
(``t-9, t-6, t-3``, clamped at the video start) and the target, preprocessed by
``ClipEvalTransform`` (short side ``short_side``, padded to a multiple of 32), through
``model.forward_clip``. A per-frame model (``model.is_temporal`` False, the SegFormer baselines) gets
the target alone.

``mode="streaming"`` runs each video's frames in order through ``StreamingSegmenter`` (the robot's
path: ``encode_frame`` once per frame, a time-keyed reference cache, ``temporal_step``), with stamps
``index x frame period`` so that the cache picks the same ``t-9, t-6, t-3`` references as a clip,
and scores the frames that have labels. Its input size is ``ClipEvalTransform``'s resized size for
the video (the model pads it to a multiple of 32 exactly as the transform does), letterboxed, so
both modes feed identical pixels to the network.

Label maps at the label's resolution come from the logits of the image area, bilinearly resampled to
that resolution, then argmax, with the geometry of ``StreamingSegmenter``'s camera output with
``upsample_logits=True`` (logit cell ``j`` covers input pixels ``4j .. 4j+3``), so the two modes
give the same predictions for the same model.

``smoothing`` (``"ema:0.5"``, ``"window"``, ...; ``sdcpc_core.eval.smoothing``) smooths the model's
probabilities over each video in streaming order, the training-free baselines; it needs
``mode="streaming"`` (the segmenter does it, see ``StreamingSegmenter``).

Scores: one confusion matrix over all scored frames (mIoU, per-class IoU), per-frame accuracy and
mIoU, the agreement of each frame with the previous scored frame of its video (``consistency``:
``video_consistency`` over that pair, corrected mode), and mVC8 / mVC16 with their correct-only
variants mVC8_correct / mVC16_correct (``consistency_scores``) over the scored frames of each video
in the requested ``consistency_mode``. Predictions and labels of a finished video are kept
zlib-compressed for mVC, so memory stays small on long validation sets.
"""
from __future__ import annotations

import copy
import math
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..classes import ClassList
from ..data.datasets import IGNORE
from ..data.transforms import ClipEvalTransform
from ..models.layers import ceil_div
from ..models.sdcpc import SDCPC
from .metrics import VC_MODES, ConfusionMatrix, consistency_scores, video_consistency
from .report import EvaluationReport, OverlayFrame
from .smoothing import parse_smoothing

__all__ = ["evaluate", "EVAL_MODES", "CONSISTENCY_WINDOWS", "Scorer"]

EVAL_MODES = ("clip", "streaming")
CONSISTENCY_WINDOWS = (8, 16)  # the mVC_n window lengths reported

FrameCallback = Callable[[dict, np.ndarray, np.ndarray], None]


class _PackedVideos(Sequence):
    """Per-video ``(T, H, W)`` uint8 stacks kept zlib-compressed; indexing decompresses one video."""

    def __init__(self) -> None:
        self._videos: list[tuple[tuple[int, ...], bytes]] = []

    def append(self, frames: Sequence[np.ndarray]) -> None:
        stack = np.ascontiguousarray(np.stack(frames).astype(np.uint8, copy=False))
        self._videos.append((stack.shape, zlib.compress(stack.tobytes(), 1)))

    def __len__(self) -> int:
        return len(self._videos)

    def __getitem__(self, index: int) -> np.ndarray:
        shape, data = self._videos[index]
        return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(shape)


def _consistency(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], n: int, mode: str) -> float:
    """``video_consistency`` of ``n``-frame windows; NaN when no window fits (too few or too short videos)."""
    try:
        return video_consistency(gt, pred, n, mode, IGNORE)
    except ValueError:
        return math.nan


def _label_map(logits: torch.Tensor, area_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Class ids ``(out_h, out_w)`` uint8/uint16 from logits ``(1, K, >= ceil(h/4), >= ceil(w/4))`` of an
    image resized to ``area_hw = (h, w)`` (padding beyond it is cropped off).

    The logits are resampled bilinearly (``align_corners=False``) with the exact scale ``4 out / area``,
    so output pixel ``i`` reads logit coordinate ``(i + 0.5) area / (4 out) - 0.5``, clamped at the
    border; a replicated last row / column only makes the output large enough before the crop.
    """
    (h, w), (out_h, out_w) = area_hw, out_hw
    logits = logits[..., : ceil_div(h, 4), : ceil_div(w, 4)].float()
    logits = F.pad(logits, (0, 1, 0, 1), mode="replicate")
    scale = (4.0 * out_h / h, 4.0 * out_w / w)
    upsampled = F.interpolate(logits, scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
    labels = upsampled[0, :, :out_h, :out_w].argmax(dim=0)
    dtype = np.uint8 if logits.shape[1] <= 255 else np.uint16
    return labels.cpu().numpy().astype(dtype)


class Scorer:
    """Accumulates the scores of one evaluation, video by video."""

    def __init__(self, classes: ClassList, consistency_mode: str, overlay_slots: set[int],
                 on_frame: FrameCallback | None) -> None:
        self.classes = classes
        self.consistency_mode = consistency_mode
        self.confusion = ConfusionMatrix(len(classes), IGNORE)
        self.frames: list[dict] = []
        self.overlays: list[OverlayFrame] = []
        self.overlay_slots = overlay_slots
        self.on_frame = on_frame
        self.gt_videos, self.pred_videos = _PackedVideos(), _PackedVideos()
        self._video_gt: list[np.ndarray] = []
        self._video_pred: list[np.ndarray] = []

    def add(self, video: str, index: int, stamp_ns: int | None, image: np.ndarray, label: np.ndarray,
            pred: np.ndarray) -> None:
        """Scores one frame (``label`` and ``pred``: ``(H, W)`` class ids) of the current video."""
        frame_confusion = ConfusionMatrix(len(self.classes), IGNORE)
        frame_confusion.update(label, pred)
        self.confusion.merge(frame_confusion)
        consistency = math.nan
        if self._video_gt:
            consistency = _consistency([np.stack([self._video_gt[-1], label])],
                                       [np.stack([self._video_pred[-1], pred])], 2, "corrected")
        record = {"video": video, "index": int(index), "stamp_ns": stamp_ns,
                  "accuracy": frame_confusion.pixel_accuracy(), "miou": frame_confusion.miou(),
                  "consistency": consistency}
        if len(self.frames) in self.overlay_slots:
            self.overlays.append(OverlayFrame.create(image, label, pred, f"{video} frame {index}"))
        self.frames.append(record)
        self._video_gt.append(label)
        self._video_pred.append(pred)
        if self.on_frame is not None:
            self.on_frame(record, label, pred)

    def end_video(self) -> None:
        if self._video_gt:
            self.gt_videos.append(self._video_gt)
            self.pred_videos.append(self._video_pred)
        self._video_gt, self._video_pred = [], []

    def video_consistency(self) -> dict[str, float]:
        """``mVC8``, ``mVC16``, ``mVC8_correct``, ``mVC16_correct`` (fractions; NaN where no window fits)."""
        return consistency_scores(self.gt_videos, self.pred_videos, CONSISTENCY_WINDOWS, self.consistency_mode, IGNORE)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_clips(model: SDCPC, dataset, videos: Sequence[int], transform: ClipEvalTransform, device: torch.device,
               scorer: Scorer, latency: dict[str, list[float]], progress) -> int:
    """Clip mode; returns the number of frames that went through the backbone."""
    encoded = 0
    for v in videos:
        name = dataset.video_names[v]
        for target in dataset.labelled[v]:
            clip = dataset.clip(v, target)
            frames = clip.frames if model.is_temporal else clip.frames[-1:]
            prepared = transform(frames)
            images = prepared["images"].to(device)[None]
            start = time.perf_counter()
            logits = model.forward_clip(images).temporal_logits
            _sync(device)
            latency.setdefault("forward_clip", []).append(1e3 * (time.perf_counter() - start))
            pred = _label_map(logits, prepared["valid_hw"], clip.label.shape)
            encoded += len(frames)
            scorer.add(name, target, None, clip.frames[-1], clip.label, pred)
            progress.update(1)
        scorer.end_video()
    return encoded


def _run_streaming(model: SDCPC, dataset, videos: Sequence[int], transform: ClipEvalTransform,
                   device: torch.device, scorer: Scorer, latency: dict[str, list[float]], progress,
                   smoothing: str = "none") -> int:
    """Streaming mode; returns the number of frames fed to the segmenter."""
    from ..runtime.streaming import StreamingSegmenter

    single = copy.copy(dataset)  # the same reader giving one-frame clips: each frame is read once
    single.offsets = ()
    encoded = 0
    for v in videos:
        name = dataset.video_names[v]
        labelled = set(dataset.labelled[v])
        if not labelled:
            continue
        segmenter = None
        for index in range(max(labelled) + 1):
            clip = single.clip(v, index)
            image = clip.frames[-1]
            if segmenter is None:
                area = transform([image])["valid_hw"]
                segmenter = StreamingSegmenter(model, backend="eager", device=device, input_size=area,
                                               reference_offsets=tuple(dataset.offsets), upsample_logits=True,
                                               smoothing=smoothing)
            stamp = index * segmenter.cache.period_ns
            result = segmenter.step(image, stamp)
            for stage, ms in result.timings_ms.items():
                latency.setdefault(stage, []).append(ms)
            encoded += 1
            if index in labelled:
                if clip.label.shape != image.shape[:2]:
                    raise ValueError(f"frame {index} of video {name!r}: the label is {clip.label.shape[0]}x"
                                     f"{clip.label.shape[1]} but the image is {image.shape[0]}x{image.shape[1]}; "
                                     "streaming evaluation needs labels of the image size (use mode='clip')")
                scorer.add(name, index, stamp, image, clip.label, result.labels)
            progress.update(1)
        scorer.end_video()
    return encoded


def evaluate(model: SDCPC, dataset, classes: ClassList, *, mode: str = "clip", consistency_mode: str = "vspw",
             short_side: int = 480, device: str | torch.device = "cpu", max_videos: int | None = None,
             progress: bool = True, num_overlays: int = 0, on_frame: FrameCallback | None = None,
             smoothing: str | None = None) -> EvaluationReport:
    """Evaluates ``model`` on the labelled frames of ``dataset`` (a ``sdcpc_core.data.datasets`` reader).

    Args:
        model: an SD-CPC or per-frame model with ``len(classes)`` classes; it may be in training mode
            and on any device: it runs in eval mode without gradients on ``device`` and is given back
            in its previous mode on its previous device.
        dataset: a reader with ``video_names``, ``labelled``, ``offsets`` and ``clip(video, target)``.
        classes: the class list of the model's outputs (names and colours in the report).
        mode: ``"clip"`` or ``"streaming"`` (see the module docstring).
        consistency_mode: mVC mode, ``"vspw"`` or ``"corrected"`` (``video_consistency``).
        short_side: network input short side in pixels (``ClipEvalTransform``), >= 32.
        device: where the model runs.
        max_videos: evaluate only the first ``max_videos`` videos (None: all).
        progress: show a tqdm progress bar (one step per frame processed).
        num_overlays: number of scored frames, spread evenly, kept as ``OverlayFrame`` s (ground truth |
            prediction | errors) in ``report.overlays``.
        on_frame: called for each scored frame with its record, label and prediction (``(H, W)``).
        smoothing: temporal smoothing of the probabilities (``"ema:A"``, ``"window"``, ``"window:9,6,3"``;
            None or ``"none"``: off); ``window`` alone takes the data set's reference offsets. Streaming
            mode only.

    Returns:
        An ``EvaluationReport`` titled ``"<backbone> on <dataset> <split> (<mode>)"``; its ``info``
        names the mode, input rule, frames and timings, ``latency_ms`` has per-frame stage times.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    if consistency_mode not in VC_MODES:
        raise ValueError(f"consistency_mode must be one of {', '.join(VC_MODES)}, got {consistency_mode!r}")
    if int(short_side) < 32:
        raise ValueError(f"short_side must be an integer >= 32, got {short_side!r}")
    if max_videos is not None and int(max_videos) < 1:
        raise ValueError(f"max_videos must be None or an integer >= 1, got {max_videos!r}")
    if int(num_overlays) < 0:
        raise ValueError(f"num_overlays must be an integer >= 0, got {num_overlays!r}")
    if model.num_classes != len(classes):
        raise ValueError(f"the model predicts {model.num_classes} classes but the class list has {len(classes)}")
    smoother = parse_smoothing(smoothing, tuple(getattr(dataset, "offsets", ())) or (9, 6, 3))
    if smoother is not None and mode != "streaming":
        raise ValueError(f"smoothing {smoothing!r} runs over the frames of a video in order: it needs "
                         "mode='streaming', got mode='clip'")
    from tqdm.auto import tqdm

    device = torch.device(device)
    videos = list(range(len(dataset.video_names)))[: None if max_videos is None else int(max_videos)]
    labelled = [dataset.labelled[v] for v in videos]
    scored_total = sum(len(t) for t in labelled)
    steps = scored_total if mode == "clip" else sum(max(t) + 1 for t in labelled if t)
    slots = set(np.linspace(0, max(scored_total - 1, 0), int(num_overlays)).round().astype(int).tolist())
    scorer = Scorer(classes, consistency_mode, slots, on_frame)
    latency: dict[str, list[float]] = {}
    transform = ClipEvalTransform(short_side=int(short_side))

    was_training = model.training
    home = next(model.parameters()).device
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"evaluate ({mode})", unit="frame", disable=not progress, leave=False)
    try:
        model.to(device).eval()
        with torch.no_grad():
            if mode == "clip":
                processed = _run_clips(model, dataset, videos, transform, device, scorer, latency, bar)
            else:
                processed = _run_streaming(model, dataset, videos, transform, device, scorer, latency, bar,
                                           smoother.spec if smoother is not None else "none")
    finally:
        bar.close()
        model.to(home).train(was_training)
    seconds = time.perf_counter() - start

    dataset_name = getattr(dataset, "dataset_name", type(dataset).__name__)
    split = getattr(dataset, "split", "")
    info = {
        "mode": mode, "model": (f"{model.config.backbone}, {'temporal' if model.is_temporal else 'per-frame'}, "
                                f"{model.num_classes} classes"),
        "dataset": f"{dataset_name} {split}".strip(), "videos": len(videos),
        "reference_offsets": list(getattr(dataset, "offsets", ())),
        "input": f"short side {int(short_side)}, padded to a multiple of 32",
        "frames_scored": len(scorer.frames), "frames_processed": processed, "device": str(device),
        "seconds": round(seconds, 2), "frames_per_second": round(processed / seconds, 2) if seconds > 0 else None,
        "smoothing": smoother.spec if smoother is not None else "none",
    }
    if scorer.overlays:
        info["overlays"] = f"{len(scorer.overlays)} frames: ground truth | prediction | errors"
    smoothed = f" + {smoother.spec}" if smoother is not None else ""
    return EvaluationReport(
        title=f"{model.config.backbone}{smoothed} on {info['dataset']} ({mode})", classes=classes,
        confusion=scorer.confusion,
        consistency=scorer.video_consistency(), consistency_mode=consistency_mode, frames=scorer.frames,
        latency_ms=latency, info=info, overlays=scorer.overlays)
