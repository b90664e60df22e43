"""PyTorch back ends: ``eager`` (the model's own methods) and ``compile`` (``torch.compile``).

Both follow ``sdcpc_core.runtime.backends.Backend``: ``encode(image) -> FrameCache`` once per frame and
``temporal(current, refs) -> logits`` for the target frame. Inputs are cast to the back end's device
and dtype; outputs are given back as the programs produce them (on ``device``, in the back end's
dtype: bf16 logits for ``precision="bf16"``). The ``cudagraph`` back end
(``sdcpc_core.runtime.cudagraph_backend``) shares their set-up.

The model is moved to ``device`` and, for ``fp16`` (CUDA only) and ``bf16``, cast to that dtype **in
place** (like ``nn.Module.to``) and switched to eval mode: pass a copy if the caller still needs the
float32 model.

Option of every PyTorch back end: ``fused_window_attention`` (default True). False runs this back
end's calls with ``use_fused_window_attention(False)`` (DSSA's window attention in plain ops); True
leaves the process-wide switch as it is (automatic: the fused Triton kernel for CUDA inference
unless ``SDCPC_FUSED_WINDOW=0``; see ``sdcpc_core.ops.window_attention``).

Fallback: a back end that cannot run its programs as asked (``torch.compile`` fails, a CUDA graph
cannot be captured) warns once (``BackendFallbackWarning``, naming the error and the eager back end)
and runs the eager formulation from then on, so a node keeps running.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import overload

import torch

from ..models.sdcpc import SDCPC, FrameCache
from ..ops.window_attention import use_fused_window_attention
from .backends import Backend
from .programs import EncodeFrameProgram, TemporalStepProgram

# ``mode`` values of ``torch.compile`` (empty / None: inductor's default).
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Modes whose compiled programs run as CUDA graphs on CUDA: the next call overwrites their outputs.
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class BackendFallbackWarning(RuntimeWarning):
    """A back end could not run as asked and runs eager from now on; the message names the error."""


class _TorchBackend(Backend):
    """Shared set-up: model on the device in the back end's dtype, input casting, eager formulation, fallback."""

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3, fused_window_attention: bool = True) -> None:
        super().__init__(model, input_size, device, precision, num_refs)
        self.model.to(device=self.device, dtype=self.dtype)
        self.fused_window_attention = bool(fused_window_attention)
        self.fallback_reason: str | None = None  # why this back end runs eager, once it does

    @overload
    def _cast(self, tensor: torch.Tensor) -> torch.Tensor: ...

    @overload
    def _cast(self, tensor: None) -> None: ...

    def _cast(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.to(device=self.device, dtype=self.dtype)

    def _cast_cache(self, cache: FrameCache) -> FrameCache:
        return FrameCache(*(self._cast(getattr(cache, name))
                            for name in ("features", "kv", "coarse", "probs", "logits")))

    def _running(self) -> contextlib.ExitStack:
        """Context of every program call: inference mode, and the fused window kernel off if the option says so."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if not self.fused_window_attention:
            stack.enter_context(use_fused_window_attention(False))
        return stack

    def _eager_encode(self, image: torch.Tensor) -> FrameCache:
        with self._running():
            return self.model.encode_frame(self._cast(image))

    def _eager_temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        with self._running():
            return self.model.temporal_step(self._cast_cache(current), [self._cast_cache(r) for r in refs])

    def _fall_back(self, reason: str) -> None:
        """Runs eager from now on; the first call warns with ``reason`` (later ones change nothing)."""
        if self.fallback_reason is not None:
            return
        self.fallback_reason = reason
        warnings.warn(f"the {self.name} backend falls back to the eager backend: {reason}", BackendFallbackWarning,
                      stacklevel=3)


def describe_error(error: BaseException, limit: int = 300) -> str:
    """``"Type: first line of the message"``, at most ``limit`` characters (compiler errors run to pages)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ProgramBackend(_TorchBackend):
    """Runs the streaming programs its way (``_run_encode``, ``_run_temporal``) until that fails, then eager.

    A failure that the eager formulation of the same call does not share (the compiler or the capture
    failed) warns once (``failure`` names the step) and switches to eager for good; an error that eager
    raises too (a bad input) is raised as eager raises it, and nothing switches.
    """

    failure = ""  # what failed, e.g. "torch.compile"

    def _run_encode(self, image: torch.Tensor) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def _run_temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (per-frame models: logits only)."""
        if self.fallback_reason is None:
            try:
                return self.frame_cache(self._run_encode(image))
            except Exception as error:
                cache = self._eager_encode(image)  # raises the input's own error, if it has one
                self._fall_back(f"{self.failure} of the encode program failed ({describe_error(error)})")
                return cache
        return self._eager_encode(image)

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given references (oldest first)."""
        self.check_temporal_call(current, refs, fixed_refs=False)
        assert current.logits is not None  # checked by check_temporal_call
        if not self.is_temporal:
            return current.logits
        if self.fallback_reason is None:
            try:
                return self._run_temporal(current, refs)
            except Exception as error:
                logits = self._eager_temporal(current, refs)
                self._fall_back(f"{self.failure} of the temporal program failed ({describe_error(error)})")
                return logits
        return self._eager_temporal(current, refs)


class EagerBackend(_TorchBackend):
    """Runs ``model.encode_frame`` and ``model.temporal_step`` under ``torch.inference_mode()``."""

    name = "eager"

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (tensors on ``device``, ``dtype``)."""
        return self._eager_encode(image)

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given references (oldest first)."""
        return self._eager_temporal(current, refs)


class CompileBackend(_ProgramBackend):
    """``torch.compile`` of ``EncodeFrameProgram`` and ``TemporalStepProgram`` with static shapes.

    Each program is compiled on its first call (``dynamic=False``: one graph for the back end's
    input size and ``num_refs`` references; other shapes trigger a recompilation). ``mode`` is
    passed to ``torch.compile`` (one of ``COMPILE_MODES``, e.g. ``"reduce-overhead"`` for CUDA graphs;
    None or empty: inductor's default mode; the outputs of the CUDA-graph modes are cloned, since the
    next call overwrites them), ``compiler`` as its ``backend`` (default ``"inductor"``;
    ``"aot_eager"`` captures the same graphs without generating kernels, which is quick and useful
    for checks). On the CPU, inductor's first compilation of a full model takes minutes (C++
    kernels); it is cached on disk (``TORCHINDUCTOR_CACHE_DIR``) for later processes.

    Compilation happens inside the first call of each program; if it fails the back end warns once
    and runs eager from then on (``_ProgramBackend``).
    """

    name = "compile"
    failure = "torch.compile"

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3, mode: str | None = None,
                 compiler: str = "inductor", fused_window_attention: bool = True) -> None:
        if mode not in (None, "", *COMPILE_MODES):
            raise ValueError(f"compile mode must be empty (inductor's default) or one of {', '.join(COMPILE_MODES)}, "
                             f"got {mode!r}")
        super().__init__(model, input_size, device, precision, num_refs, fused_window_attention)
        self.mode = mode or None
        self.compiler = compiler
        self._clone_outputs = self.mode in _CUDA_GRAPH_MODES
        self._encode_program = None
        self._temporal_program = None

    def _compile(self, program: torch.nn.Module):
        return torch.compile(program, dynamic=False, mode=self.mode, backend=self.compiler)

    def _call(self, program, inputs: Sequence[torch.Tensor]):
        with self._running():
            if self._clone_outputs:
                torch.compiler.cudagraph_mark_step_begin()
            outputs = program(*inputs)
            if self._clone_outputs:
                outputs = outputs.clone() if isinstance(outputs, torch.Tensor) else tuple(o.clone() for o in outputs)
        return outputs

    def _run_encode(self, image: torch.Tensor) -> Sequence[torch.Tensor]:
        if self._encode_program is None:
            self._encode_program = self._compile(EncodeFrameProgram(self.model))
        return self._call(self._encode_program, (self._cast(image),))

    def _run_temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        if self._temporal_program is None:
            self._temporal_program = self._compile(TemporalStepProgram(self.model))
        inputs = self.temporal_inputs(self._cast_cache(current), [self._cast_cache(r) for r in refs])
        return self._call(self._temporal_program, inputs)


__all__ = ["BackendFallbackWarning", "COMPILE_MODES", "CompileBackend", "EagerBackend", "describe_error"]
