"""Benchmark: per-frame latency of streaming SD-CPC against per-frame SegFormer of the same backbone.

Run with::

    python bench/streaming.py                      # every back end that runs here, both cases, 50 frames
    python bench/streaming.py --backends eager --frames 20 --cases b0
    python bench/streaming.py --backends eager --sdcpc-options ssea_dim=64 window_dim=32 window_heads=2
    python bench/streaming.py --device cuda --precision fp16 --backends eager cudagraph --frames 30 --no-memory

What it measures, side by side in one run, on the same device, input size and back end:

* ``sdcpc``: ``sdcpc_b0`` / ``sdcpc_b1`` streamed through ``StreamingSegmenter`` (static branch
  ``encode`` + the temporal step over the references t-9, t-6, t-3 of the time-keyed buffer);
* ``segformer``: the per-frame baseline of the same backbone and decoder width (``segformer_b0`` /
  ``segformer_b1``, decoder width 256 like SD-CPC) through the same ``StreamingSegmenter`` and back
  end (``encode`` only; its temporal stage is empty).

Cases (input size = camera size, so preprocessing is a normalisation without resizing):
``b0``: MiT-B0 at 512x1024 with 19 classes (Cityscapes); ``b1``: MiT-B1 at 480x853 with 124 classes
(VSPW). The weights are random (fixed seed): latency does not depend on training, except through
the data-dependent stage-1 token selection of DSSA, whose cost is fixed by its static token count.
The frames are random uint8 images with 30 Hz stamps.

Time: the median over ``--frames`` steps (default 50) after ``--warmup`` steps (default 5, at least
1: a compiled back end compiles both programs on the first frame) of ``SegmentationResult.timings_ms``:
total and the stages preprocess, encode, temporal, postprocess (on CUDA each stage ends with a
synchronisation). The temporal step always receives ``len(offsets)`` references (duplicates at a
cold start), so its cost does not depend on how full the reference buffer is.

Side by side: for each (case, back end) one fresh Python subprocess (this script re-invoked with
``--worker``) builds both segmenters and alternates them frame by frame (SD-CPC, SegFormer, SD-CPC,
...), so that a load change on a shared machine hits both models alike and the ratio stays fair.

Peak memory: each model then runs alone in a fresh subprocess for the warm-up and 3 frames. CUDA:
``torch.cuda.max_memory_allocated()`` over that run (weights, buffer, activations; live tensors only;
CUDA graph pools included). CPU: the process's resident-set peak ``ru_maxrss`` at its end
(interpreter, libraries, weights and activations together). ``--no-memory`` skips these runs (with
``compile`` each is one more compilation).

Back ends: every one ``available_backends`` lists that runs on the device (``cudagraph`` and
``tensorrt`` need CUDA). A back end that falls back to eager (``compile`` when compilation fails,
``cudagraph`` when capture fails) is measured as it runs, and its rows say so with the reason.
``--compile-mode`` passes a ``torch.compile`` mode to the ``compile`` back end.

Goal (tracker): SD-CPC <= 1.15x SegFormer per-frame latency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys

from worker import run_worker  # bench/worker.py: this folder is on sys.path when run as a script

CASES = {  # name -> (sdcpc variant, segformer variant, (height, width), classes)
    "b0": ("sdcpc_b0", "segformer_b0", (512, 1024), 19),
    "b1": ("sdcpc_b1", "segformer_b1", (480, 853), 124),
}
MODELS = ("sdcpc", "segformer")
STAGES = ("preprocess", "encode", "temporal", "postprocess")
GOAL = 1.15


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="cases (default: all)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="back ends to run (default: every available one that runs on the device)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU (default: auto)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="(default: fp32)")
    p.add_argument("--frames", type=int, default=50, help="timed frames per case (default: 50)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed frames first (default: 5, at least 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile-mode", default="", help="torch.compile mode of the compile back end (default: "
                   "inductor's default), e.g. reduce-overhead")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (one process per model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and frames (default: 0)")
    p.add_argument("--sdcpc-options", nargs="+", default=[], metavar="KEY=VALUE", type=_option,
                   help="build_model options for the SD-CPC model only, values read as YAML "
                        "(e.g. ssea_dim=64 window_dim=32 window_heads=2; default: none)")
    p.add_argument("--worker", nargs=3, metavar=("CASE", "MODELS", "BACKEND"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _option(text):
    """``KEY=VALUE`` -> ``(key, value)`` with the value read as YAML."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- worker


def _worker(args, device):
    """Runs the models named in ``--worker CASE MODELS BACKEND`` (comma-separated), alternating frames."""
    import numpy as np
    import torch

    from sdcpc_core.models import build_model
    from sdcpc_core.runtime import StreamingSegmenter
    from sdcpc_core.runtime.backends import backend_options

    case, kinds, backend = args.worker
    kinds = kinds.split(",")
    sdcpc_variant, segformer_variant, (height, width), classes = CASES[case]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    segmenters, params = {}, {}
    for kind in kinds:
        torch.manual_seed(args.seed)
        variant, options = (sdcpc_variant, dict(args.sdcpc_options)) if kind == "sdcpc" else (segformer_variant, {})
        model = build_model(variant, classes, embed_dim=256, **options)
        params[kind] = sum(p.numel() for p in model.parameters())
        segmenters[kind] = StreamingSegmenter(model, backend=backend, device=device, precision=args.precision,
                                              input_size=(height, width),
                                              backend_options=backend_options(backend, compile_mode=args.compile_mode))
    rng = np.random.default_rng(args.seed)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    period_ns = round(segmenters[kinds[0]].config.frame_period_s * 1e9)
    warmup = max(args.warmup, 1)
    timings = {kind: [] for kind in kinds}
    for index in range(warmup + args.frames):
        for kind in kinds:
            result = segmenters[kind].step(images[index % len(images)], index * period_ns, "camera")
            if index >= warmup:
                timings[kind].append(result.timings_ms)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    print(json.dumps({
        "timings": timings,
        "peak_bytes": peak,
        "threads": torch.get_num_threads(),
        "params": params,
        "fallback": {kind: getattr(segmenters[kind].backend, "fallback_reason", None) for kind in kinds},
    }))


# --------------------------------------------------------------------------- driver


def _run_worker(case, kinds, backend, argv, device):
    return run_worker(__file__, [*argv, "--device", device, "--worker", case, ",".join(kinds), backend])


def _run_case(case, backend, argv, device, args):
    """Paired timing run of both models, then one memory run per model; per model: result dict."""
    paired = _run_worker(case, MODELS, backend, argv, device)
    memory_argv = [*_without(argv, "--frames"), "--frames", str(min(3, args.frames))]
    results = {}
    for kind in MODELS:
        if "error" in paired:
            results[kind] = {"error": paired["error"]}
            continue
        timings = paired["timings"][kind]
        results[kind] = {
            "timings": timings, "threads": paired["threads"], "params": paired["params"][kind],
            "median": {key: statistics.median(t[key] for t in timings) for key in (*STAGES, "total")},
            "fallback": paired.get("fallback", {}).get(kind),
        }
        alone = {} if args.no_memory else _run_worker(case, [kind], backend, memory_argv, device)
        results[kind]["peak_bytes"] = alone.get("peak_bytes", float("nan"))
    return results


def _without(argv, flag):
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _runs_on(backend, device):
    """Back ends that can run on ``device`` (TensorRT and CUDA graphs need CUDA)."""
    return device == "cuda" or backend not in ("tensorrt", "cudagraph")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        raise SystemExit("--frames must be >= 1 and --warmup >= 0.")

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        _worker(args, device)
        return
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here.")

    from sdcpc_core.runtime import available_backends

    available = available_backends()
    if args.backends is None:
        backends = [b for b in available if _runs_on(b, device)]
    else:
        unknown = [b for b in args.backends if b not in available]
        if unknown:
            raise SystemExit(f"--backends: {', '.join(unknown)} not available here; available: {', '.join(available)}")
        backends = args.backends
    worker_argv = _without(argv, "--device")  # the driver passes the device it resolved

    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"streaming benchmark: SD-CPC (encode + temporal, refs t-9/t-6/t-3) vs per-frame SegFormer, same backbone, "
          f"decoder width 256, input size and back end; torch {torch.__version__}; device {name}; "
          f"precision {args.precision}")
    if args.sdcpc_options:
        print("SD-CPC options: " + ", ".join(f"{key}={value}" for key, value in args.sdcpc_options))
    print(f"RANDOM weights (seed {args.seed}), random uint8 frames at camera size = input size (no resize); "
          f"median of {args.frames} frames after {max(args.warmup, 1)} warm-up frames; SD-CPC and SegFormer "
          f"alternate frame by frame in one fresh process per case")
    mem = "max_memory_allocated" if device == "cuda" else "ru_maxrss of the whole process"
    mem = "not measured (--no-memory)" if args.no_memory else mem + ", each model alone in a fresh process"
    print(f"peak memory: {mem}; goal: SD-CPC <= {GOAL:.2f}x SegFormer")

    summary = []
    for case in args.cases:
        sdcpc_variant, segformer_variant, (height, width), classes = CASES[case]
        for backend in backends:
            results = _run_case(case, backend, worker_argv, device, args)
            threads = next((r["threads"] for r in results.values() if "threads" in r), "?")
            print(f"\n{case}: {sdcpc_variant} vs {segformer_variant}, {height}x{width}, {classes} classes, "
                  f"backend {backend}, torch threads {threads}")
            print(f"{'model':<14} {'total ms':>9} {'prep':>7} {'encode':>8} {'temporal':>9} {'post':>7} "
                  f"{'min ms':>8} {'params M':>9} {'peak MiB':>9}")
            for kind, variant in zip(MODELS, (sdcpc_variant, segformer_variant)):
                r = results[kind]
                if "error" in r:
                    print(f"{variant:<14} failed: {r['error']}")
                    continue
                m = r["median"]
                print(f"{variant:<14} {m['total']:>9.1f} {m['preprocess']:>7.1f} {m['encode']:>8.1f} "
                      f"{m['temporal']:>9.1f} {m['postprocess']:>7.1f} "
                      f"{min(t['total'] for t in r['timings']):>8.1f} {r['params'] / 1e6:>9.2f} "
                      f"{r['peak_bytes'] / 2**20:>9.0f}")
                if r["fallback"]:
                    print(f"{'':<14} ran EAGER: the {backend} backend fell back ({r['fallback']})")
            if all("median" in r for r in results.values()):
                a, b = results["sdcpc"]["median"], results["segformer"]["median"]
                ratio = a["total"] / b["total"]
                verdict = "met" if ratio <= GOAL else "NOT met"
                memory = results["sdcpc"]["peak_bytes"] / results["segformer"]["peak_bytes"]
                print(f"SD-CPC / SegFormer: {ratio:.2f}x total (encode {a['encode'] / b['encode']:.2f}x; temporal step "
                      f"{a['temporal']:.1f} ms = {100 * a['temporal'] / b['total']:.0f}% of SegFormer's frame); "
                      f"memory {'n/a' if args.no_memory else f'{memory:.2f}x'}; goal <= {GOAL:.2f}x {verdict}")
                eager = ", eager fallback" if any(r["fallback"] for r in results.values()) else ""
                summary.append(f"{case}/{backend}: {ratio:.2f}x ({verdict}{eager})")
    if summary:
        print("\nsummary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
