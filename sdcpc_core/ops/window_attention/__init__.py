"""Windowed cross-frame attention: one dispatcher, four formulations of the same result.

Every query pixel of the current frame attends to a small dilated window of key/value pixels
around the same location in each of ``R`` reference frames, with a single softmax over all
``R * window**2`` candidates. :func:`window_attention` is the one place that chooses how:

| call (the first row that matches)                                    | formulation (module)                         |
|----------------------------------------------------------------------|----------------------------------------------|
| ``q`` on CUDA, switch automatic or on, no autograd, no export        | ``triton``: custom op, fused Triton kernel   |
| ``q`` on CUDA, switch on (explicitly), ``torch.export``, not ONNX    | ``triton``: the custom op stays in the graph |
| ``torch.compiler.is_exporting()`` (``torch.export``)                 | ``tiled``: dense attention in query tiles    |
| eager CPU inference (no tracing, compiling, autograd)                | ``cpu_inplace``: offset loop, in place       |
| otherwise: autograd, CUDA with the switch off, ``torch.compile`` CPU | ``reference``: offset loop, plain tensor ops |

The fused switch is process-wide and governs every fused CUDA kernel of the temporal step (this one and
the ops of ``sdcpc_core.ops.fused``, through ``fused_kernel_takes``). It has three settings
(``use_fused_window_attention``, which also works as a context manager restoring the previous setting):

* automatic (``None``, the default): CUDA inference (eager, ``torch.compile``, CUDA graphs) takes the
  fused kernel; exported graphs do not. The environment variable ``SDCPC_FUSED_WINDOW`` (``FUSED_ENV``)
  set to ``0``, ``false``, ``off`` or ``no`` when the package is imported turns the automatic setting off;
* on (``True``): as automatic, and ``torch.export`` of a CUDA model also keeps one
  ``sdcpc.window_attention`` node per call, which the TensorRT plugin
  (``sdcpc_core.runtime.tensorrt_plugin``) takes;
* off (``False``): never the custom op.

Autograd (a training step: gradients enabled and an input that requires them) always takes the
reference, whose backward is plain autograd; the op's own backward recomputes the reference.
An ONNX export (``torch.onnx.is_in_onnx_export()``) never takes the custom op; other exported programs
(the TensorRT back end's) hold the tiled formulation in plain ATen ops unless the switch is on explicitly.
Eager CPU inference is ``ops.dispatch.eager_cpu_inference``.
The custom op itself (its kernel on devices other than CUDA, its backward and its decomposition)
runs the rows below the first two (``allow_fused=False``). All formulations agree within float
rounding (tested).
"""

from __future__ import annotations

import os

import torch

from ..dispatch import builds_autograd_graph, eager_cpu_inference
from .cpu_inplace import _accumulate_inplace
from .reference import _attend_plain, _check_inputs
from .tiled import EXPORT_TILE, _attend_by_tiles
from .triton import decompose_to_reference, fused_window_attention, triton_available

__all__ = [
    "EXPORT_TILE",
    "FUSED_ENV",
    "decompose_to_reference",
    "fused_window_attention",
    "fused_kernel_takes",
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
    if allow_fused and _routes_to_custom_op(q.device) and _takes_fused(q, k, v):
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


def fused_kernel_takes(*tensors: torch.Tensor) -> bool:
    """Whether an eager or compiled call with these inputs goes to a fused custom op that has no export
    role (``sdcpc_core.ops.fused``): the first row of the table, a CUDA device with the
    switch automatic or on, no autograd and no ``torch.export``."""
    return (not torch.compiler.is_exporting() and _routes_to_custom_op(tensors[0].device)
            and _takes_fused(*tensors))


def _takes_fused(*tensors: torch.Tensor) -> bool:
    """The switch's answer for a call on a device with the custom op (the first two rows of the table)."""
    setting = _FUSED_DEFAULT[0]
    if setting is False or torch.onnx.is_in_onnx_export():
        return False
    if torch.compiler.is_exporting():
        return setting is True
    if setting is None and not _FUSED_AUTOMATIC:
        return False
    return not builds_autograd_graph(*tensors)


# ------------------------------------------------------------------------------ the switch
FUSED_ENV = "SDCPC_FUSED_WINDOW"


def _automatic_from_environment() -> bool:
    """The automatic setting: on unless ``FUSED_ENV`` is ``0``, ``false``, ``off`` or ``no``."""
    return os.environ.get(FUSED_ENV, "").strip().lower() not in ("0", "false", "off", "no")


# Read once at import: traced code (torch.compile) must not read the environment per call.
_FUSED_AUTOMATIC = _automatic_from_environment()
_FUSED_DEFAULT: list[bool | None] = [None]  # process-wide setting; a list so the helper can rebind it


class use_fused_window_attention:  # noqa: N801 - used like a function
    """Sets the fused dispatch of :func:`window_attention` for the process: ``True`` (on, also in
    ``torch.export``), ``False`` (off) or ``None`` (automatic: on for CUDA inference unless
    ``SDCPC_FUSED_WINDOW=0``; see the module docstring).

    ``use_fused_window_attention(False)`` takes effect immediately and stays;
    ``with use_fused_window_attention(False): ...`` restores the previous setting on exit.
    ``previous`` holds the setting it replaced.
    """

    def __init__(self, enabled: bool | None = True) -> None:
        self.previous = _FUSED_DEFAULT[0]
        _FUSED_DEFAULT[0] = None if enabled is None else bool(enabled)

    def __enter__(self) -> use_fused_window_attention:
        return self

    def __exit__(self, *exc_info) -> None:
        _FUSED_DEFAULT[0] = self.previous


def fused_window_attention_enabled() -> bool:
    """Whether :func:`window_attention` sends CUDA inference inputs to the custom op (the automatic
    setting answers from ``SDCPC_FUSED_WINDOW``)."""
    setting = _FUSED_DEFAULT[0]
    return _FUSED_AUTOMATIC if setting is None else setting
