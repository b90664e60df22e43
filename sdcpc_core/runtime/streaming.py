"""Streaming inference: one camera frame in, one label map out, as the robot runs SD-CPC.

``StreamingSegmenter.step(image, stamp_ns, frame_id)`` runs, for each frame:

1. **preprocess**: convert the image (``encoding``: rgb8, bgr8, rgba8, bgra8 or mono8; H x W x C uint8
   numpy) to RGB, resize it to the network input size ``input_size`` (H, W), letterboxed (the
   default) or stretched, and normalise it (``image.ImageAdapter.to_network``). The network input
   therefore always has one static size, whatever the camera.
2. **encode**: the static branch of the frame (``backend.encode``) -> its ``FrameCache``.
3. **temporal**: the references are the cached frames nearest to ``stamp - offset x period`` for
   each offset (``reference_cache.ReferenceCache``); ``backend.temporal`` gives the frame's logits; the frame's cache
   (without its logits) then joins the buffer. No frame goes through the backbone twice. Per-frame
   models (``temporal=False``, the SegFormer baselines) skip this stage.
4. **postprocess**: with ``smoothing`` (``StreamingConfig.smoothing``: ``ema:A`` or ``window``, see
   ``sdcpc_core.eval.smoothing``) the softmax of the logits is first smoothed over the stream, at the
   network's 1/4 resolution, and its logarithm replaces the logits (for SD-CPC models on top of the
   temporal step); the smoothing state is reset with the reference buffer. Then the class with the
   highest logit and its softmax probability (``confidence``; with smoothing, the smoothed
   probability), at the camera resolution or at the network's output resolution
   (``output_resolution``; ``image.ImageAdapter.to_labels``).

The reference buffer is cleared (and the result says why) when the stamp does not increase, when
the gap to the previous frame exceeds ``max_gap_s``, when the camera image size changes, or when
the ``frame_id`` changes; the frame is then processed with an empty buffer, never dropped. Frames
that cannot be processed (wrong dtype, shape, encoding, stamp type) raise ``ValueError`` with one
sentence naming what was received and what is accepted, before any state changes.

The settings are ``config.StreamingConfig``; ``from_checkpoint`` reads weights through
``sdcpc_core.weights.resolve``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..eval.smoothing import parse_smoothing
from ..models.sdcpc import SDCPC
from ..options import check_names

if TYPE_CHECKING:
    from ..weights.resolve import LoadedModel
from .backends import Backend, create_backend
from .config import StreamingConfig
from .image import ImageAdapter, check_encoding, require_opencv, to_rgb
from .reference_cache import NS_PER_S, ReferenceCache


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


# ------------------------------------------------------------------------------------- segmenter
class StreamingSegmenter:
    """Frame-by-frame semantic segmentation with a time-keyed reference buffer.

    ``StreamingSegmenter(model, config=None, backend="eager", device="cpu", precision="fp32",
    encoding="rgb8", backend_options=None, **options)``: ``options`` are ``StreamingConfig`` fields (they
    override ``config``); ``backend`` is a name for ``create_backend`` or a ready ``Backend`` (then
    ``device`` and ``precision`` are the back end's); ``backend_options`` are more keyword options of the
    named back end (``backends.backend_options`` builds them from the node's settings). The model is moved /
    cast in place by the back end.
    ``from_checkpoint`` builds one from a shipped model name or any weights a user has (see there).
    """

    loaded: LoadedModel | None = None  # what ``from_checkpoint`` loaded (classes, message, recommended size)

    def __init__(self, model: SDCPC | None = None, config: StreamingConfig | None = None,
                 backend: str | Backend = "eager", device: str | torch.device = "cpu", precision: str = "fp32",
                 encoding: str = "rgb8", backend_options: dict | None = None, **options) -> None:
        require_opencv("StreamingSegmenter")
        check_names(options, StreamingConfig.field_names(), "streaming option", valid_label="valid options")
        config = config if config is not None else StreamingConfig()
        self.config = replace(config, **options) if options else config
        check_encoding(encoding)
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
                                          num_refs=len(self.config.reference_offsets), **(backend_options or {}))
        self.model = self.backend.model
        self.device = self.backend.device
        self.num_classes = self.model.num_classes
        self.label_dtype = np.uint8 if self.num_classes <= 255 else np.uint16
        self.cache = ReferenceCache(self.config.reference_offsets, self.config.frame_period_s, self.config.max_entries)
        self.smoother = parse_smoothing(self.config.smoothing, self.config.reference_offsets)
        self._max_gap_ns = round(self.config.max_gap_s * NS_PER_S)
        self.images = ImageAdapter(self.config.input_size, self.config.resize_mode, self.config.output_resolution,
                                   self.config.upsample_logits, self.device, self.label_dtype)
        self._last: tuple[int, str, tuple[int, int]] | None = None  # stamp, frame_id, camera size
        self._pending_reset: str | None = None

    # -------------------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path_or_name: str | os.PathLike, backend: str = "eager", device: str = "cpu",
                        precision: str = "fp32", input_size: tuple[int, int] | None = None,
                        **options) -> StreamingSegmenter:
        """Loads any weights ``sdcpc_core.weights.resolve.open_model`` reads: a shipped model name, our
        checkpoint, a Hugging Face SegFormer folder or an mmseg / NVlabs ``.pth``.

        ``input_size`` None: the checkpoint's recommended size (the scale it was trained at), else
        ``StreamingConfig``'s default. ``options``: ``StreamingConfig`` fields and ``encoding``. The
        result's ``loaded`` says what was loaded (class list, one-sentence ``message``). Raises
        ``FileNotFoundError`` for a missing path, ``ValueError`` for an unknown name, a corrupt file or
        invalid options.
        """
        from ..weights.resolve import open_model

        encoding = options.pop("encoding", "rgb8")
        check_names(options, [*StreamingConfig.field_names(), "encoding"], "streaming option",
                    valid_label="valid options")
        loaded = open_model(path_or_name)
        size = input_size or loaded.input_size or StreamingConfig().input_size
        config = StreamingConfig(input_size=size, **options)
        segmenter = cls(loaded.model, config, backend=backend, device=device, precision=precision, encoding=encoding)
        segmenter.loaded = loaded
        return segmenter

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

        network_input = self.images.to_network(rgb)
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
            assert current.logits is not None  # a per-frame model's encode sets the logits
            references, logits = [], current.logits
        t_tmp = time.perf_counter()
        if self.smoother is not None:
            if reason is not None:
                self.smoother.reset()
            # log of the smoothed probabilities: their argmax and softmax are the smoothed class and probability
            logits = self.smoother.step(logits.float().softmax(dim=1)).clamp_min(_TINY).log()
        labels, confidence = self.images.to_labels(logits, camera_hw)
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
            return (f"gap of {(stamp - last_stamp) / NS_PER_S:.3f} s since the previous frame exceeds "
                    f"max_gap_s {self.config.max_gap_s:g} s")
        return None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------ pre / post
    def preprocess(self, image: np.ndarray, encoding: str | None = None) -> torch.Tensor:
        """The network input ``(1, 3, H, W)`` float32 (on the device) for ``image``, as ``step`` builds it."""
        rgb = to_rgb(image, self.encoding if encoding is None else encoding)
        return self.images.to_network(rgb)


_TINY = torch.finfo(torch.float32).tiny  # smoothed probabilities are clamped to this before the logarithm


def _check_stamp(stamp_ns) -> int:
    if isinstance(stamp_ns, (bool, np.bool_)) or not isinstance(stamp_ns, (int, np.integer)):
        raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {type(stamp_ns).__name__} "
                         f"{stamp_ns!r}")
    return int(stamp_ns)


__all__ = ["SegmentationResult", "StreamingSegmenter"]
