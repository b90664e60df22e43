"""Benchmark proxy: ATen operators dispatched per streaming frame, SD-CPC against per-frame SegFormer.

Run with::

    python bench/op_count.py                    # B0 and B1, the GPU path, a table per module
    python bench/op_count.py --cases b1 --path cpu --json out/op_count.json

On a GPU at batch 1 a frame's cost is set by its kernel launches as much as by its arithmetic, and
every ATen operator that is not a view is at least one kernel there. Counting them needs no GPU and
gives the same numbers on every machine, so this is the CPU-side guide to GPU cost.

What is counted, after one warm-up frame, for one streaming frame of each model built with random weights in eval mode:
``encode_frame`` (the static branch) and ``temporal_step`` over three cached references (SD-CPC;
the per-frame SegFormer has no temporal stage), exactly what the eager back end runs. Operators
that only return a view (``view``, ``transpose``, ``slice``, ...), relabel a fresh tensor
(``_unsafe_view``) or allocate one (``empty``, ``new_empty``) are left out: they launch no kernel; the windowed
cross-frame attention is counted as one operator (it is one fused kernel on a GPU; the plain-op
reference it replaces is counted with ``--unfused-window``).

Both paths run the frame on the CPU under ``torch.inference_mode``, as the eager back end does.
``--path gpu`` (default) counts the formulations a CUDA tensor takes: the dispatch rule
``sdcpc_core.ops.dispatch.eager_cpu_inference`` is answered "no" for the run, as it is for every
non-CPU tensor, so each operator with several formulations takes its general one, and the fused custom
ops (``sdcpc_core.ops.fused``) are called, each one operator (one kernel on a GPU; on the CPU they run
their plain ops, which are not counted). ``--path cpu``
counts the eager CPU formulations (in-place rewrites).

Operators are attributed to the model's top-level part that dispatched them (``backbone``,
``decode_head``, ``ssea``, ``dssa``, ``temporal_classifier``; ``model`` for the model's own glue code).

Goal (tracker): SD-CPC-B1 at most 1.3x SegFormer-B1's operators per streaming frame (GPU path).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdcpc_core.models import build_model
from sdcpc_core.models import dssa as dssa_module
from sdcpc_core.ops import window_attention as fused_switch
from sdcpc_core.ops.dispatch import eager_cpu_inference

CASES = {  # name -> (sdcpc variant, segformer variant, (height, width), classes)
    "b0": ("sdcpc_b0", "segformer_b0", (512, 1024), 19),
    "b1": ("sdcpc_b1", "segformer_b1", (480, 853), 124),
}
GOAL = 1.3
WINDOW_OP = "window_attention (one fused kernel)"
NO_KERNEL = {  # operators that launch no kernel on a GPU
    torch.ops.aten._unsafe_view.default,  # reshapes a fresh tensor in place of a view
    torch.ops.aten.empty.memory_format,  # allocations (from the caching allocator)
    torch.ops.aten.new_empty.default,
}


class OperatorCounter(TorchDispatchMode):
    """Counts non-view ATen operators by (top-level module of ``model``, operator name)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.paused = 0
        self.parts = ["model"]  # stack of the top-level modules being run
        self.hooks: list = []

    def part(self) -> str:
        """The top-level module (``backbone``, ``ssea``, ...) the current operator runs in."""
        return self.parts[-1]

    def __enter__(self):
        for name, child in self.model.named_children():
            self.hooks.append(child.register_forward_pre_hook(lambda *_, name=name: self.parts.append(name)))
            self.hooks.append(child.register_forward_hook(lambda *_: self.parts.pop() and None))  # None: output kept
        return super().__enter__()

    def __exit__(self, *exc_info):
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        return super().__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and not func.is_view and func not in NO_KERNEL:
            self.counts[(self.part(), func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def general_formulations():
    """Every ``sdcpc_core`` module's ``eager_cpu_inference`` answers False and the fused custom ops take
    CPU tensors, as for a CUDA tensor (a custom op is one operator; on the CPU it runs its plain ops)."""
    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("sdcpc_core") and getattr(m, "eager_cpu_inference", None) is eager_cpu_inference]
    routes = fused_switch._routes_to_custom_op
    for module in patched:
        module.eager_cpu_inference = lambda *tensors: False
    fused_switch._routes_to_custom_op = lambda device: True
    try:
        yield
    finally:
        for module in patched:
            module.eager_cpu_inference = eager_cpu_inference
        fused_switch._routes_to_custom_op = routes


@contextlib.contextmanager
def fused_window_counted(counter: OperatorCounter):
    """The model's window-attention calls count as one operator each (the fused GPU kernel)."""
    inner = dssa_module.window_attention

    def counted(*args, **kwargs):
        counter.counts[(counter.part(), WINDOW_OP)] += 1
        counter.paused += 1
        try:
            return inner(*args, **kwargs)
        finally:
            counter.paused -= 1

    dssa_module.window_attention = counted
    try:
        yield
    finally:
        dssa_module.window_attention = inner


@contextlib.contextmanager
def unfused_window():
    """The model's window-attention calls run the plain-op formulations (never the custom op)."""
    inner = dssa_module.window_attention
    dssa_module.window_attention = functools.partial(inner, allow_fused=False)
    try:
        yield
    finally:
        dssa_module.window_attention = inner


def count_frame(variant: str, size: tuple[int, int], classes: int, path: str = "gpu", refs: int = 3,
                fused_window: bool = True) -> collections.Counter:
    """Operators of one streaming frame of ``variant`` at ``size`` -> Counter of (part, operator)."""
    torch.manual_seed(0)
    model = build_model(variant, num_classes=classes).eval()
    image = torch.randn(1, 3, *size)
    counter = OperatorCounter(model)
    formulations = general_formulations() if path == "gpu" else contextlib.nullcontext()
    with torch.inference_mode(), formulations:
        references = [model.encode_frame(image).without_logits() for _ in range(refs)] if model.is_temporal else []
        model.temporal_step(model.encode_frame(image), references)  # warm-up: constants built once are built
        window = fused_window_counted(counter) if fused_window else unfused_window()
        with counter, window:
            model.temporal_step(model.encode_frame(image), references)
    return counter.counts


def summarise(counts: collections.Counter) -> dict:
    """Totals per part and per operator, largest first."""
    parts, ops = collections.Counter(), collections.Counter()
    for (part, op), n in counts.items():
        parts[part] += n
        ops[op] += n
    return {"total": sum(counts.values()), "parts": dict(parts.most_common()), "operators": dict(ops.most_common())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="cases (default: all)")
    p.add_argument("--path", choices=("gpu", "cpu"), default="gpu",
                   help="gpu: the formulations a CUDA tensor takes (computed on the CPU); "
                        "cpu: the eager CPU inference formulations (default: gpu)")
    p.add_argument("--unfused-window", action="store_true",
                   help="count the window attention's plain-op reference instead of one fused operator")
    p.add_argument("--top", type=int, default=8, help="operators listed per model (default: 8)")
    p.add_argument("--json", type=Path, help="also write the counts here as JSON")
    args = p.parse_args(argv)

    results = {}
    print(f"ATen operators per streaming frame ({args.path} path, views excluded, window attention "
          f"{'as its reference ops' if args.unfused_window else 'counted once'})")
    print("| case | model | total | by part | most frequent |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        sdcpc, segformer, size, classes = CASES[case]
        results[case] = {}
        for variant in (segformer, sdcpc):
            summary = summarise(count_frame(variant, size, classes, args.path, fused_window=not args.unfused_window))
            results[case][variant] = summary
            parts = ", ".join(f"{k} {v}" for k, v in summary["parts"].items())
            top = ", ".join(f"{k} {v}" for k, v in list(summary["operators"].items())[:args.top])
            row = f"{case} {size[0]}x{size[1]}, {classes} classes | {variant} | {summary['total']} | {parts} | {top}"
            print(f"| {row} |")
        ratio = results[case][sdcpc]["total"] / results[case][segformer]["total"]
        results[case]["ratio"] = ratio
        print(f"| {case} | ratio | {ratio:.2f}x | goal <= {GOAL}x: {'met' if ratio <= GOAL else 'not met'} | |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
