"""GPU benchmark: window attention reference vs the fused Triton kernel vs dense SDPA.

Run on a machine with a CUDA device (and ``triton`` for the fused kernel)::

    python bench/window_attention_gpu.py
    python bench/window_attention_gpu.py --repeats 50 --json results.json

Inputs: the model's 1/8-scale feature map of a 480x853 frame (H=60, W=107), batch 1, R=3
reference frames, window 7, dilation 1, with 64 channels as 4 heads x 16 (the model's defaults) and
256 channels as 8 heads x 32; float16 and float32.

Methods (all take ``q (B, h, d, H, W)``, ``k, v (B, R, h, d, H, W)`` and include the reshapes they
need; everything runs under ``torch.no_grad()``):

* ``reference``: ``sdcpc_core.ops.window_attention.window_attention`` with ``allow_fused=False`` (plain
  tensor ops);
* ``triton``: the custom op ``torch.ops.sdcpc.window_attention`` (fused Triton kernel, online
  softmax, nothing of size ``R * window**2 * H * W`` stored);
* ``tiles``: the formulation that exported graphs (ONNX, TensorRT programs) hold: dense attention in
  ``EXPORT_TILE`` x ``EXPORT_TILE`` query tiles, run here in eager PyTorch;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` over all ``R * H * W`` reference
  pixels (dense, unwindowed: a different function, shown for cost only).

Time: median of ``--repeats`` calls after ``--warmup`` calls, each bracketed by
``torch.cuda.Event`` records (GPU time). Memory: ``torch.cuda.max_memory_allocated()`` minus the
allocation right after creating the inputs (peak statistics reset there), i.e. the extra memory of
one call beyond its inputs. Ratios are given relative to the Triton kernel. The Triton output is
also compared with the reference (max abs difference).

Exits with status 2 and a message when no CUDA device is available.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdcpc_core.ops.window_attention import fused_window_attention, triton_available
from sdcpc_core.ops.window_attention import window_attention as reference_window_attention
from sdcpc_core.ops.window_attention.tiled import _attend_by_tiles

CONFIGS = [(4, 16), (8, 32)]  # heads x channels per head
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def dense_sdpa(q, k, v, window, dilation):
    B, R, h, d, H, W = k.shape
    q_t = q.flatten(-2).transpose(-1, -2)  # (B, h, HW, d)
    k_t = k.permute(0, 2, 1, 4, 5, 3).reshape(B, h, R * H * W, d)
    v_t = v.permute(0, 2, 1, 4, 5, 3).reshape(B, h, R * H * W, d)
    out = F.scaled_dot_product_attention(q_t, k_t, v_t)  # (B, h, HW, d)
    return out.transpose(-1, -2).reshape(B, h, d, H, W)


def measure(fn, inputs, warmup: int, repeats: int) -> dict:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = fn(*inputs)
        torch.cuda.synchronize()
        peak_first = torch.cuda.max_memory_allocated() - base
        del out
        for _ in range(warmup):
            fn(*inputs)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated() - base
    return {"ms": statistics.median(times), "ms_min": min(times), "peak_mib": peak / 2**20,
            "peak_first_mib": peak_first / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--width", type=int, default=107)
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-sdpa", action="store_true", help="skip the dense SDPA baseline")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("window_attention_gpu: no CUDA device available (torch.cuda.is_available() is False); "
              "this benchmark needs a GPU. Nothing was measured.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    has_triton = triton_available()
    print(f"device: {torch.cuda.get_device_name(device)}  torch {torch.__version__}  "
          f"triton: {'yes' if has_triton else 'NOT importable (the op falls back to the reference)'}")
    B, R, H, W = args.batch, args.refs, args.height, args.width
    print(f"B={B} R={R} H={H} W={W} window={args.window} dilation={args.dilation}  "
          f"median of {args.repeats} calls after {args.warmup} warm-up calls (CUDA events)\n")

    methods = {
        # allow_fused=False: on CUDA the dispatcher takes the Triton kernel by default
        "reference": lambda q, k, v: reference_window_attention(q, k, v, args.window, args.dilation, allow_fused=False),
        "triton": lambda q, k, v: fused_window_attention(q, k, v, args.window, args.dilation),
        "tiles": lambda q, k, v: _attend_by_tiles(q, k, v, args.window, args.dilation, q.shape[2] ** -0.5),
    }
    if not args.no_sdpa:
        methods["sdpa"] = lambda q, k, v: dense_sdpa(q, k, v, args.window, args.dilation)

    rows = []
    header = f"{'heads x d':>10} {'dtype':>5} {'method':>10} {'ms':>9} {'x triton':>9} {'peak MiB':>10} {'x triton':>9}"
    print(header)
    print("-" * len(header))
    for heads, dim in CONFIGS:
        for dtype_name, dtype in DTYPES.items():
            g = torch.Generator(device=device).manual_seed(0)
            q = torch.randn(B, heads, dim, H, W, device=device, dtype=dtype, generator=g)
            k = torch.randn(B, R, heads, dim, H, W, device=device, dtype=dtype, generator=g)
            v = torch.randn(B, R, heads, dim, H, W, device=device, dtype=dtype, generator=g)
            with torch.no_grad():
                expected = methods["reference"](q, k, v).float()
                err = (methods["triton"](q, k, v).float() - expected).abs().max().item()
                tiles_err = (methods["tiles"](q, k, v).float() - expected).abs().max().item()
            results = {}
            for name, fn in methods.items():
                try:
                    results[name] = measure(fn, (q, k, v), args.warmup, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    results[name] = None
            base = results["triton"]
            for name, result in results.items():
                if result is None:
                    print(f"{heads:>4} x {dim:<3} {dtype_name:>5} {name:>10}   out of memory")
                    continue
                t_ratio = result["ms"] / base["ms"]
                m_ratio = result["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
                print(f"{heads:>4} x {dim:<3} {dtype_name:>5} {name:>10} {result['ms']:9.3f} {t_ratio:9.2f} "
                      f"{result['peak_mib']:10.2f} {m_ratio:9.2f}")
            print(f"{'':>17} max abs difference to the reference: triton {err:.3g}, tiles {tiles_err:.3g}")
            rows.append({"heads": heads, "dim": dim, "dtype": dtype_name, "max_abs_diff": err,
                         "tiles_max_abs_diff": tiles_err, "results": results})
            del q, k, v
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                         "triton": has_triton, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
