"""Window attention as the PyTorch custom op ``sdcpc::window_attention``, with a fused Triton kernel on CUDA.

``torch.ops.sdcpc.window_attention(q, k, v, window, dilation, scale)`` computes exactly what the
package's ``window_attention`` computes with the fused switch off (same shapes, same contract: one
softmax jointly over all ``R * window**2`` (frame, offset) pairs, out-of-image keys excluded, half
precision accumulated in float32) but is one opaque operator:

* CPU (and any device other than CUDA): the unfused formulations, chosen as the package's
  ``window_attention`` chooses them (``_unfused``).
* CUDA: a fused Triton kernel when ``triton`` is importable, the unfused formulations otherwise.
  The kernel runs one program per (batch, head, block of pixels), loops over the references and
  the window offsets with an online softmax (running maximum and sum), skips out-of-image keys and
  accumulates in float32, so nothing of size ``R * window**2 * H * W`` is ever stored. float16,
  bfloat16 and float32 inputs use it; other dtypes (float64) use the unfused formulations.
* Fake (meta) kernel: the output has the shape, dtype and device of ``q``; it lets
  ``torch.export``, ``FakeTensorMode`` and Torch-TensorRT's plugin generator trace the op.
* Autograd: the backward recomputes the unfused formulation on the saved inputs and takes its
  vector-Jacobian product (``torch.func.vjp``); only the forward is fused.

A program exported with the op in it can be turned back into plain ops with
:func:`decompose_to_reference`; the ONNX dynamo exporter does this by itself, because the unfused
formulation is registered as the op's decomposition in ``torch._decomp``'s table, which the
exporter applies to operators it has no ONNX translation for. The TensorRT plugin for the op is
registered by ``sdcpc_core.runtime.tensorrt_plugin``.
"""

from __future__ import annotations

import functools
import os

import torch

from .reference import _check_inputs

__all__ = ["OP_NAME", "decompose_to_reference", "fused_window_attention", "launch_options", "next_power_of_2",
           "triton_available"]

OP_NAME = "sdcpc::window_attention"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _unfused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int,
             scale: float) -> torch.Tensor:
    """The package's ``window_attention`` without its fused branch: what the op computes where it has
    no kernel of its own, what its backward differentiates and what its decomposition inlines (none
    of them may call the op again)."""
    from . import window_attention  # resolved at call time: the package imports this module first

    return window_attention(q, k, v, window, dilation, scale, allow_fused=False)


# ------------------------------------------------------------------------------ the custom op
@torch.library.custom_op(OP_NAME, mutates_args=())
def _window_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int, scale: float
) -> torch.Tensor:
    """Default kernel (CPU and every device without its own kernel): the unfused formulations."""
    return _unfused(q, k, v, window, dilation, scale)


@_window_attention_op.register_kernel("cuda")
def _window_attention_cuda(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int, scale: float
) -> torch.Tensor:
    if q.dtype in _TRITON_DTYPES and triton_available():
        _check_inputs(q, k, v, window, dilation)
        return _triton_forward(q, k, v, window, dilation, scale)
    return _unfused(q, k, v, window, dilation, scale)


@_window_attention_op.register_fake
def _window_attention_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int, scale: float
) -> torch.Tensor:
    _check_inputs(q, k, v, window, dilation)
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, window, dilation, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.window, ctx.dilation, ctx.scale = window, dilation, scale


def _backward(ctx, grad_out: torch.Tensor):
    q, k, v = ctx.saved_tensors

    def reference(q_, k_, v_):
        return _unfused(q_, k_, v_, ctx.window, ctx.dilation, ctx.scale)

    vjp_fn = torch.func.vjp(reference, q, k, v)[1]  # (output, vjp function)
    grad_q, grad_k, grad_v = vjp_fn(grad_out)
    return grad_q, grad_k, grad_v, None, None, None


_window_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _register_decomposition() -> None:
    """Puts the unfused formulation into ``torch._decomp.decomposition_table`` for the custom op.

    The ONNX dynamo exporter decomposes operators without an ONNX translation with that table, so
    a program that holds the custom op still exports to plain ONNX operators. ``torch.export``'s
    default ``run_decompositions()`` and Torch-TensorRT's default lowering do not use the whole
    table, so the op stays intact for them.
    """
    try:
        from torch._decomp import decomposition_table
    except ImportError:  # pragma: no cover - private module moved
        return
    decomposition_table.setdefault(torch.ops.sdcpc.window_attention.default, _unfused)


_register_decomposition()


def fused_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Calls the custom op ``torch.ops.sdcpc.window_attention`` (any device); same signature as ``window_attention``."""
    _check_inputs(q, k, v, window, dilation)
    if scale is None:
        scale = q.shape[2] ** -0.5
    return torch.ops.sdcpc.window_attention(q, k, v, int(window), int(dilation), float(scale))


def decompose_to_reference(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every ``sdcpc.window_attention`` node replaced by the unfused formulation's plain ops."""
    return program.run_decompositions({torch.ops.sdcpc.window_attention.default: _unfused})


# ------------------------------------------------------------------------------ Triton kernel
@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (the CUDA kernel falls back to the unfused formulations otherwise)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _triton_kernel():
    """Builds the ``@triton.jit`` kernel on first use (so importing this module never imports triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def window_attention_fwd(
        Q, K, V, Out,
        NH, H, W, D,
        sq_b, sq_h, sq_d, sq_y, sq_x,
        sk_b, sk_r, sk_h, sk_d, sk_y, sk_x,
        sv_b, sv_r, sv_h, sv_d, sv_y, sv_x,
        so_b, so_h, so_d, so_y, so_x,
        qk_scale,
        R: tl.constexpr, WINDOW: tl.constexpr, DILATION: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # R (references) is a compile-time constant: one compilation per reference count, which is fixed for a
        # node; Triton 3.6's interpreter cannot loop over a runtime integer argument.
        pid_p = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // NH
        hh = pid_bh % NH
        pos = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        in_image = pos < H * W
        y = pos // W
        x = pos % W
        c = tl.arange(0, BLOCK_D)
        c_ok = c < D

        q_ptrs = Q + b * sq_b + hh * sq_h + c[None, :] * sq_d + y[:, None] * sq_y + x[:, None] * sq_x
        # qk_scale includes log2(e): the softmax below works in base 2 (exp2).
        q = tl.load(q_ptrs, mask=in_image[:, None] & c_ok[None, :], other=0.0).to(tl.float32) * qk_scale

        m_i = tl.full([BLOCK_P], -1.0e30, tl.float32)  # running maximum (finite: no inf - inf)
        l_i = tl.zeros([BLOCK_P], tl.float32)  # running sum of exp2(logit - m_i)
        acc = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
        radius = WINDOW // 2
        for r in range(R):
            k_base = K + b * sk_b + r * sk_r + hh * sk_h + c[None, :] * sk_d
            v_base = V + b * sv_b + r * sv_r + hh * sv_h + c[None, :] * sv_d
            for i in range(WINDOW):
                ky = y + (i - radius) * DILATION
                row_ok = in_image & (ky >= 0) & (ky < H)
                for j in range(WINDOW):
                    kx = x + (j - radius) * DILATION
                    ok = row_ok & (kx >= 0) & (kx < W)  # out-of-image keys are skipped
                    mask = ok[:, None] & c_ok[None, :]
                    k_t = tl.load(k_base + ky[:, None] * sk_y + kx[:, None] * sk_x, mask=mask, other=0.0)
                    logit = tl.sum(q * k_t.to(tl.float32), axis=1)
                    logit = tl.where(ok, logit, float("-inf"))
                    m_new = tl.maximum(m_i, logit)
                    alpha = tl.exp2(m_i - m_new)
                    p = tl.exp2(logit - m_new)
                    l_i = l_i * alpha + p
                    v_t = tl.load(v_base + ky[:, None] * sv_y + kx[:, None] * sv_x, mask=mask, other=0.0)
                    acc = acc * alpha[:, None] + p[:, None] * v_t.to(tl.float32)
                    m_i = m_new
        # The centre key is always inside the image, so l_i > 0 for every pixel in the image.
        out = acc / tl.where(in_image, l_i, 1.0)[:, None]
        o_ptrs = Out + b * so_b + hh * so_h + c[None, :] * so_d + y[:, None] * so_y + x[:, None] * so_x
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=in_image[:, None] & c_ok[None, :])

    return window_attention_fwd


_LOG2E = 1.4426950408889634


def launch_options(num_warps: int) -> dict[str, int]:
    """Triton launch options: ``num_warps``, which Triton's interpreter (``TRITON_INTERPRET=1``) does not take."""
    return {} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": num_warps}


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _triton_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dilation: int, scale: float,
    block_p: int | None = None, num_warps: int | None = None,
) -> torch.Tensor:
    """Launches the Triton kernel (any strides). Also runs on CPU tensors under ``TRITON_INTERPRET=1``."""
    B, R, NH, D, H, W = k.shape
    out = torch.empty((B, NH, D, H, W), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    block_d = max(16, next_power_of_2(D))
    if block_p is None:
        block_p = 64 if block_d <= 32 else 32
    if num_warps is None:
        num_warps = 4
    grid = (-(-(H * W) // block_p), B * NH)
    kernel = _triton_kernel()
    kernel[grid](
        q, k, v, out,
        NH, H, W, D,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        float(scale) * _LOG2E,
        R=int(R), WINDOW=int(window), DILATION=int(dilation), BLOCK_P=block_p, BLOCK_D=block_d,
        **launch_options(num_warps),
    )
    return out
