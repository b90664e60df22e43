"""Triton kernel of ``sdcpc_core.ops.gated_upsample`` (imported only where Triton runs it: CUDA, or its
interpreter). Helpers are module-level ``@triton.jit`` functions so that both the compiler and the
interpreter resolve them."""

import triton
import triton.language as tl


@triton.jit
def source_index(dst, scale, size):
    # F.interpolate's bilinear source (align_corners=False): coordinate clamped at 0, right tap at the edge.
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    low = src.to(tl.int32)  # src >= 0: truncation is floor
    return low, tl.minimum(low + 1, size - 1), src - low.to(tl.float32)


@triton.jit
def gate_at(gate_base, y, x, gh, gw, gate_scale_y, gate_scale_x, sg_y, sg_x, mask):
    y0, y1, ly = source_index(y, gate_scale_y, gh)
    x0, x1, lx = source_index(x, gate_scale_x, gw)
    g00 = tl.load(gate_base + y0 * sg_y + x0 * sg_x, mask=mask, other=0.0).to(tl.float32)
    g01 = tl.load(gate_base + y0 * sg_y + x1 * sg_x, mask=mask, other=0.0).to(tl.float32)
    g10 = tl.load(gate_base + y1 * sg_y + x0 * sg_x, mask=mask, other=0.0).to(tl.float32)
    g11 = tl.load(gate_base + y1 * sg_y + x1 * sg_x, mask=mask, other=0.0).to(tl.float32)
    return (1.0 - ly) * ((1.0 - lx) * g00 + lx * g01) + ly * ((1.0 - lx) * g10 + lx * g11)


@triton.jit
def tap(corr_base, gate_base, y, x, gh, gw, gate_scale_y, gate_scale_x, sc_y, sc_x, sg_y, sg_x, mask):
    c = tl.load(corr_base + y * sc_y + x * sc_x, mask=mask, other=0.0).to(tl.float32)
    return c * gate_at(gate_base, y, x, gh, gw, gate_scale_y, gate_scale_x, sg_y, sg_x, mask)


@triton.jit
def gated_upsample_add_fwd(
    Logits, Corr, Gate, Out,
    K, H, W, CH, CW, GH, GW, gate_scale_y, gate_scale_x,
    sl_b, sl_k, sl_y, sl_x, sc_b, sc_k, sc_y, sc_x, sg_b, sg_y, sg_x, so_b, so_k, so_y, so_x,
    BLOCK: tl.constexpr,
):
    # One program per (block of output pixels, batch item x class).
    pid = tl.program_id(0)
    bk = tl.program_id(1)
    b = bk // K
    k = bk % K
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    ok = idx < H * W
    y = idx // W
    x = idx % W
    y0, y1, ly = source_index(y, 0.5, CH)
    x0, x1, lx = source_index(x, 0.5, CW)
    corr = Corr + b * sc_b + k * sc_k
    gate = Gate + b * sg_b
    v00 = tap(corr, gate, y0, x0, GH, GW, gate_scale_y, gate_scale_x, sc_y, sc_x, sg_y, sg_x, ok)
    v01 = tap(corr, gate, y0, x1, GH, GW, gate_scale_y, gate_scale_x, sc_y, sc_x, sg_y, sg_x, ok)
    v10 = tap(corr, gate, y1, x0, GH, GW, gate_scale_y, gate_scale_x, sc_y, sc_x, sg_y, sg_x, ok)
    v11 = tap(corr, gate, y1, x1, GH, GW, gate_scale_y, gate_scale_x, sc_y, sc_x, sg_y, sg_x, ok)
    up = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
    base = tl.load(Logits + b * sl_b + k * sl_k + y * sl_y + x * sl_x, mask=ok, other=0.0).to(tl.float32)
    tl.store(Out + b * so_b + k * so_k + y * so_y + x * so_x, (base + up).to(Out.dtype.element_ty), mask=ok)
