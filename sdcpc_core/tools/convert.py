"""``sdcpc-convert``: any weights the node takes -> an sdcpc checkpoint with its class names inside.

Example::

    sdcpc-convert weights/segformer-b1-finetuned-cityscapes-1024-1024 b1_cityscapes.safetensors \
                  [--classes NAME_OR_YAML] [--input-size 512x1024] [--overwrite]

The input is a shipped name, an sdcpc checkpoint, a Hugging Face SegFormer folder or an mmseg /
NVlabs ``.pth`` (``sdcpc_core.weights.resolve``); a SegFormer becomes the ``sdcpc_bX`` of its encoder
with untrained (zero-scaled) temporal parts, so it predicts exactly what the SegFormer predicts. The
output (``save_weights``, written atomically) carries in its metadata:

* ``classes``: ``--classes`` (a shipped list name or a YAML file), else the input's class names
  (Hugging Face ``id2label``, mmseg ``meta``); none when neither names them;
* ``input_size``: ``--input-size``, else the input's recommended network input, if it has one;
* ``converted_from``: what a SegFormer was converted from (the node then says its temporal parts
  are untrained).

One line on stderr says what was loaded, one on stdout what was written. User mistakes (unusable
input, a class list of another length, an existing output without ``--overwrite``) are one sentence
on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import SIZE_MULTIPLE, ToolParser, UserError, announce, image_size, open_weights, run_tool

PROG = "sdcpc-convert"
MAX_INPUT_SIDE = 8192  # sdcpc_core.weights.format.MAX_INPUT_SIDE


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog=PROG, description="Convert SegFormer / SD-CPC weights into an sdcpc checkpoint with "
                                               "class names.")
    parser.add_argument("source", metavar="WEIGHTS", help="a shipped name, an sdcpc checkpoint, a Hugging Face "
                                                           "SegFormer folder or an mmseg .pth")
    parser.add_argument("out", type=Path, metavar="OUT.safetensors", help="the checkpoint to write")
    parser.add_argument("--classes", default=None,
                        help="class list to store: a shipped name (cityscapes, camvid, vspw) or a YAML file "
                             "(default: the input's names)")
    parser.add_argument("--input-size", type=image_size, default=None, metavar="HxW",
                        help="recommended network input to store, multiples of 32 (default: the input's, if any)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


def _run(args) -> int:
    from ..classes import ClassList
    from ..weights import save_weights
    from ..weights.resolve import CONVERTED_FROM_KEY

    out: Path = args.out
    if out.suffix != ".safetensors":
        raise UserError(f"the output {out} must be named *.safetensors")
    if out.is_dir() or (out.exists() and not args.overwrite):
        raise UserError(f"output {out} already exists; pass --overwrite to replace it" if not out.is_dir()
                        else f"output {out} is a folder; give a file name ending in .safetensors")
    size = args.input_size
    if size is not None and (max(size) > MAX_INPUT_SIDE or any(side % SIZE_MULTIPLE for side in size)):
        raise UserError(f"--input-size must be multiples of {SIZE_MULTIPLE} in {SIZE_MULTIPLE}..{MAX_INPUT_SIDE}, "
                        f"got {size[0]}x{size[1]}")
    loaded = open_weights(args.source)
    model, info = loaded.model, loaded.info
    classes = loaded.classes if loaded.named_classes else None
    if args.classes is not None:
        try:
            classes = ClassList.load(args.classes)
        except (OSError, ValueError) as error:
            raise UserError(str(error)) from None
        if len(classes) != model.num_classes:
            raise UserError(f"the class list {args.classes} has {len(classes)} classes but the model predicts "
                            f"{model.num_classes}; give a list with {model.num_classes} classes")
    announce(PROG, loaded)
    metadata: dict[str, object] = {}
    if classes is not None:
        metadata["classes"] = classes.to_json()
    size = size or loaded.input_size
    if size is not None:
        metadata["input_size"] = list(size)
    if info.converted_from:
        metadata[CONVERTED_FROM_KEY] = info.converted_from
    elif info.untrained_temporal:
        metadata[CONVERTED_FROM_KEY] = f"{info.label()} ({info.path.name})"
    try:
        save_weights(model, out, metadata=metadata)
    except OSError as error:
        raise UserError(f"cannot write {out}: {error.strerror or error}") from None
    named = f"{len(classes)} named classes" if classes is not None else "no class names"
    shape = f", input {size[0]}x{size[1]}" if size is not None else ""
    print(f"wrote {out} ({info.variant}, {named}{shape})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
