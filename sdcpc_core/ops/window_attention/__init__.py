"""Windowed cross-frame attention: one dispatcher, four formulations of the same result.

Every query pixel of the current frame attends to a small dilated window of key/value pixels
around the same location in each of ``R`` reference frames, with a single softmax over all
``R * window**2`` candidates. :func:`window_attention` is the one place that chooses how:

| call (the first row that matches)                     | formulation (module)                         |
|-------------------------------------------------------|----------------------------------------------|
| fused switch on, ``q`` on CUDA, no ONNX export        | ``triton``: custom op, fused Triton kernel   |
| ``torch.compiler.is_exporting()`` (``torch.export``)  | ``tiled``: dense attention in query tiles    |
| eager CPU inference (no tracing, compiling, autograd) | ``cpu_inplace``: offset loop, in place       |
| otherwise: autograd, CUDA, ``torch.compile``          | ``reference``: offset loop, plain tensor ops |

The fused switch is off by default and process-wide: ``use_fused_window_attention(True)`` turns it
on (and works as a context manager restoring the previous setting). With it on, ``torch.export``
of a CUDA model keeps one ``sdcpc.window_attention`` node per call, which the TensorRT plugin
(``sdcpc_core.runtime.tensorrt_plugin``) takes; an ONNX export (``torch.onnx.is_in_onnx_export()``)
never takes the custom op. With it off, exported graphs (the ONNX and TensorRT programs) hold the
tiled formulation in plain ATen ops. Eager CPU inference is ``ops.dispatch.eager_cpu_inference``.
The custom op itself (its kernel on devices other than CUDA, its backward and its decomposition)
runs the rows below the first one (``allow_fused=False``). All formulations agree within float
rounding (tested).
"""

from __future__ import annotations

import torch

from ..dispatch import eager_cpu_inference
from .cpu_inplace import _accumulate_inplace
from .reference import _attend_plain, _check_inputs
from .tiled import EXPORT_TILE, _attend_by_tiles
from .triton import decompose_to_reference, fused_window_attention, triton_available

__all__ = [
    "EXPORT_TILE",
    "decompose_to_reference",
    "fused_window_attention",
    "fused_window_attention_enabled",
    "triton_available",
    "use_fused_window_attention",
    "window_attention",
]


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    dilation: int = 1,
    scale: float | None = None,
    *,
    allow_fused: bool = True,
) -> torch.Tensor:
    """Attend from each query pixel to a dilated window in every reference frame.

    Args:
        q: queries, shape ``(B, h, d, H, W)`` (batch, heads, channels per head,
            height, width).
        k: keys, shape ``(B, R, h, d, H, W)`` for ``R >= 1`` reference frames.
        v: values, same shape as ``k``.
        window: odd window size; the offsets are ``i, j`` in
            ``[-(window // 2), window // 2]``.
        dilation: spacing between window taps, so the query at ``(y, x)`` sees
            the keys at ``(y + i * dilation, x + j * dilation)``.
        scale: logit scale; defaults to ``d ** -0.5``.
        allow_fused: ``False`` never takes the custom op (the op's own kernels call it so).

    Returns:
        Tensor of shape ``(B, h, d, H, W)`` and the dtype of ``q``:
        ``out[y, x] = sum_p softmax_p(scale * <q[y, x], k_p>) * v_p`` where ``p``
        runs jointly over all ``R * window**2`` (frame, offset) pairs. Keys that
        fall outside the image are excluded from the softmax (they get no
        weight); the centre offset is always inside, so every row is valid.

    Half-precision inputs (float16 / bfloat16) are computed in float32
    internally and the result is cast back. Which formulation runs: the table
    in the module docstring.
    """
    if (allow_fused and _FUSED_DEFAULT[0] and _routes_to_custom_op(q.device)
            and not torch.onnx.is_in_onnx_export()):
        return fused_window_attention(q, k, v, window, dilation, scale)
    _check_inputs(q, k, v, window, dilation)
    if scale is None:
        scale = k.shape[3] ** -0.5
    if torch.compiler.is_exporting():
        return _attend_by_tiles(q, k, v, window, dilation, scale)
    if eager_cpu_inference(q, k, v):
        return _accumulate_inplace(q, k, v, window, dilation, scale)
    return _attend_plain(q, k, v, window, dilation, scale)


def _routes_to_custom_op(device: torch.device) -> bool:
    """Whether the fused switch sends inputs on ``device`` to the custom op: CUDA, where its kernel is."""
    return device.type == "cuda"


# ------------------------------------------------------------------------------ the switch
_FUSED_DEFAULT = [False]  # process-wide setting; a list so the helper can rebind it


class use_fused_window_attention:  # noqa: N801 - used like a function
    """Turns the fused dispatch of :func:`window_attention` on or off for the process.

    ``use_fused_window_attention(True)`` takes effect immediately and stays on;
    ``with use_fused_window_attention(True): ...`` restores the previous setting on exit.
    ``previous`` holds the setting it replaced.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.previous = _FUSED_DEFAULT[0]
        _FUSED_DEFAULT[0] = bool(enabled)

    def __enter__(self) -> "use_fused_window_attention":
        return self

    def __exit__(self, *exc_info) -> None:
        _FUSED_DEFAULT[0] = self.previous


def fused_window_attention_enabled() -> bool:
    """Whether :func:`window_attention` sends CUDA inputs to the custom op."""
    return _FUSED_DEFAULT[0]
