"""Benchmark: windowed cross-frame attention versus dense cross-frame attention.

Run with::

    python bench/window_attention.py            # defaults below, CPU (+ CUDA if available)
    python bench/window_attention.py --device cuda --repeats 20

What it measures, side by side in one run, for the same inputs (by default a
1/8-scale feature map of a 480x853 frame, H=60, W=107, R=3 reference frames,
C=256 channels as 8 heads x 32, window 7, batch 1, float32):

* ``window``: ``sdcpc_core.ops.window_attention.window_attention`` (each query attends to a
  7x7 window in every reference frame);
* ``dense``: cross-frame attention materialised the usual way,
  ``softmax(q @ k^T) @ v`` with q ``(B, h, HW, d)`` and k, v ``(B, h, R*HW, d)``,
  which builds the full ``HW x R*HW`` attention matrix;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` over the same
  dense keys (fused kernel, no materialised matrix), as a second reference.

``dense`` and ``sdpa`` attend to every reference pixel, so they compute a
different (unwindowed) function; the comparison is about cost. All three take
the feature-map layout ``q (B, h, d, H, W)``, ``k, v (B, R, h, d, H, W)`` and
include the reshapes they need. Everything runs under ``torch.no_grad()``.

Time: median wall time of ``--repeats`` calls (``--dense-repeats`` for the
dense case, which is slow) after ``--warmup`` calls; on CUDA each call is
bracketed by ``torch.cuda.synchronize()``.

Peak memory: every (method, device) case runs in a fresh Python subprocess
(this script re-invoked with ``--worker``), so no case sees memory cached by
another. The worker first calls the method once on a tiny input (so that code
pages, thread pools and allocator arenas exist), then creates the inputs and
takes the baseline. Two peaks above that baseline are reported: after the
first full-size call alone, and after all calls (warm-up and timed).

* CPU: there is no allocator statistic, so the baseline is the current
  resident set size right after creating the inputs (``/proc/self/statm``;
  where that file is missing, ``resource.getrusage(...).ru_maxrss`` at that
  point) and the peak is the resident-set peak
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. The difference is the extra
  memory the computation needed beyond its inputs, at page granularity,
  including what the C allocator keeps mapped: glibc serves blocks below its
  adaptive (up to 32 MiB) mmap threshold from heaps that fragment and are not
  returned to the system, so an op that allocates and frees many large
  temporaries grows past its live tensors over repeated calls (the "all
  calls" column). Pass ``--mmap-threshold 65536`` to set
  ``MALLOC_MMAP_THRESHOLD_`` in the workers (glibc only): big blocks are then
  mapped and unmapped one by one and both columns follow live tensor memory,
  at the price of page faults that slow the timed calls.
* CUDA: the baseline is ``torch.cuda.memory_allocated()`` right after creating
  the inputs (peak statistics reset there) and the peak is
  ``torch.cuda.max_memory_allocated()``: live tensors only, no cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from worker import run_worker  # bench/worker.py: this folder is on sys.path when run as a script

METHODS = ("window", "dense", "sdpa")
DTYPES = ("float32", "bfloat16", "float16")


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=(60, 107), metavar=("H", "W"),
                   help="feature map height and width (default: 60 107, 1/8 of 480x853)")
    p.add_argument("--refs", type=int, default=3, help="number of reference frames R (default: 3)")
    p.add_argument("--heads", type=int, default=8, help="attention heads (default: 8)")
    p.add_argument("--head-dim", type=int, default=32, help="channels per head (default: 32)")
    p.add_argument("--window", type=int, default=7, help="window size of the window op (default: 7)")
    p.add_argument("--dilation", type=int, default=1, help="window dilation (default: 1)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="input dtype (default: float32)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU, plus CUDA when available (default: auto)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="which methods to run (default: all)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of window and sdpa (default: 10)")
    p.add_argument("--dense-repeats", type=int, default=3, help="timed calls of dense (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing, >= 1 (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="set MALLOC_MMAP_THRESHOLD_ in the worker processes (glibc; see above)")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "DEVICE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- worker


def _make_fn(method, window, dilation):
    import torch.nn.functional as F

    if method == "window":
        from sdcpc_core.ops.window_attention import window_attention

        return lambda q, k, v: window_attention(q, k, v, window, dilation)

    def to_tokens(q, k, v):
        B, R, h, d, H, W = k.shape
        # Contiguous tokens: a strided q makes the CPU SDPA fall back to its materialising path.
        qt = q.flatten(3).transpose(2, 3).contiguous()  # (B, h, HW, d)
        kt = k.flatten(4).permute(0, 2, 1, 4, 3).reshape(B, h, R * H * W, d)  # (B, h, R*HW, d)
        vt = v.flatten(4).permute(0, 2, 1, 4, 3).reshape(B, h, R * H * W, d)
        return qt, kt, vt

    def from_tokens(out, q):
        return out.transpose(2, 3).reshape(q.shape)  # (B, h, d, H, W)

    if method == "dense":
        def dense(q, k, v):
            qt, kt, vt = to_tokens(q, k, v)
            attn = (qt * qt.shape[-1] ** -0.5) @ kt.transpose(-1, -2)  # (B, h, HW, R*HW)
            attn = attn.softmax(dim=-1)
            return from_tokens(attn @ vt, q)

        return dense

    if method == "sdpa":
        def sdpa(q, k, v):
            return from_tokens(F.scaled_dot_product_attention(*to_tokens(q, k, v)), q)

        return sdpa

    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def _current_rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _worker(args):
    import torch

    method, device = args.worker
    dtype = getattr(torch, args.dtype)
    H, W = args.size
    B, R, h, d = args.batch, args.refs, args.heads, args.head_dim
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fn = _make_fn(method, args.window, args.dilation)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def inputs(height, width):
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(B, h, d, height, width, generator=g, device=device, dtype=dtype)
        k = torch.randn(B, R, h, d, height, width, generator=g, device=device, dtype=dtype)
        v = torch.randn(B, R, h, d, height, width, generator=g, device=device, dtype=dtype)
        return q, k, v

    with torch.no_grad():
        fn(*inputs(8, 8))  # initialise kernels, thread pools and allocator before the baseline
        sync()
        q, k, v = inputs(H, W)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _current_rss_bytes()

        fn(q, k, v)  # first warm-up call: its peak is reported on its own
        sync()
        first = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
        for _ in range(args.warmup - 1):
            fn(q, k, v)
        sync()
        times = []
        for _ in range(args.dense_repeats if method == "dense" else args.repeats):
            t0 = time.perf_counter()
            fn(q, k, v)
            sync()
            times.append(time.perf_counter() - t0)

    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    print(json.dumps({
        "times": times,
        "first_bytes": max(first - base, 0),
        "extra_bytes": max(peak - base, 0),
        "threads": torch.get_num_threads(),
    }))


# --------------------------------------------------------------------------- driver


def _run_case(method, device, argv, args):
    extra_env = {} if args.mmap_threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}
    return run_worker(__file__, [*argv, "--worker", method, device], extra_env)


def _ratio(a, b):
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    if args.warmup < 1 or args.repeats < 1 or args.dense_repeats < 1:
        raise SystemExit("--warmup, --repeats and --dense-repeats must be >= 1.")
    if args.worker:
        _worker(args)
        return

    import torch

    devices = ["cpu"]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = ["cuda"] if args.device == "cuda" else ["cpu", "cuda"]
    H, W = args.size
    print(
        f"window_attention benchmark: B={args.batch} R={args.refs} heads={args.heads} head_dim={args.head_dim} "
        f"(C={args.heads * args.head_dim}) H={H} W={W} window={args.window} dilation={args.dilation} "
        f"dtype={args.dtype} torch={torch.__version__}"
    )
    malloc = "" if args.mmap_threshold is None else f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    print(f"timed calls: window/sdpa {args.repeats}, dense {args.dense_repeats}, after {args.warmup} warm-up; "
          f"memory = peak minus inputs, each case in a fresh process{malloc}")
    print("memory columns: peak during the first call alone / peak over all calls (steady state)")

    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
        results = {m: _run_case(m, device, argv, args) for m in args.methods}
        threads = next((r["threads"] for r in results.values() if "threads" in r), "?")
        print(f"\n{device}: {name}, torch threads {threads}")
        print(f"{'method':<8} {'median ms':>10} {'min ms':>10} {'MiB 1st call':>13} {'MiB all calls':>14}")
        for m, r in results.items():
            if "error" in r:
                print(f"{m:<8} failed: {r['error']}")
                continue
            r["median"] = statistics.median(r["times"])
            print(f"{m:<8} {r['median'] * 1e3:>10.1f} {min(r['times']) * 1e3:>10.1f} "
                  f"{r['first_bytes'] / 2**20:>13.1f} {r['extra_bytes'] / 2**20:>14.1f}")
        win = results.get("window", {})
        if "median" not in win:
            continue
        for other in ("dense", "sdpa"):
            r = results.get(other, {})
            if "median" in r:
                print(f"{other}/window: time {_ratio(r['median'], win['median'])}, memory "
                      f"{_ratio(r['first_bytes'], win['first_bytes'])} (1st call) / "
                      f"{_ratio(r['extra_bytes'], win['extra_bytes'])} (all calls)")
        dense = results.get("dense", {})
        if "median" in dense:
            def met(num, den, goal):
                return "met" if den > 0 and num / den >= goal else "NOT met"

            print(f"goal vs dense: >= 20x faster {met(dense['median'], win['median'], 20)}; >= 50x less memory "
                  f"{met(dense['first_bytes'], win['first_bytes'], 50)} (1st call) / "
                  f"{met(dense['extra_bytes'], win['extra_bytes'], 50)} (all calls)")


if __name__ == "__main__":
    main()
