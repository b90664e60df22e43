"""``sdcpc-model-info``: parameters and GFLOPs of an SD-CPC variant, per top-level module.

Example::

    sdcpc-model-info --variant sdcpc_b1 --num-classes 124 --size 480x853 [--refs 3] [--clip-frames 4]

Four costs are reported: (a) the static branch ``encode_frame`` of one frame, (b) the
``temporal_step`` of one frame with ``--refs`` cached references, (c) the streaming cost per frame
a + b (what the robot pays: each frame is encoded once and cached), and (d) a ``--clip-frames``
clip through ``forward_clip`` (every frame through the backbone, the per-clip figure of the
peers), plus the ratio of (c) to the per-frame SegFormer baseline with the same backbone and
decoder width.

Counting: ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (no memory, no
arithmetic), so even MiT-B5 at 480x853 takes seconds. It counts matrix products, convolutions and
attention (SDPA runs its math path on ``meta`` and is counted as two batched products) as
2 x multiply-adds; element-wise operations are not counted. The DSSA window attention is written
as element-wise products and sums, so its two contractions (logits and weighted sum) are added
analytically to the DSSA row. Costs are those of the zero-padded input (multiples of 32).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import VARIANTS, build_model
from ..models.layers import ceil_div
from ..models.sdcpc import SDCPC, SIZE_MULTIPLE
from .cli import at_least, image_size, variant

MODULES = ("backbone", "decode_head", "ssea", "dssa", "temporal_classifier", "projector")
PHASES = ("static", "temporal", "streaming", "clip")
CONVENTION = "GFLOPs = 2 x multiply-adds (1e9); matrix products, convolutions and attention only"
ANALYTIC_NOTE = ("dssa rows marked * include an analytic count of the window attention (Hadamard "
                 "products and sums, invisible to FlopCounterMode): 2 x 2 x B x R x window_dim x H/8 x W/8 x "
                 "window^2 for the logits and the weighted sum")
# Spec section 5: Cityscapes val, MiT-B1 (parameters in M, GFLOPs per clip).
PUBLISHED = (
    ("SegFormer (per frame)", 13.8, None),
    ("CFFM", 15.4, 158.7),
    ("MRCFA", 14.9, 145.0),
    ("TV3S", 17.3, 83.6),
)
PUBLISHED_NOTE = ("published figures (Cityscapes, MiT-B1; GFLOPs per clip). Their input size and "
                  "FLOP convention are not stated in our spec (common counters report one "
                  "multiply-add as one FLOP), so only the parameter counts are directly comparable.")
def baseline_for(model: SDCPC) -> SDCPC:
    """Per-frame SegFormer with the model's backbone and decoder width (isolates the temporal cost)."""
    config = model.config
    mit = config.backbone.removeprefix("mit_")
    variant = f"segformer_{mit}" if f"segformer_{mit}" in VARIANTS else "sdcpc_r101"
    overrides = {"embed_dim": config.embed_dim}
    if variant == "sdcpc_r101":
        overrides["temporal"] = False
    with torch.device(next(model.parameters()).device):
        return build_model(variant, config.num_classes, **overrides).eval()


def baseline_name(model: SDCPC) -> str:
    mit = model.config.backbone.removeprefix("mit_")
    if f"segformer_{mit}" in VARIANTS:
        return f"segformer_{mit} (embed_dim {model.config.embed_dim})"
    return f"{model.config.backbone} + SegFormer head (temporal=False, embed_dim {model.config.embed_dim})"


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level child module (in declaration order)."""
    return {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}


def _window_attention_flops(model: SDCPC, counter: dict) -> list:
    """Hooks adding the DSSA window attention's multiply-adds (x 2) to ``counter["flops"]``."""
    if not model.is_temporal:
        return []
    fine = model.dssa.fine

    def hook(module, args):
        ref_kv = args[-1]  # forward(features, context, ref_kv)
        b, r, two_width, h, w = ref_kv.shape
        per_product = b * r * (two_width // 2) * h * w * module.window ** 2
        counter["flops"] += 2 * 2 * per_product  # logits + weighted sum, 2 FLOPs per multiply-add

    return [fine.register_forward_pre_hook(hook)]


def count_flops(model: SDCPC, fn: Callable, *args) -> dict[str, int]:
    """FLOPs of ``fn(*args)`` per top-level module of ``model`` (plus ``"other"`` and ``"total"``).

    The model's methods call submodules directly (``decode_head.linear_c`` from SSEA, ``dssa.fine.project_kv``)
    rather than through their parents' ``forward``, so FlopCounterMode's own module hierarchy would
    miss part of them. Instead, hooks on every submodule attribute the counter's running total, at
    each module boundary, to the top-level module that owns the innermost module being run.
    """
    analytic = {"flops": 0}
    counter = FlopCounterMode(display=False)
    rows = {name: 0 for name, _ in model.named_children()}
    rows["other"] = 0
    stack: list[str] = []
    seen = [0]

    def flush() -> None:
        total = counter.get_total_flops()
        rows[stack[-1] if stack else "other"] += total - seen[0]
        seen[0] = total

    def enter(owner: str) -> Callable:
        def pre_hook(module, args):
            flush()
            stack.append(owner)
        return pre_hook

    def leave(module, args, output):
        flush()
        stack.pop()

    handles = _window_attention_flops(model, analytic)
    for name, child in model.named_children():
        for module in child.modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), counter:
            fn(*args)
            flush()
    finally:
        for handle in handles:
            handle.remove()
    if analytic["flops"]:
        rows["dssa"] += analytic["flops"]
    rows["total"] = counter.get_total_flops() + analytic["flops"]
    return rows


def sdpa_is_counted() -> bool:
    """Whether this torch build's FlopCounterMode counts SDPA on ``meta`` tensors."""
    q = torch.empty(1, 2, 8, 4, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        F.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() == 4 * 2 * 8 * 8 * 4


def analyse(variant: str, num_classes: int, height: int, width: int, refs: int = 3, clip_frames: int = 4) -> dict:
    """All numbers of the report (FLOPs as integers, parameters as integers)."""
    with torch.device("meta"):
        model = build_model(variant, num_classes).eval()
    baseline = baseline_for(model)
    image = torch.empty(1, 3, height, width, device="meta")
    with torch.no_grad():  # one frame first: constants derived from the weights are built once, not per frame
        current = model.encode_frame(image)
        references = [current.without_logits()] * refs
        model.temporal_step(current, references)
        baseline.encode_frame(image)
    flops = {"static": count_flops(model, model.encode_frame, image)}
    if model.is_temporal:
        flops["temporal"] = count_flops(model, model.temporal_step, current, references)
    else:
        flops["temporal"] = {name: 0 for name in flops["static"]}
    flops["streaming"] = {name: flops["static"][name] + flops["temporal"][name] for name in flops["static"]}
    frames = torch.empty(1, clip_frames, 3, height, width, device="meta")
    flops["clip"] = count_flops(model, model.forward_clip, frames)
    baseline_flops = count_flops(baseline, baseline.encode_frame, image)["total"]
    params = parameter_counts(model)
    prototype_values = sum(b.numel() for b in model.prototypes.buffers()) if model.is_temporal else 0
    padded = (ceil_div(height, SIZE_MULTIPLE) * SIZE_MULTIPLE, ceil_div(width, SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return {
        "variant": variant,
        "num_classes": num_classes,
        "size": [height, width],
        "padded_size": list(padded),
        "refs": refs,
        "clip_frames": clip_frames,
        "window": model.config.window if model.is_temporal else None,
        "convention": CONVENTION,
        "sdpa_counted": sdpa_is_counted(),
        "params": {**params, "total": sum(p.numel() for p in model.parameters())},
        "prototype_buffer_values": prototype_values,
        "flops": flops,
        "gflops": {phase: {name: round(value / 1e9, 4) for name, value in rows.items()}
                   for phase, rows in flops.items()},
        "analytic_rows": ["dssa"] if model.is_temporal else [],
        "baseline": {"name": baseline_name(model), "params": sum(p.numel() for p in baseline.parameters()),
                     "flops": baseline_flops},
        "streaming_over_baseline": flops["streaming"]["total"] / baseline_flops,
    }


_NAME, _PARAMS = 21, 11


def _g(flops: int) -> str:
    return f"{flops / 1e9:.2f}"


def _m(count: int) -> str:
    return f"{count / 1e6:.3f}"


def format_report(report: dict) -> str:
    h, w = report["size"]
    ph, pw = report["padded_size"]
    t = report["clip_frames"]
    flops, params = report["flops"], report["params"]
    widths = (10, 10, 11, 15)
    titles = ("static", "temporal", "streaming", f"{t}-frame clip")
    header = f"{'module':<{_NAME}}{'params (M)':>{_PARAMS}}" + "".join(
        f"{title:>{width - 1}} " for title, width in zip(titles, widths))

    def row(name: str, count: str, cells: list) -> str:
        return f"{name:<{_NAME}}{count:>{_PARAMS}}" + "".join(
            f"{_g(value) + mark:>{width}}" for (value, mark), width in zip(cells, widths))

    lines = [
        f"{report['variant']}: {report['num_classes']} classes, input {h}x{w} (computed at the padded "
        f"{ph}x{pw}), temporal step with {report['refs']} references, {t}-frame clip",
        f"convention: {CONVENTION}",
        "",
        header,
    ]
    names = [name for name in MODULES if name in params]
    if any(flops[phase].get("other", 0) for phase in PHASES):
        names.append("other")
    for name in names:
        mark = "*" if name in report["analytic_rows"] else " "
        cells = [(flops[phase].get(name, 0), mark if phase != "static" else " ") for phase in PHASES]
        lines.append(row(name, _m(params[name]) if name in params else "-", cells))
    if "prototypes" in params:
        lines.append(f"{'prototypes':<{_NAME}}{_m(params['prototypes']):>{_PARAMS}}   buffers only "
                     f"({report['prototype_buffer_values']} values; training only, no FLOPs)")
    lines.append(row("total", _m(params["total"]), [(flops[phase]["total"], " ") for phase in PHASES]))
    base = report["baseline"]
    projector_note = ", plus the training-time projector" if "projector" in params else ""
    lines += [
        "",
        *_wrap(f"static = encode_frame of one frame; temporal = temporal_step of one frame from cached "
               f"references; streaming = static + temporal per frame; clip = forward_clip of {t} frames "
               f"(every frame through the backbone{projector_note})."),
        f"per-frame baseline {base['name']}: {_m(base['params'])} M params, {_g(base['flops'])} GFLOPs per frame",
        f"streaming / per-frame baseline: {report['streaming_over_baseline']:.3f}x "
        f"(+{_g(flops['streaming']['total'] - base['flops'])} GFLOPs per frame)",
    ]
    if report["analytic_rows"]:
        lines += _wrap(f"* {ANALYTIC_NOTE} (window {report['window']}).")
    if not report["sdpa_counted"]:
        lines += _wrap("warning: this torch build does not count scaled_dot_product_attention on the meta "
                       "device; the attention FLOPs of backbone, ssea and dssa are missing.")
    lines += ["", *_wrap(PUBLISHED_NOTE)]
    for name, mparams, gflops in PUBLISHED:
        per_clip = f"{gflops:.1f} GFLOPs per clip" if gflops is not None else "GFLOPs not given"
        lines.append(f"  {name:<22}{mparams:>5.1f} M params, {per_clip}")
    return "\n".join(line.rstrip() for line in lines)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, 100, subsequent_indent="  ")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdcpc-model-info",
        description="Parameters and GFLOPs (2 x multiply-adds) of an SD-CPC variant, per top-level module.")
    parser.add_argument("--variant", type=variant, default="sdcpc_b1",
                        help=f"model variant, one of: {', '.join(VARIANTS)}")
    parser.add_argument("--num-classes", type=at_least(1), default=124, help="number of classes (default 124, VSPW)")
    parser.add_argument("--size", type=image_size, default="480x853",
                        help="input HEIGHTxWIDTH in pixels (default 480x853)")
    parser.add_argument("--refs", type=at_least(1), default=3, help="references of the temporal step (default 3)")
    parser.add_argument("--clip-frames", type=at_least(1), default=4,
                        help="frames of the forward_clip figure (default 4)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    height, width = args.size
    report = analyse(args.variant, args.num_classes, height, width, args.refs, args.clip_frames)
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
