"""Triton kernels of the fused custom ops (``sdcpc_core.ops.fused``), imported only where Triton runs them:
on CUDA, or under its interpreter (``TRITON_INTERPRET=1``). Helpers are module-level ``@triton.jit``
functions so that both the compiler and the interpreter resolve them. Every kernel accumulates in float32
and takes any strides."""

import triton
import triton.language as tl


@triton.jit
def difference_signals_fwd(
    Target, Refs, GateW, GateB, TieBreak, Scores, Gate,
    K, HW,
    st_b, st_k, st_p, sr_b, sr_r, sr_k, sr_p, ss_b, sg_b,
    eps, inv_ln2,
    R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program per (block of positions, batch item); the classes of a position are one row of the tile.
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    pos = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = pos < HW
    k = tl.arange(0, BLOCK_K)
    mask = p_ok[:, None] & (k < K)[None, :]
    # Padding reads 1.0, whose entropy term is 0: padded classes and positions add nothing.
    p = tl.load(Target + b * st_b + k[None, :] * st_k + pos[:, None] * st_p, mask=mask, other=1.0)
    p = tl.maximum(p.to(tl.float32), eps)
    h_target = tl.sum(-p * tl.log(p), axis=1)
    total = tl.zeros([BLOCK_P], tl.float32)
    largest = tl.zeros([BLOCK_P], tl.float32)  # differences are >= 0
    for r in tl.static_range(R):
        q = tl.load(Refs + b * sr_b + r * sr_r + k[None, :] * sr_k + pos[:, None] * sr_p, mask=mask, other=1.0)
        q = tl.maximum(q.to(tl.float32), eps)
        h_ref = tl.sum(-q * tl.log(q), axis=1)
        m = q - (q - p) * 0.5  # torch.lerp(p, q, 0.5)
        h_mix = tl.sum(-m * tl.log(m), axis=1)
        js = h_mix - (h_ref - (h_ref - h_target) * 0.5)
        d = tl.minimum(tl.maximum(js * inv_ln2, 0.0), 1.0)
        tie = tl.load(TieBreak + r * HW + pos, mask=p_ok, other=0.0)
        tl.store(Scores + b * ss_b + r * HW + pos, tl.floor(d * 256.0) * (1.0 / 256.0) + tie, mask=p_ok)
        total += d
        largest = tl.maximum(largest, d)
    w_mean = tl.load(GateW).to(tl.float32)
    w_max = tl.load(GateW + 1).to(tl.float32)
    logit = w_mean * (total / R) + w_max * largest + tl.load(GateB).to(tl.float32)
    tl.store(Gate + b * sg_b + pos, tl.sigmoid(logit).to(Gate.dtype.element_ty), mask=p_ok)


@triton.jit
def source_index(dst, scale, size):
    # F.interpolate's bilinear source (align_corners=False): coordinate clamped at 0, right tap at the edge.
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    low = src.to(tl.int32)  # src >= 0: truncation is floor
    return low, tl.minimum(low + 1, size - 1), src - low.to(tl.float32)


@triton.jit
def pixel_block(block_index, BLOCK: tl.constexpr, H, W):
    # The block's flat pixel indices of an H x W map, which of them are inside it, and their rows and columns.
    index = block_index * BLOCK + tl.arange(0, BLOCK)
    return index < H * W, index // W, index % W


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
    # One program per (batch item x class, block of output pixels): the larger count on the grid's first axis.
    bk = tl.program_id(0)
    pid = tl.program_id(1)
    b = bk // K
    k = bk % K
    ok, y, x = pixel_block(pid, BLOCK, H, W)
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


@triton.jit
def upsample_add_layer_norm_fwd(
    Context, Features, Weight, Bias, Out,
    E, H, W, CH, CW, scale_y, scale_x, eps,
    sc_b, sc_e, sc_y, sc_x, sf_b, sf_e, sf_y, sf_x, so_b, so_e, so_y, so_x,
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # One program per (block of positions, batch item); the channels of a position are one row of the tile.
    pid = tl.program_id(0)
    b = tl.program_id(1)
    p_ok, y, x = pixel_block(pid, BLOCK_P, H, W)
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    mask = p_ok[:, None] & e_ok[None, :]
    y0, y1, ly = source_index(y, scale_y, CH)
    x0, x1, lx = source_index(x, scale_x, CW)
    ly = ly[:, None]
    lx = lx[:, None]
    channels = Context + b * sc_b + e[None, :] * sc_e
    c00 = tl.load(channels + y0[:, None] * sc_y + x0[:, None] * sc_x, mask=mask, other=0.0).to(tl.float32)
    c01 = tl.load(channels + y0[:, None] * sc_y + x1[:, None] * sc_x, mask=mask, other=0.0).to(tl.float32)
    c10 = tl.load(channels + y1[:, None] * sc_y + x0[:, None] * sc_x, mask=mask, other=0.0).to(tl.float32)
    c11 = tl.load(channels + y1[:, None] * sc_y + x1[:, None] * sc_x, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(Features + b * sf_b + e[None, :] * sf_e + y[:, None] * sf_y + x[:, None] * sf_x, mask=mask,
                other=0.0).to(tl.float32)
    v = (1.0 - ly) * ((1.0 - lx) * c00 + lx * c01) + ly * ((1.0 - lx) * c10 + lx * c11) + f
    mean = tl.sum(v, axis=1) / E
    centred = tl.where(mask, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / E + eps)
    weight = tl.load(Weight + e, mask=e_ok, other=0.0).to(tl.float32)
    bias = tl.load(Bias + e, mask=e_ok, other=0.0).to(tl.float32)
    out = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(Out + b * so_b + e[None, :] * so_e + y[:, None] * so_y + x[:, None] * so_x,
             out.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def pooled_softmax_fwd(
    Logits, Out,
    K, OW,
    sl_b, sl_k, sl_y, sl_x, so_b, so_k, so_y, so_x,
    POOL: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program per (output cell, batch item): the cell's POOL x POOL pixels are the rows of the tile.
    cell = tl.program_id(0)
    b = tl.program_id(1)
    cy = cell // OW
    cx = cell % OW
    p = tl.arange(0, POOL * POOL)
    y = cy * POOL + p // POOL
    x = cx * POOL + p % POOL
    k = tl.arange(0, BLOCK_K)
    k_ok = k < K
    v = tl.load(Logits + b * sl_b + k[None, :] * sl_k + y[:, None] * sl_y + x[:, None] * sl_x,
                mask=k_ok[None, :], other=float("-inf")).to(tl.float32)
    e = tl.exp(v - tl.max(v, axis=1)[:, None])
    probs = e / tl.sum(e, axis=1)[:, None]
    mean = tl.sum(probs, axis=0) / (POOL * POOL)
    tl.store(Out + b * so_b + k * so_k + cy * so_y + cx * so_x, mean.to(Out.dtype.element_ty), mask=k_ok)
