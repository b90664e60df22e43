"""PyTorch back ends: ``eager`` (the model's own methods) and ``compile`` (``torch.compile``).

Both follow ``sdcpc_core.runtime.backends.Backend``: ``encode(image) -> FrameCache`` once per frame and
``temporal(current, refs) -> logits`` for the target frame. Inputs are cast to the back end's device
and dtype; outputs are given back as the programs produce them (on ``device``, in the back end's
dtype: bf16 logits for ``precision="bf16"``).

The model is moved to ``device`` and, for ``fp16`` (CUDA only) and ``bf16``, cast to that dtype **in
place** (like ``nn.Module.to``) and switched to eval mode: pass a copy if the caller still needs the
float32 model.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..models.sdcpc import SDCPC, FrameCache
from .backends import Backend
from .programs import EncodeFrameProgram, TemporalStepProgram


class _TorchBackend(Backend):
    """Shared set-up: model on the device in the back end's dtype, input casting."""

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3) -> None:
        super().__init__(model, input_size, device, precision, num_refs)
        self.model.to(device=self.device, dtype=self.dtype)

    def _cast(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.to(device=self.device, dtype=self.dtype)

    def _cast_cache(self, cache: FrameCache) -> FrameCache:
        return FrameCache(*(self._cast(getattr(cache, name))
                            for name in ("features", "kv", "coarse", "probs", "logits")))


class EagerBackend(_TorchBackend):
    """Runs ``model.encode_frame`` and ``model.temporal_step`` under ``torch.inference_mode()``."""

    name = "eager"

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (tensors on ``device``, ``dtype``)."""
        with torch.inference_mode():
            return self.model.encode_frame(self._cast(image))

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given references (oldest first)."""
        with torch.inference_mode():
            return self.model.temporal_step(self._cast_cache(current), [self._cast_cache(r) for r in refs])


class CompileBackend(_TorchBackend):
    """``torch.compile`` of ``EncodeFrameProgram`` and ``TemporalStepProgram`` with static shapes.

    Each program is compiled on its first call (``dynamic=False``: one graph for the back end's
    input size and ``num_refs`` references; other shapes trigger a recompilation). ``mode`` is
    passed to ``torch.compile`` (e.g. ``"reduce-overhead"`` for CUDA graphs; default: inductor's
    default mode), ``compiler`` as its ``backend`` (default ``"inductor"``; ``"aot_eager"`` captures
    the same graphs without generating kernels, which is quick and useful for checks).
    On the CPU, inductor's first compilation of a full model takes minutes (C++ kernels); it is
    cached on disk (``TORCHINDUCTOR_CACHE_DIR``) for later processes.
    """

    name = "compile"

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3, mode: str | None = None,
                 compiler: str = "inductor") -> None:
        super().__init__(model, input_size, device, precision, num_refs)
        self.mode = mode
        self.compiler = compiler
        self._encode_program = None
        self._temporal_program = None

    def _compile(self, program: torch.nn.Module):
        return torch.compile(program, dynamic=False, mode=self.mode, backend=self.compiler)

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (per-frame models: logits only)."""
        if self._encode_program is None:
            self._encode_program = self._compile(EncodeFrameProgram(self.model))
        with torch.inference_mode():
            outputs = self._encode_program(self._cast(image))
        return self.frame_cache(outputs)

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given references (oldest first)."""
        self.check_temporal_call(current, refs, fixed_refs=False)
        if not self.is_temporal:
            return current.logits
        if self._temporal_program is None:
            self._temporal_program = self._compile(TemporalStepProgram(self.model))
        inputs = self.temporal_inputs(self._cast_cache(current), [self._cast_cache(r) for r in refs])
        with torch.inference_mode():
            return self._temporal_program(*inputs)


__all__ = ["CompileBackend", "EagerBackend"]
