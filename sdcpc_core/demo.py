"""Streaming demo: SD-CPC on a synthetic camera sequence, run exactly as the robot runs it.

``python -m sdcpc_core.demo`` (console script ``sdcpc-demo``) builds ``sdcpc_b0`` for the 19
Cityscapes classes with random weights (a fixed seed; the labels are not meaningful until a trained
model is loaded), renders a short synthetic sequence in-process (sky and road gradients, coloured
boxes moving at different speeds, sensor noise), normalises it with the ImageNet mean and standard
deviation and streams it frame by frame:

through ``sdcpc_core.runtime.StreamingSegmenter``, the code path of the ROS node: ``encode_frame``
once per frame into a buffer keyed by the frame's time stamp (integer nanoseconds, as in ROS),
references at the buffered frames nearest to t - {9, 6, 3} frame periods (at a cold start the
earliest frames available, duplicates allowed), then ``temporal_step``.

It prints one line per frame, a summary, and a self-check that the streamed labels of the last frame
equal those of ``forward_clip`` on the same four frames.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from .classes import ClassList
from .models import build_model, list_models
from .models.sdcpc import SDCPC
from .runtime.streaming import StreamingSegmenter
from .tools.cli import at_least, image_size, variant

CITYSCAPES_CLASSES = tuple(ClassList.shipped("cityscapes").names)
REFERENCE_OFFSETS = (9, 6, 3)  # frames before the target, farthest first
FRAME_PERIOD_NS = 33_333_333  # 30 Hz

# Moving boxes: colour (RGB), top and height (fractions of the image height), width (fraction of the
# image width), start x (fraction of the width) and speed (fraction of the width per frame).
_BOXES = (
    ((0.10, 0.15, 0.55), 0.50, 0.22, 0.18, 0.05, 0.012),  # car-like, slow
    ((0.80, 0.10, 0.10), 0.58, 0.30, 0.06, 0.70, -0.020),  # person-like, walking left
    ((0.95, 0.85, 0.20), 0.62, 0.16, 0.12, 0.30, 0.030),  # fast
    ((0.25, 0.45, 0.15), 0.20, 0.25, 0.10, 0.85, 0.004),  # tree-like, almost still
)


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``(count, 3, height, width)`` RGB frames in [0, 1]: gradients, moving boxes, sensor noise."""
    generator = torch.Generator().manual_seed(seed)
    horizon = int(0.45 * height)
    rows = torch.linspace(0.0, 1.0, height).view(1, height, 1)
    sky = torch.tensor((0.35, 0.55, 0.85)).view(3, 1, 1) + 0.3 * rows / 0.45
    road = torch.tensor((0.50, 0.50, 0.52)).view(3, 1, 1) - 0.25 * (rows - 0.45) / 0.55
    background = torch.where(torch.arange(height).view(1, height, 1) < horizon, sky, road).expand(3, height, width)
    frames = background.unsqueeze(0).repeat(count, 1, 1, 1)
    for t in range(count):
        for colour, top, box_h, box_w, start, speed in _BOXES:
            w = max(1, int(box_w * width))
            x = int(round(((start + speed * t) % 1.0) * (width + w))) - w
            y0, y1 = int(top * height), min(height, int((top + box_h) * height) + 1)
            x0, x1 = max(0, x), min(width, x + w)
            if x1 > x0:
                frames[t, :, y0:y1, x0:x1] = torch.tensor(colour).view(3, 1, 1)
    frames += 0.02 * torch.randn(frames.shape, generator=generator)
    return frames.clamp_(0.0, 1.0)


def label_summary(labels: np.ndarray, names: tuple[str, ...], top: int = 3) -> str:
    """The ``top`` most frequent classes of a label map with their share of the pixels."""
    counts = np.bincount(labels.ravel(), minlength=len(names))
    order = np.argsort(-counts, kind="stable")[:top]
    return ", ".join(f"{names[i] if i < len(names) else i} {100 * counts[i] / labels.size:.0f}%" for i in order)


def _randomise_temporal_scales(model: SDCPC, seed: int) -> None:
    """Non-zero values for the zero-initialised scales so that the temporal branch changes the output."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.zero_initialised_scales():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdcpc-demo",
        description="Stream a synthetic camera sequence through SD-CPC as the robot does (untrained weights).")
    parser.add_argument("--frames", type=at_least(1), default=24, help="number of frames (default 24)")
    parser.add_argument("--size", type=image_size, default="192x384",
                        help="frame HEIGHTxWIDTH in pixels (default 192x384)")
    parser.add_argument("--variant", type=variant, default="sdcpc_b0",
                        help=f"model variant (default sdcpc_b0), one of: {', '.join(list_models())}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the sequence (default 0)")
    parser.add_argument("--threads", type=at_least(0), default=0,
                        help="CPU threads for torch (default 0: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    height, width = args.size
    torch.manual_seed(args.seed)
    model = build_model(args.variant, len(CITYSCAPES_CLASSES)).eval()
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return stream(model, args.frames, height, width, args.seed, args.variant)
    finally:
        torch.set_num_threads(previous_threads)


def stream(model: SDCPC, frames: int, height: int, width: int, seed: int = 0, variant: str = "sdcpc_b0") -> int:
    """Streams ``frames`` synthetic frames through ``model`` with printed timings; 0 if the self-check passes."""
    print(f"sdcpc demo: {variant}, {len(CITYSCAPES_CLASSES)} Cityscapes classes, {frames} synthetic "
          f"frames {height}x{width} at 30 Hz, references t-{{{', '.join(map(str, REFERENCE_OFFSETS))}}} frames, "
          f"torch threads: {torch.get_num_threads()}")
    print(f"note: UNTRAINED weights (random initialisation, seed {seed}): the labels are not meaningful yet.")
    if model.is_temporal:
        _randomise_temporal_scales(model, seed)
        print("note: the zero-initialised temporal scales (ssea.gamma, dssa.gamma, gate) are set to random "
              "values so that the temporal step changes the output.")

    images = (synthetic_frames(frames, height, width, seed).permute(0, 2, 3, 1) * 255).round().byte().numpy()
    segmenter = StreamingSegmenter(model, input_size=(height, width), reference_offsets=REFERENCE_OFFSETS,
                                   frame_period_s=FRAME_PERIOD_NS / 1e9, output_resolution="network")
    encode_ms, temporal_ms, peak, result = [], [], 0, None
    for index in range(frames):
        result = segmenter.step(images[index], index * FRAME_PERIOD_NS, "camera")
        encode_ms.append(result.timings_ms["encode"])
        temporal_ms.append(result.timings_ms["temporal"])
        peak = max(peak, len(segmenter.buffered_stamps))
        refs = [round(s / FRAME_PERIOD_NS) for s in result.references]
        print(f"frame {index:3d}  refs {str(refs):<14} encode {encode_ms[-1]:7.1f} ms  temporal "
              f"{temporal_ms[-1]:6.1f} ms  top-3: {label_summary(result.labels, CITYSCAPES_CLASSES)}")

    clip_frames = [*refs, frames - 1]
    with torch.inference_mode():
        clip = torch.stack([segmenter.preprocess(images[i]) for i in clip_frames], dim=1)  # (1, 4, 3, H, W)
        expected = model.forward_clip(clip).temporal_logits.argmax(dim=1)[0].numpy()
    agreement = float((expected == result.labels).mean())
    ok = agreement == 1.0
    static, temporal = statistics.mean(encode_ms), statistics.mean(temporal_ms)
    print(f"summary: {frames} frames; encode ms mean {static:.1f} median {statistics.median(encode_ms):.1f}; "
          f"temporal ms mean {temporal:.1f} median {statistics.median(temporal_ms):.1f}; temporal cost "
          f"{100 * temporal / static:.1f}% of the static branch; peak buffer {peak} frames")
    print(f"self-check: frame {frames - 1} streamed vs forward_clip on frames {clip_frames}: labels agree on "
          f"{100 * agreement:.2f}% of pixels -> {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
