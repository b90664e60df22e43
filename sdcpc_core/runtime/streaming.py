"""Streaming inference: one camera frame in, one label map out, as the robot runs SD-CPC.

``StreamingSegmenter.step(image, stamp_ns, frame_id)`` runs, for each frame:

1. **preprocess**: convert the image (``encoding``: rgb8, bgr8, rgba8, bgra8 or mono8; H x W x C uint8
   numpy) to RGB; resize it with OpenCV ``cv2.resize`` (``INTER_LINEAR``) to the network input size
   ``input_size`` (H, W), either keeping the aspect ratio and padding (``resize_mode="letterbox"``,
   the default: the image is scaled to fit and placed at the top left; the bottom / right
   remainder is zero after normalisation, i.e. the ImageNet mean colour, the same padding the model
   applies up to a multiple of 32) or stretching it (``resize_mode="stretch"``); normalise with the
   ImageNet mean and standard deviation. The network input therefore always has one static size,
   whatever the camera. OpenCV is used because resizing the uint8 image before converting it to
   float is several times cheaper than ``torch.nn.functional.interpolate`` on a float tensor (on
   one CPU core, 720x1280 -> 480x853: about 1.5 ms against 10-13 ms; 3.3 ms for torch on uint8).
2. **encode**: the static branch of the frame (``backend.encode``) -> its ``FrameCache``.
3. **temporal**: the references are the cached frames nearest to ``stamp - offset x period`` for
   each offset (``ReferenceCache``); ``backend.temporal`` gives the frame's logits; the frame's cache
   (without its logits) then joins the buffer. No frame goes through the backbone twice. Per-frame
   models (``temporal=False``, the SegFormer baselines) skip this stage.
4. **postprocess**: the class with the highest logit and its softmax probability (``confidence``),
   at the camera resolution (``output_resolution="camera"``: nearest-neighbour from the network's
   1/4-resolution argmax, or with ``upsample_logits=True`` bilinear logits at camera size before the
   argmax) or at the network's output resolution (``"network"``: the 1/4-resolution logits of the
   image area, the letterbox padding cropped off).

The reference buffer is cleared (and the result says why) when the stamp does not increase, when
the gap to the previous frame exceeds ``max_gap_s``, when the camera image size changes, or when
the ``frame_id`` changes; the frame is then processed with an empty buffer, never dropped. Frames
that cannot be processed (wrong dtype, shape, encoding, stamp type) raise ``ValueError`` with one
sentence naming what was received and what is accepted, before any state changes.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.sdcpc import SDCPC, SIZE_MULTIPLE, FrameCache
from .backends import Backend, create_backend

try:  # imported here so that a missing OpenCV is reported when a segmenter is built, not on import
    import cv2
except ImportError:  # pragma: no cover - depends on the installation
    cv2 = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
OUTPUT_RESOLUTIONS = ("camera", "network")
RESIZE_MODES = ("letterbox", "stretch")
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CHECKPOINT_SUFFIX = ".safetensors"

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_NS_PER_S = 1_000_000_000


# ------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class StreamingConfig:
    """Settings of ``StreamingSegmenter``; invalid values raise ``ValueError`` naming the field."""

    input_size: tuple[int, int] = (480, 864)  # network input (height, width) in pixels, each >= 32
    reference_offsets: tuple[int, ...] = (9, 6, 3)  # reference frames before the target, in frame periods
    frame_period_s: float = 1.0 / 30.0  # nominal camera frame period in seconds (30 Hz)
    max_gap_s: float = 1.0  # a larger gap between consecutive frames clears the reference buffer
    output_resolution: str = "camera"  # "camera": labels at the image size; "network": at the 1/4 logits size
    upsample_logits: bool = False  # camera output: bilinear logits to camera size before argmax (slower)
    resize_mode: str = "letterbox"  # "letterbox": keep aspect ratio and pad; "stretch": plain resize
    max_entries: int | None = None  # most frames in the reference buffer; None: max(reference_offsets) + 2

    def __post_init__(self) -> None:
        try:
            size = tuple(int(v) for v in self.input_size)
            size_ok = len(size) == 2 and all(v == s for v, s in zip(size, self.input_size)) and min(size) >= SIZE_MULTIPLE
        except (TypeError, ValueError):
            size, size_ok = None, False
        try:
            offsets = tuple(sorted({int(v) for v in self.reference_offsets}, reverse=True))
            offsets_ok = len(offsets) == len(tuple(self.reference_offsets)) > 0 and min(offsets) >= 1 and all(
                int(v) == v for v in self.reference_offsets)
        except (TypeError, ValueError):
            offsets, offsets_ok = None, False
        checks = [
            ("input_size", size_ok, f"two integers (height, width), each >= {SIZE_MULTIPLE}"),
            ("reference_offsets", offsets_ok, "a non-empty list of distinct integers >= 1"),
            ("frame_period_s", _positive(self.frame_period_s), "a number of seconds > 0"),
            ("max_gap_s", _positive(self.max_gap_s), "a number of seconds > 0"),
            ("output_resolution", self.output_resolution in OUTPUT_RESOLUTIONS,
             f"one of {', '.join(OUTPUT_RESOLUTIONS)}"),
            ("upsample_logits", isinstance(self.upsample_logits, bool), "true or false"),
            ("resize_mode", self.resize_mode in RESIZE_MODES, f"one of {', '.join(RESIZE_MODES)}"),
            ("max_entries", self.max_entries is None or (
                isinstance(self.max_entries, int) and not isinstance(self.max_entries, bool) and self.max_entries >= 1),
             "an integer >= 1 or null (automatic)"),
        ]
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"StreamingConfig.{name} must be {accepted}, got {getattr(self, name)!r}")
        if self.upsample_logits and self.output_resolution != "camera":
            raise ValueError("StreamingConfig.upsample_logits applies to output_resolution 'camera' only, got "
                             f"output_resolution {self.output_resolution!r}; set upsample_logits to false")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "reference_offsets", offsets)  # farthest first

    @property
    def entries_limit(self) -> int:
        """``max_entries`` or its automatic value ``max(reference_offsets) + 2``."""
        return self.max_entries if self.max_entries is not None else max(self.reference_offsets) + 2

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------------ result
@dataclass
class SegmentationResult:
    """One frame's output.

    ``labels``: class ids, H x W uint8 (uint16 for more than 255 classes); ``confidence``: H x W float32
    softmax probability of that class; H x W is the camera size (``output_resolution="camera"``) or
    the network's 1/4 output size of the image area (``"network"``). ``timings_ms``: preprocess,
    encode, temporal, postprocess and total wall time. ``reset``: the reference buffer was cleared
    before this frame (``reset_reason`` says why). ``references``: stamps (ns) of the reference frames
    used, oldest first (the frame's own stamp when it had no history; empty for per-frame models).
    """

    labels: np.ndarray
    confidence: np.ndarray
    timings_ms: dict[str, float]
    reset: bool
    reset_reason: str | None
    references: list[int]
    stamp_ns: int
    frame_id: str


# ------------------------------------------------------------------------------- reference buffer
class ReferenceCache:
    """Ring buffer of ``FrameCache`` entries (logits dropped) keyed by integer nanosecond stamps.

    ``select_stamps(stamp)`` gives, for each offset (farthest first), the buffered stamp nearest to
    ``stamp - offset x period`` (the older one on a tie). At a cold start this yields the earliest
    frames available with duplicates, as training clips do (reference index ``max(t - offset, 0)``);
    with an empty buffer, the current frame itself is every reference.

    Memory is bounded twice, whatever the input rate:

    * time: after adding a frame at ``now``, an entry is dropped once its successor is at least as
      near to every time a future frame can ask for (all later than ``now - max(offsets) x period``),
      i.e. when the midpoint between the entry and its successor is ``<= now - max(offsets) x period``.
      What stays spans ``max(offsets) x period`` plus at most one older frame;
    * count: at most ``max_entries`` entries; beyond that the inner entry whose neighbours are closest
      together is dropped (the newest and the oldest stay), which thins a fast stream to about even
      spacing instead of forgetting the far references.
    """

    def __init__(self, offsets: Sequence[int] = (9, 6, 3), period_s: float = 1.0 / 30.0,
                 max_entries: int | None = None) -> None:
        config = StreamingConfig(reference_offsets=tuple(offsets), frame_period_s=period_s, max_entries=max_entries)
        self.offsets: tuple[int, ...] = config.reference_offsets
        self.period_ns = int(round(period_s * _NS_PER_S))
        self.max_entries = config.entries_limit
        self._stamps: list[int] = []  # ascending
        self._entries: dict[int, FrameCache] = {}

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def stamps(self) -> list[int]:
        """Buffered stamps, oldest first."""
        return list(self._stamps)

    @property
    def span_ns(self) -> int:
        """How far back a reference can be asked for: ``max(offsets) x period``."""
        return max(self.offsets) * self.period_ns

    def __getitem__(self, stamp_ns: int) -> FrameCache:
        return self._entries[stamp_ns]

    def clear(self) -> None:
        self._stamps.clear()
        self._entries.clear()

    def add(self, stamp_ns: int, cache: FrameCache) -> None:
        """Stores ``cache.without_logits()`` at ``stamp_ns`` (newer than every buffered stamp), then evicts."""
        if self._stamps and stamp_ns <= self._stamps[-1]:
            raise ValueError(f"ReferenceCache.add needs increasing stamps: got {stamp_ns} ns after {self._stamps[-1]} ns "
                             "(clear the buffer when time goes backwards)")
        self._stamps.append(stamp_ns)
        self._entries[stamp_ns] = cache.without_logits()
        self._evict()

    def _drop(self, index: int) -> None:
        del self._entries[self._stamps.pop(index)]

    def _evict(self) -> None:
        horizon = self._stamps[-1] - self.span_ns  # every future target time is later than this
        while len(self._stamps) >= 2 and self._stamps[0] + self._stamps[1] <= 2 * horizon:
            self._drop(0)
        while len(self._stamps) > self.max_entries:
            if len(self._stamps) < 3:
                self._drop(0)
                continue
            s = self._stamps
            inner = min(range(1, len(s) - 1), key=lambda i: (s[i + 1] - s[i - 1], i))
            self._drop(inner)

    def nearest(self, target_ns: int) -> int:
        """Buffered stamp nearest to ``target_ns`` (the older one on a tie); the buffer must not be empty."""
        return min(self._stamps, key=lambda s: (abs(s - target_ns), s))

    def select_stamps(self, stamp_ns: int) -> list[int]:
        """Reference stamps for a frame at ``stamp_ns``, farthest offset first; ``[stamp_ns] * n`` when empty."""
        if not self._stamps:
            return [stamp_ns] * len(self.offsets)
        return [self.nearest(stamp_ns - offset * self.period_ns) for offset in self.offsets]

    def select(self, stamp_ns: int, current: FrameCache | None = None) -> list[FrameCache]:
        """Reference entries for a frame at ``stamp_ns`` (oldest first); ``current`` is used when empty."""
        if not self._stamps:
            if current is None:
                raise ValueError("the reference buffer is empty: pass the current frame's cache as current")
            return [current.without_logits()] * len(self.offsets)
        return [self._entries[s] for s in self.select_stamps(stamp_ns)]


# ---------------------------------------------------------------------------------- image helpers
def to_rgb(image, encoding: str = "rgb8") -> np.ndarray:
    """H x W x C uint8 array in ``encoding`` -> H x W x 3 uint8 RGB (C-contiguous); ``ValueError`` if invalid."""
    if encoding not in _CHANNELS:
        raise ValueError(f"unknown image encoding {encoding!r}; accepted encodings: {', '.join(ENCODINGS)}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected the image as a numpy array (H x W x C uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image for encoding {encoding}, got dtype {image.dtype}")
    channels = _CHANNELS[encoding]
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        layout = "H x W or H x W x 1" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"encoding {encoding} needs an image of shape {layout}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape}); expected at least 1 x 1 pixels")
    if encoding == "rgb8":
        rgb = image
    elif encoding == "bgr8" or encoding == "bgra8":
        rgb = image[:, :, 2::-1]
    elif encoding == "rgba8":
        rgb = image[:, :, :3]
    else:  # mono8
        rgb = np.broadcast_to(image, (*image.shape[:2], 3))
    return np.ascontiguousarray(rgb)


def _network_layout(camera_hw: tuple[int, int], input_hw: tuple[int, int], mode: str) -> tuple[int, int]:
    """Size (h, w) of the image area inside the network input."""
    if mode == "stretch":
        return input_hw
    scale = min(input_hw[0] / camera_hw[0], input_hw[1] / camera_hw[1])
    return (min(input_hw[0], max(1, round(camera_hw[0] * scale))),
            min(input_hw[1], max(1, round(camera_hw[1] * scale))))


# ------------------------------------------------------------------------------------- segmenter
class StreamingSegmenter:
    """Frame-by-frame semantic segmentation with a time-keyed reference buffer.

    ``StreamingSegmenter(model, config=None, backend="eager", device="cpu", precision="fp32",
    encoding="rgb8", **options)``: ``options`` are ``StreamingConfig`` fields (they override
    ``config``); ``backend`` is a name for ``create_backend`` or a ready ``Backend`` (then ``device``
    and ``precision`` are the back end's). The model is moved / cast in place by the back end.
    ``from_checkpoint`` builds one from a checkpoint file or a shipped model name.
    """

    def __init__(self, model: SDCPC | None = None, config: StreamingConfig | None = None,
                 backend: str | Backend = "eager", device: str | torch.device = "cpu", precision: str = "fp32",
                 encoding: str = "rgb8", **options) -> None:
        if cv2 is None:
            raise ImportError("StreamingSegmenter needs OpenCV: pip install opencv-python-headless")
        unknown = sorted(set(options) - set(StreamingConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown streaming option(s) {', '.join(unknown)}; valid options: "
                             f"{', '.join(StreamingConfig.field_names())}")
        config = config if config is not None else StreamingConfig()
        self.config = replace(config, **options) if options else config
        if encoding not in _CHANNELS:
            raise ValueError(f"unknown image encoding {encoding!r}; accepted encodings: {', '.join(ENCODINGS)}")
        self.encoding = encoding
        if isinstance(backend, Backend):
            if tuple(backend.input_size) != self.config.input_size:
                raise ValueError(f"the backend runs input size {tuple(backend.input_size)} but StreamingConfig."
                                 f"input_size is {self.config.input_size}; build both for one size")
            self.backend = backend
        else:
            if model is None:
                raise ValueError("StreamingSegmenter needs a model (or a ready Backend)")
            self.backend = create_backend(backend, model, self.config.input_size, device=device, precision=precision,
                                          num_refs=len(self.config.reference_offsets))
        self.model = self.backend.model
        self.device = self.backend.device
        self.num_classes = self.model.num_classes
        self.label_dtype = np.uint8 if self.num_classes <= 255 else np.uint16
        self.cache = ReferenceCache(self.config.reference_offsets, self.config.frame_period_s, self.config.max_entries)
        self._max_gap_ns = int(round(self.config.max_gap_s * _NS_PER_S))
        self._scale = (1.0 / (255.0 * torch.tensor(IMAGENET_STD))).view(3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1).to(self.device)
        self._maps: dict[tuple[int, int], tuple] = {}  # camera size -> (area, nearest indices / grid)
        self._last: tuple[int, str, tuple[int, int]] | None = None  # stamp, frame_id, camera size
        self._pending_reset: str | None = None

    # -------------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path_or_name: str | os.PathLike, backend: str = "eager", device: str = "cpu",
                        precision: str = "fp32", input_size: tuple[int, int] = (480, 864),
                        **options) -> "StreamingSegmenter":
        """Loads an sdcpc safetensors checkpoint (a path, or a name shipped in ``sdcpc_core/assets``).

        ``options``: ``StreamingConfig`` fields and ``encoding``. Raises ``FileNotFoundError`` for a
        missing path, ``ValueError`` for an unknown name, a corrupt file or invalid options.
        """
        from ..checkpoints import load_model

        path = resolve_checkpoint(path_or_name)
        encoding = options.pop("encoding", "rgb8")
        config = StreamingConfig(input_size=input_size, **_config_options(options))
        return cls(load_model(path), config, backend=backend, device=device, precision=precision, encoding=encoding)

    @property
    def buffered_stamps(self) -> list[int]:
        return self.cache.stamps

    def reset(self, reason: str = "reset requested") -> None:
        """Clears the reference buffer now; the next result reports ``reason``."""
        self.cache.clear()
        self._last = None
        self._pending_reset = reason

    # ---------------------------------------------------------------------------------- step
    def step(self, image: np.ndarray, stamp_ns: int, frame_id: str = "", encoding: str | None = None
             ) -> SegmentationResult:
        """Segments one frame: H x W x C uint8 ``image`` in ``encoding`` (default: the segmenter's).

        ``stamp_ns``: the capture time in integer nanoseconds; ``frame_id``: the camera frame name.
        Raises ``ValueError`` (nothing changed) for an invalid image, encoding, stamp or frame id.
        """
        start = time.perf_counter()
        rgb = to_rgb(image, self.encoding if encoding is None else encoding)
        stamp = _check_stamp(stamp_ns)
        if not isinstance(frame_id, str):
            raise ValueError(f"frame_id must be a string, got {type(frame_id).__name__}")
        camera_hw = (rgb.shape[0], rgb.shape[1])

        reason = self._reset_reason(stamp, frame_id, camera_hw)
        if reason is not None:
            self.cache.clear()
        self._pending_reset = None
        self._last = (stamp, frame_id, camera_hw)

        area = self._layout(camera_hw)[0]
        network_input = self._preprocess(rgb, area)
        self._sync()
        t_pre = time.perf_counter()
        current = self.backend.encode(network_input)
        self._sync()
        t_enc = time.perf_counter()
        if self.model.is_temporal:
            references = self.cache.select_stamps(stamp)
            logits = self.backend.temporal(current, self.cache.select(stamp, current))
            self.cache.add(stamp, current)
            self._sync()
        else:
            references, logits = [], current.logits
        t_tmp = time.perf_counter()
        labels, confidence = self._postprocess(logits, camera_hw)
        end = time.perf_counter()
        timings = {"preprocess": t_pre - start, "encode": t_enc - t_pre, "temporal": t_tmp - t_enc,
                   "postprocess": end - t_tmp, "total": end - start}
        return SegmentationResult(labels, confidence, {k: 1e3 * v for k, v in timings.items()}, reason is not None,
                                  reason, references, stamp, frame_id)

    def _reset_reason(self, stamp: int, frame_id: str, camera_hw: tuple[int, int]) -> str | None:
        if self._pending_reset is not None:
            return self._pending_reset
        if self._last is None:
            return None
        last_stamp, last_frame, last_hw = self._last
        if frame_id != last_frame:
            return f"frame_id changed from {last_frame!r} to {frame_id!r}"
        if camera_hw != last_hw:
            return f"image size changed from {last_hw[0]}x{last_hw[1]} to {camera_hw[0]}x{camera_hw[1]}"
        if stamp <= last_stamp:
            word = "repeated" if stamp == last_stamp else "went backwards"
            return f"time stamp {word} ({stamp} ns after {last_stamp} ns)"
        if stamp - last_stamp > self._max_gap_ns:
            return (f"gap of {(stamp - last_stamp) / _NS_PER_S:.3f} s since the previous frame exceeds "
                    f"max_gap_s {self.config.max_gap_s:g} s")
        return None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------ pre / post
    def preprocess(self, image: np.ndarray, encoding: str | None = None) -> torch.Tensor:
        """The network input ``(1, 3, H, W)`` float32 (on the device) for ``image``, as ``step`` builds it."""
        rgb = to_rgb(image, self.encoding if encoding is None else encoding)
        return self._preprocess(rgb, self._layout(rgb.shape[:2])[0])

    def _preprocess(self, rgb: np.ndarray, area: tuple[int, int]) -> torch.Tensor:
        h, w = area
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        pixels = torch.from_numpy(rgb).to(self.device, non_blocking=True).permute(2, 0, 1)
        height, width = self.config.input_size
        network_input = torch.zeros(1, 3, height, width, device=self.device)
        torch.addcmul(self._shift, pixels, self._scale, out=network_input[0, :, :h, :w])
        return network_input

    def _layout(self, camera_hw: tuple[int, int]) -> tuple:
        """Per camera size: image area in the network input, and the index maps / grid of postprocess."""
        layout = self._maps.get(camera_hw)
        if layout is None:
            area = _network_layout(camera_hw, self.config.input_size, self.config.resize_mode)
            logits_hw = (math.ceil(area[0] / 4), math.ceil(area[1] / 4))
            nearest, normalised = [], []
            for camera, image, logit in zip(camera_hw, area, logits_hw):
                # camera pixel centre -> network coordinate (pixel edges at integers) -> logits coordinate
                position = (torch.arange(camera, dtype=torch.float64) + 0.5) * (image / camera) / 4.0
                nearest.append(position.floor().clamp_(0, logit - 1).long().to(self.device))
                normalised.append((2.0 * position / logit - 1.0).float())  # grid_sample, align_corners=False
            grid = None
            if self.config.upsample_logits:  # (1, H, W, 2) sampling positions (x, y) for grid_sample
                grid = torch.stack(torch.meshgrid(*normalised, indexing="ij")[::-1], dim=-1)[None].to(self.device)
            layout = (area, logits_hw, nearest, grid)
            if len(self._maps) > 8:
                self._maps.clear()
            self._maps[camera_hw] = layout
        return layout

    def _postprocess(self, logits: torch.Tensor, camera_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        _, (lh, lw), (rows, cols), grid = self._layout(camera_hw)
        logits = logits[0, :, :lh, :lw].float()  # (K, lh, lw): the image area
        camera = self.config.output_resolution == "camera"
        if camera and grid is not None:
            logits = F.grid_sample(logits[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
            camera = False  # already at camera size
        top, labels = logits.max(dim=0)
        confidence = torch.exp(logits - top).sum(dim=0).reciprocal_()
        labels = labels.to(torch.uint8 if self.label_dtype == np.uint8 else torch.int32)
        if camera:
            labels = labels.index_select(0, rows).index_select(1, cols)
            confidence = confidence.index_select(0, rows).index_select(1, cols)
        labels = labels.cpu().numpy().astype(self.label_dtype, copy=False)
        return labels, confidence.cpu().numpy()


def _check_stamp(stamp_ns) -> int:
    if isinstance(stamp_ns, (bool, np.bool_)) or not isinstance(stamp_ns, (int, np.integer)):
        raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {type(stamp_ns).__name__} "
                         f"{stamp_ns!r}")
    return int(stamp_ns)


def _config_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(StreamingConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown streaming option(s) {', '.join(unknown)}; valid options: "
                         f"{', '.join(StreamingConfig.field_names())}, encoding")
    return options


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints shipped in ``sdcpc_core/assets`` (``<name>.safetensors``)."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name[: -len(CHECKPOINT_SUFFIX)] for p in ASSETS_DIR.glob(f"*{CHECKPOINT_SUFFIX}"))


def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint path as given, or the file of a shipped name; ``ValueError`` for an unknown name."""
    text = os.fspath(path_or_name)
    path = Path(text)
    looks_like_path = isinstance(path_or_name, os.PathLike) or os.sep in text or "/" in text or text.endswith(
        CHECKPOINT_SUFFIX) or text.startswith(".")
    if looks_like_path or path.exists():
        return path
    shipped = ASSETS_DIR / f"{text}{CHECKPOINT_SUFFIX}"
    if shipped.is_file():
        return shipped
    names = shipped_checkpoints()
    installed = f"shipped names: {', '.join(names)}" if names else "no shipped checkpoints are installed"
    raise ValueError(f"unknown checkpoint name {text!r} ({installed}); pass the path of an sdcpc .safetensors "
                     "checkpoint instead")


__all__ = ["ENCODINGS", "IMAGENET_MEAN", "IMAGENET_STD", "OUTPUT_RESOLUTIONS", "RESIZE_MODES", "ReferenceCache",
           "SegmentationResult", "StreamingConfig", "StreamingSegmenter", "resolve_checkpoint",
           "shipped_checkpoints", "to_rgb"]
