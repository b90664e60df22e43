"""``sdcpc-eval``: mIoU, per-class IoU and video consistency (mVC8, mVC16) of a checkpoint on a data set.

Example::

    sdcpc-eval --checkpoint model.safetensors --data VSPW_480p [--dataset vspw|cityscapes|camvid]
               [--split val] [--streaming] [--consistency-mode vspw|corrected] [--short-side 480]
               [--max-videos N] [--out DIR] [--overwrite] [--classes NAME_OR_YAML] [--device cpu|cuda]
               [--threads 1] [--overlays N] [--switch-off ssea|dssa ...]
               [--smoothing none|ema:A|window[:O1,O2,..]]

``--checkpoint`` takes whatever weights the node takes (``sdcpc_core.weights.resolve``): a shipped name,
an sdcpc checkpoint, a Hugging Face SegFormer folder or an mmseg / NVlabs ``.pth``; one line on stderr
says what was loaded. ``--threads`` sets torch's CPU threads (default 1: on a machine shared with
other work, more threads than free cores stall in OpenMP barriers, several times slower; give the
number of idle cores on a dedicated machine).

Clip mode (default) scores each labelled frame from its clip through ``forward_clip``; ``--streaming``
feeds every video frame by frame through the robot's ``StreamingSegmenter`` (see
``sdcpc_core.eval.evaluator``). The class list is ``--classes`` (a shipped name or a YAML file), else
the checkpoint's own names, else ``<data>/classes.yaml`` when it exists, else the data set's shipped list.
``--switch-off ssea`` / ``dssa`` is a test-time ablation: that branch's residual scale is zeroed
before evaluating (``SDCPC.switch_off``). ``--smoothing ema:0.5`` or ``window`` (the data set's
reference offsets) smooths the model's probabilities over each video in streaming order, the
training-free baselines of ``sdcpc_core.eval.smoothing``; it implies ``--streaming``.

The report folder (``report.json``, ``report.md``, PNG plots; see ``sdcpc_core.eval.report``) is
written into a temporary folder renamed to ``--out`` at the end; an existing ``--out`` is refused
unless ``--overwrite``. The summary line is printed. User mistakes (missing checkpoint, wrong data
layout, unreadable data, existing output) are one sentence on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..eval.metrics import VC_MODES
from .cli import (
    ToolParser,
    UserError,
    announce,
    at_least,
    check_output_folder,
    in_range,
    open_weights,
    output_stem,
    run_tool,
    smoothing,
)

PROG = "sdcpc-eval"
ALIGNMENTS = ("ssea", "dssa")  # SDCPC.switch_off's names, here without importing torch
DATASETS = ("vspw", "cityscapes", "camvid")
MAX_SHORT_SIDE = 4320  # an 8K frame's short side; beyond it the resize alone needs gigabytes


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog=PROG, description="Evaluate an SD-CPC checkpoint on a video segmentation data set.")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: a shipped name, an sdcpc checkpoint, a Hugging Face SegFormer folder or an "
                             "mmseg .pth")
    parser.add_argument("--data", required=True, type=Path, help="data set root folder")
    parser.add_argument("--dataset", choices=DATASETS, default="vspw", help="data set layout (default vspw)")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--streaming", action="store_true",
                        help="run frame by frame through the streaming runtime instead of clip by clip")
    parser.add_argument("--consistency-mode", choices=VC_MODES, default="vspw",
                        help="mVC definition: the public VSPW script's (default) or the corrected one")
    parser.add_argument("--short-side", type=in_range(32, MAX_SHORT_SIDE), default=480,
                        help=f"network input short side in pixels, 32..{MAX_SHORT_SIDE} (default 480)")
    parser.add_argument("--max-videos", type=at_least(1), default=None, help="evaluate only the first N videos")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: <checkpoint name>-eval-<dataset>-<split>-<mode> beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--classes", default=None,
                        help="class list: a shipped name (vspw, cityscapes, camvid) or a YAML file")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=in_range(1, os.cpu_count() or 1), default=1,
                        help="torch CPU threads (default 1; more only on a machine with that many idle cores)")
    parser.add_argument("--overlays", type=at_least(0), default=8,
                        help="frames drawn as ground truth | prediction overlays (default 8)")
    parser.add_argument("--switch-off", action="append", choices=ALIGNMENTS, default=[], metavar="BRANCH",
                        help="test-time ablation: evaluate with this alignment branch's residual zeroed "
                             f"({' or '.join(ALIGNMENTS)}; repeatable)")
    parser.add_argument("--smoothing", type=smoothing, default="none",
                        help="training-free temporal smoothing of the probabilities: none (default), ema:A "
                             "(0 < A <= 1, e.g. ema:0.5) or window[:O1,O2,..] (mean over the frame and the "
                             "reference offsets); implies --streaming")
    return parser


def _device(text: str | None):
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text} asks for CUDA, but torch sees no CUDA device; use --device cpu")
    return device


def _class_list(args, loaded):
    """The class list and where it came from."""
    from ..classes import ClassList

    try:
        if args.classes is not None:
            return ClassList.load(args.classes), args.classes
        if loaded.named_classes:
            return loaded.classes, "checkpoint"
        local = args.data / "classes.yaml"
        if local.is_file():
            return ClassList.from_yaml(local), str(local)
        return ClassList.shipped(args.dataset), f"shipped {args.dataset}"
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None


def _dataset(args):
    from ..data.datasets import CamVidDataset, CityscapesSequenceDataset, VSPWDataset

    reader = {"vspw": VSPWDataset, "cityscapes": CityscapesSequenceDataset, "camvid": CamVidDataset}[args.dataset]
    try:
        dataset = reader(str(args.data), args.split)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{error} (is --dataset {args.dataset} the layout of {args.data}?)") from None
    if len(dataset) == 0:
        raise UserError(f"no labelled frame found in split {args.split!r} of the {args.dataset} data at {args.data}")
    return dataset


def main(argv: list[str] | None = None) -> int:
    """Runs the tool; returns the exit status (2 for argument and user errors)."""
    return run_tool(build_parser(), _run, argv)


def _run(args) -> int:
    import torch

    from ..eval.evaluator import evaluate
    from ..eval.report import write_report

    if args.out is not None:
        check_output_folder(args.out, args.overwrite)
    device = _device(args.device)
    torch.set_num_threads(args.threads)
    loaded = open_weights(args.checkpoint)
    model, stem = loaded.model, output_stem(loaded)
    smoothed = args.smoothing != "none"
    mode = "streaming" if args.streaming or smoothed else "clip"
    suffix = "-" + args.smoothing.replace(":", "").replace(",", "_") if smoothed else ""
    out = args.out if args.out is not None else stem.with_name(
        f"{stem.name}-eval-{args.dataset}-{args.split}-{mode}{suffix}")
    check_output_folder(out, args.overwrite)
    try:
        for alignment in args.switch_off:
            model.switch_off(alignment)
    except ValueError as error:
        raise UserError(str(error)) from None
    classes, classes_source = _class_list(args, loaded)
    if len(classes) != model.num_classes:
        raise UserError(f"the class list ({classes_source}) has {len(classes)} classes but the checkpoint predicts "
                         f"{model.num_classes}; pass --classes with a list of {model.num_classes} classes")
    dataset = _dataset(args)
    announce(PROG, loaded)
    try:
        report = evaluate(model, dataset, classes, mode=mode, consistency_mode=args.consistency_mode,
                          short_side=args.short_side, device=device, max_videos=args.max_videos,
                          num_overlays=args.overlays, smoothing=args.smoothing)
    except (OSError, ValueError) as error:
        raise UserError(f"evaluation stopped: {error}") from None
    plus = f" + {report.info['smoothing']}" if smoothed else ""
    report.title = f"{stem.name}{plus} on {args.dataset} {args.split} ({mode})"
    report.info = {"checkpoint": str(args.checkpoint), "data": str(args.data), "classes": classes_source,
                   **report.info}
    if args.switch_off:
        report.title += f", {' and '.join(args.switch_off)} switched off"
        report.info["switched_off"] = list(args.switch_off)
    try:
        write_report(report, out, overwrite=args.overwrite)
    except FileExistsError as error:
        raise UserError(str(error)) from None
    print(report.summary_line())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
