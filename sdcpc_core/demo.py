"""Streaming demo: SD-CPC on a synthetic camera sequence, run exactly as the robot runs it.

``python -m sdcpc_core.demo`` (console script ``sdcpc-demo``) builds ``sdcpc_b0`` for the 19
Cityscapes classes with random weights (a fixed seed; the labels are not meaningful until a trained
model is loaded), renders a short synthetic sequence in-process (sky and road gradients, coloured
boxes moving at different speeds, sensor noise), normalises it with the ImageNet mean and standard
deviation and streams it frame by frame:

1. ``encode_frame`` runs once per frame; ``FrameCache.without_logits()`` goes into a buffer keyed by
   the frame's time stamp (integer nanoseconds, as in ROS) that keeps only the time span the
   references can reach;
2. the references are the buffered frames nearest to t - {9, 6, 3} frame periods (at a cold start
   the earliest frames available, duplicates allowed);
3. ``temporal_step`` gives the frame's logits.

It prints one line per frame, a summary, and a self-check that the streamed logits of the last frame
equal ``forward_clip`` on the same four frames.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict

import torch

from .models import build_model, list_models
from .models.sdcpc import SDCPC, FrameCache
from .tools.cli import at_least, image_size, variant

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_OFFSETS = (9, 6, 3)  # frames before the target, farthest first
FRAME_PERIOD_NS = 33_333_333  # 30 Hz
SELF_CHECK_TOLERANCE = 1e-5

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


def normalise(frames: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (frames - mean) / std


class FrameBuffer:
    """``FrameCache`` entries keyed by time stamp (ns, oldest first), limited to a time ``horizon_ns``."""

    def __init__(self, horizon_ns: int) -> None:
        self.horizon_ns = horizon_ns
        self.entries: OrderedDict[int, FrameCache] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, stamp: int, cache: FrameCache) -> None:
        """Stores ``cache`` (without its logits) and drops entries older than ``stamp - horizon``."""
        self.entries[stamp] = cache.without_logits()
        while next(iter(self.entries)) < stamp - self.horizon_ns:
            self.entries.popitem(last=False)

    def nearest(self, stamp: int) -> int:
        """Time stamp of the buffered frame nearest to ``stamp`` (the older one on a tie)."""
        return min(self.entries, key=lambda s: (abs(s - stamp), s))

    def references(self, now: int, offsets=REFERENCE_OFFSETS, period_ns: int = FRAME_PERIOD_NS) -> list[int]:
        """Stamps of the frames nearest to ``now - offset x period``, farthest first."""
        return [self.nearest(now - offset * period_ns) for offset in offsets]


def label_summary(logits: torch.Tensor, names: tuple[str, ...], top: int = 3) -> str:
    labels = logits.argmax(dim=1).flatten()
    counts = torch.bincount(labels, minlength=logits.shape[1]).double()
    share, index = (counts / counts.sum()).topk(min(top, logits.shape[1]))
    return ", ".join(f"{names[i] if i < len(names) else i} {100 * s:.0f}%"
                     for s, i in zip(share.tolist(), index.tolist()))


def _randomise_temporal_scales(model: SDCPC, seed: int) -> None:
    """Non-zero values for the zero-initialised scales so that the temporal branch changes the output."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in (model.ssea.gamma, model.dssa.gamma, model.dssa.gate.conv.weight):
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

    images = normalise(synthetic_frames(frames, height, width, seed)).unsqueeze(1)  # (T, 1, 3, H, W)
    buffer = FrameBuffer((max(REFERENCE_OFFSETS) + 1) * FRAME_PERIOD_NS)
    encode_ms, temporal_ms, peak = [], [], 0
    last_refs, last_logits = [], None
    with torch.inference_mode():
        for index in range(frames):
            stamp = index * FRAME_PERIOD_NS
            start = time.perf_counter()
            current = model.encode_frame(images[index])
            middle = time.perf_counter()
            buffer.add(stamp, current)
            ref_stamps = buffer.references(stamp)
            logits = model.temporal_step(current, [buffer.entries[s] for s in ref_stamps])
            end = time.perf_counter()
            encode_ms.append(1e3 * (middle - start))
            temporal_ms.append(1e3 * (end - middle))
            peak = max(peak, len(buffer))
            last_refs, last_logits = [s // FRAME_PERIOD_NS for s in ref_stamps], logits
            changed = (logits.argmax(1) != current.logits.argmax(1)).double().mean().item()
            print(f"frame {index:3d}  refs {str(last_refs):<14} encode {encode_ms[-1]:7.1f} ms  temporal "
                  f"{temporal_ms[-1]:6.1f} ms  changed {100 * changed:4.1f}%  top-3: "
                  f"{label_summary(logits, CITYSCAPES_CLASSES)}")

        clip = torch.stack([images[i] for i in (*last_refs, frames - 1)], dim=1)  # (1, 4, 3, H, W)
        reference = model.forward_clip(clip).temporal_logits
    diff = (last_logits - reference).abs().max().item()
    ok = diff <= SELF_CHECK_TOLERANCE
    static, temporal = statistics.mean(encode_ms), statistics.mean(temporal_ms)
    print(f"summary: {frames} frames; encode ms mean {static:.1f} median {statistics.median(encode_ms):.1f}; "
          f"temporal ms mean {temporal:.1f} median {statistics.median(temporal_ms):.1f}; temporal cost "
          f"{100 * temporal / static:.1f}% of the static branch; peak buffer {peak} frames")
    print(f"self-check: frame {frames - 1} streamed vs forward_clip on frames "
          f"{[*last_refs, frames - 1]}: max abs diff {diff:.3e} -> {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
