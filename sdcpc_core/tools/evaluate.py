"""``sdcpc-eval``: mIoU, per-class IoU and video consistency (mVC8, mVC16) of a checkpoint on a data set.

Example::

    sdcpc-eval --checkpoint model.safetensors --data VSPW_480p [--dataset vspw|cityscapes|camvid]
               [--split val] [--streaming] [--consistency-mode vspw|corrected] [--short-side 480]
               [--max-videos N] [--out DIR] [--overwrite] [--classes NAME_OR_YAML] [--device cpu|cuda]
               [--overlays N] [--switch-off ssea|dssa ...]

Clip mode (default) scores each labelled frame from its clip through ``forward_clip``; ``--streaming``
feeds every video frame by frame through the robot's ``StreamingSegmenter`` (see
``sdcpc_core.eval.evaluator``). The class list is ``--classes`` (a shipped name or a YAML file), else
the checkpoint's own, else ``<data>/classes.yaml`` when it exists, else the data set's shipped list.
``--switch-off ssea`` / ``dssa`` is a test-time ablation: that branch's residual scale is zeroed
before evaluating (``SDCPC.switch_off``).

The report folder (``report.json``, ``report.md``, PNG plots; see ``sdcpc_core.eval.report``) is
written into a temporary folder renamed to ``--out`` at the end; an existing ``--out`` is refused
unless ``--overwrite``. The summary line is printed. User mistakes (missing checkpoint, wrong data
layout, unreadable data, existing output) are one sentence on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..eval.metrics import VC_MODES
from .cli import ToolParser, UserError, at_least, run_tool

PROG = "sdcpc-eval"
ALIGNMENTS = ("ssea", "dssa")  # SDCPC.switch_off's names, here without importing torch
DATASETS = ("vspw", "cityscapes", "camvid")


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog=PROG, description="Evaluate an SD-CPC checkpoint on a video segmentation data set.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="model weights written by save_weights")
    parser.add_argument("--data", required=True, type=Path, help="data set root folder")
    parser.add_argument("--dataset", choices=DATASETS, default="vspw", help="data set layout (default vspw)")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--streaming", action="store_true",
                        help="run frame by frame through the streaming runtime instead of clip by clip")
    parser.add_argument("--consistency-mode", choices=VC_MODES, default="vspw",
                        help="mVC definition: the public VSPW script's (default) or the corrected one")
    parser.add_argument("--short-side", type=at_least(32), default=480,
                        help="network input short side in pixels (default 480)")
    parser.add_argument("--max-videos", type=at_least(1), default=None, help="evaluate only the first N videos")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: <checkpoint name>-eval-<dataset>-<split>-<mode> beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--classes", default=None,
                        help="class list: a shipped name (vspw, cityscapes, camvid) or a YAML file")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--overlays", type=at_least(0), default=8,
                        help="frames drawn as ground truth | prediction overlays (default 8)")
    parser.add_argument("--switch-off", action="append", choices=ALIGNMENTS, default=[], metavar="BRANCH",
                        help="test-time ablation: evaluate with this alignment branch's residual zeroed "
                             f"({' or '.join(ALIGNMENTS)}; repeatable)")
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


def _class_list(args, checkpoint: Path):
    """The class list and where it came from."""
    from ..checkpoints import read_class_list
    from ..classes import ClassList

    try:
        if args.classes is not None:
            return ClassList.load(args.classes), args.classes
        stored = read_class_list(checkpoint)
        if stored is not None:
            return stored, "checkpoint"
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
    from ..checkpoints import load_model
    from ..eval.evaluator import evaluate
    from ..eval.report import write_report

    checkpoint: Path = args.checkpoint
    mode = "streaming" if args.streaming else "clip"
    out = args.out if args.out is not None else checkpoint.parent / (
        f"{checkpoint.stem}-eval-{args.dataset}-{args.split}-{mode}")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    if out.exists() and not args.overwrite:
        raise UserError(f"output folder {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    device = _device(args.device)
    try:
        model = load_model(checkpoint)
        for alignment in args.switch_off:
            model.switch_off(alignment)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    classes, classes_source = _class_list(args, checkpoint)
    if len(classes) != model.num_classes:
        raise UserError(f"the class list ({classes_source}) has {len(classes)} classes but the checkpoint predicts "
                         f"{model.num_classes}; pass --classes with a list of {model.num_classes} classes")
    dataset = _dataset(args)
    try:
        report = evaluate(model, dataset, classes, mode=mode, consistency_mode=args.consistency_mode,
                          short_side=args.short_side, device=device, max_videos=args.max_videos,
                          num_overlays=args.overlays)
    except (OSError, ValueError) as error:
        raise UserError(f"evaluation stopped: {error}") from None
    report.title = f"{checkpoint.stem} on {args.dataset} {args.split} ({mode})"
    report.info = {"checkpoint": str(checkpoint), "data": str(args.data), "classes": classes_source, **report.info}
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
