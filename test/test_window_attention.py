"""Tests for the windowed cross-frame attention op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.ops.dispatch import eager_cpu_inference
from sdcpc_core.ops.window_attention import window_attention


def _inputs(B, R, h, d, H, W, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, d, H, W, generator=g, dtype=dtype)
    k = torch.randn(B, R, h, d, H, W, generator=g, dtype=dtype)
    v = torch.randn(B, R, h, d, H, W, generator=g, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def dense_oracle(q, k, v, window, dilation=1, scale=None, outside="exclude"):
    """Full attention from every query to all ``R * H * W`` reference keys.

    Keys are restricted to the dilated window by an explicit ``-inf`` mask.
    With ``outside="exclude"`` (the op's contract) only in-image keys exist.
    With ``outside="zeros"`` the key/value grid is first zero-padded, so window
    taps that fall outside the image take part as zero keys/values: the
    behaviour the op must NOT have.
    """
    _, R, _, d, H, W = k.shape
    scale = d ** -0.5 if scale is None else scale
    r = (window // 2) * dilation
    p = r if outside == "zeros" else 0
    kp = F.pad(k, (p, p, p, p)).flatten(-2)  # (B, R, h, d, N) with N = (H + 2p)(W + 2p)
    vp = F.pad(v, (p, p, p, p)).flatten(-2)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    kys, kxs = torch.meshgrid(torch.arange(-p, H + p), torch.arange(-p, W + p), indexing="ij")
    dy = kys.reshape(1, -1) - ys.reshape(-1, 1)  # (HW, N)
    dx = kxs.reshape(1, -1) - xs.reshape(-1, 1)
    in_window = (dy % dilation == 0) & (dx % dilation == 0) & (dy.abs() <= r) & (dx.abs() <= r)

    logits = torch.einsum("bhdq,brhdn->bhqrn", q.flatten(-2), kp) * scale  # (B, h, HW, R, N)
    logits = logits.masked_fill(~in_window[:, None, :], float("-inf"))
    attn = logits.flatten(-2).softmax(dim=-1).unflatten(-1, (R, -1))
    out = torch.einsum("bhqrn,brhdn->bhdq", attn, vp)
    return out.unflatten(-1, (H, W))


CASES = [
    # B, R, h, d, H, W, window, dilation
    (1, 1, 1, 4, 5, 5, 1, 1),
    (1, 1, 2, 4, 6, 9, 3, 1),
    (2, 3, 2, 3, 7, 5, 3, 2),
    (1, 3, 1, 4, 9, 11, 5, 1),
    (1, 1, 2, 2, 8, 6, 5, 3),
    (1, 3, 2, 4, 10, 13, 7, 1),
    (2, 1, 1, 3, 12, 7, 7, 2),
    (1, 3, 1, 2, 2, 7, 5, 1),  # image shorter than the window
    (1, 1, 2, 3, 2, 3, 7, 2),  # image smaller than the window in both axes
    (1, 3, 1, 3, 1, 4, 3, 3),  # single row
]


@pytest.mark.parametrize("B,R,h,d,H,W,window,dilation", CASES)
def test_matches_dense_oracle(B, R, h, d, H, W, window, dilation):
    q, k, v = _inputs(B, R, h, d, H, W)
    out = window_attention(q, k, v, window, dilation)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, dense_oracle(q, k, v, window, dilation), atol=1e-10, rtol=0)


@pytest.mark.parametrize("B,R,h,d,H,W,window,dilation", CASES)
def test_inplace_and_plain_paths_agree(B, R, h, d, H, W, window, dilation):
    """Eager CPU inference takes the in-place path, autograd the plain-op (exportable) one."""
    q, k, v = _inputs(B, R, h, d, H, W)
    with torch.no_grad():
        assert eager_cpu_inference(q, k, v)
        fast = window_attention(q, k, v, window, dilation)
    q.requires_grad_(True)
    assert not eager_cpu_inference(q, k, v)
    plain = window_attention(q, k, v, window, dilation)
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, dense_oracle(q.detach(), k, v, window, dilation), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile", [1, 3, 8])
@pytest.mark.parametrize("B,R,h,d,H,W,window,dilation", CASES)
def test_tiled_formulation_matches_dense_oracle(B, R, h, d, H, W, window, dilation, tile):
    """The exported graphs' formulation: dense attention in tiles, masked to the window (any tile size,
    tiles overhanging the image, windows larger than the image)."""
    from sdcpc_core.ops.window_attention.tiled import _attend_by_tiles

    q, k, v = _inputs(B, R, h, d, H, W)
    out = _attend_by_tiles(q, k, v, window, dilation, d ** -0.5, tile)
    assert out.shape == q.shape
    torch.testing.assert_close(out, dense_oracle(q, k, v, window, dilation), atol=1e-10, rtol=0)


def test_exported_program_takes_the_tiled_formulation():
    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return window_attention(q, k, v, 7, 1)

    q, k, v = _inputs(1, 3, 2, 4, 13, 19, dtype=torch.float32)
    program = torch.export.export(Op(), (q, k, v))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("bmm" in t or "matmul" in t for t in targets) == 2, targets  # logits and values of the tiles
    assert len(targets) < 200  # the offset loop exports 791 operators here (about 8 per window offset)
    with torch.no_grad():
        out = program.module()(q, k, v)
    torch.testing.assert_close(out.double(), dense_oracle(q.double(), k.double(), v.double(), 7, 1),
                               atol=1e-5, rtol=0)


def test_custom_scale():
    q, k, v = _inputs(1, 3, 2, 4, 6, 7)
    out = window_attention(q, k, v, 3, 2, scale=0.7)
    torch.testing.assert_close(out, dense_oracle(q, k, v, 3, 2, scale=0.7), atol=1e-10, rtol=0)


def test_border_keys_are_excluded_not_zero():
    q, k, v = _inputs(1, 2, 2, 4, 8, 9, seed=3)
    window, dilation = 5, 1
    out = window_attention(q, k, v, window, dilation)
    excluded = dense_oracle(q, k, v, window, dilation, outside="exclude")
    zeros = dense_oracle(q, k, v, window, dilation, outside="zeros")
    torch.testing.assert_close(out, excluded, atol=1e-10, rtol=0)
    p = (window // 2) * dilation
    border = torch.ones(8, 9, dtype=torch.bool)
    border[p:-p, p:-p] = False
    # Zero-attended padding changes every border pixel and nothing in the interior.
    diff = (out - zeros).abs().amax(dim=(0, 1, 2))
    assert bool((diff[border] > 1e-6).all())
    torch.testing.assert_close(out[..., ~border], zeros[..., ~border], atol=1e-10, rtol=0)


def test_window_one_single_reference_returns_v():
    q, k, v = _inputs(2, 1, 3, 4, 5, 6, dtype=torch.float32)
    out = window_attention(q, k, v, window=1)
    assert torch.equal(out, v[:, 0])


@pytest.mark.parametrize("dilation", [1, 2])
def test_gradcheck(dilation):
    q, k, v = _inputs(1, 2, 2, 3, 4, 5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: window_attention(q, k, v, 3, dilation), (q, k, v))


def test_bfloat16_close_to_float32():
    q, k, v = _inputs(1, 3, 2, 8, 9, 10, dtype=torch.float32)
    ref = window_attention(q, k, v, 5, 2)
    out = window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


class _Wrapper(torch.nn.Module):
    def forward(self, q, k, v):
        return window_attention(q, k, v, window=5, dilation=2)


def test_torch_export_strict():
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float32)
    ep = torch.export.export(_Wrapper(), (q, k, v), strict=True)
    torch.testing.assert_close(ep.module()(q, k, v), _Wrapper()(q, k, v), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape,kwargs,match",
    [
        ((1, 2, 4, 5), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {}, "^q must"),
        ((1, 2, 4, 5, 6), (1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {}, "^k must"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 2, 4, 5, 6), {}, "^v must"),
        ((1, 2, 4, 5, 6), (1, 0, 2, 4, 5, 6), (1, 0, 2, 4, 5, 6), {}, "R >= 1"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 2, 2, 4, 5, 6), {}, "^v must have the same shape"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 7), (1, 1, 2, 4, 5, 7), {}, "^k and v must have shape"),
        ((2, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {}, "^k and v must have shape"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {"window": 4}, "^window must"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {"window": 0}, "^window must"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {"window": -3}, "^window must"),
        ((1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), (1, 1, 2, 4, 5, 6), {"dilation": 0}, "^dilation must"),
    ],
)
def test_bad_inputs_raise(q_shape, k_shape, v_shape, kwargs, match):
    args = {"window": 3, "dilation": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        window_attention(torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(v_shape), **args)


def test_mismatched_dtype_raises():
    q, k, v = _inputs(1, 1, 1, 2, 3, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        window_attention(q, k.double(), v, 3)
