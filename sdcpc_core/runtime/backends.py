"""Inference back ends behind one interface: the streaming runtime does not care which runs.

A back end runs the two streaming programs of ``sdcpc_core.runtime.programs`` for one fixed input
size: ``encode(image) -> FrameCache`` once per frame and ``temporal(current, refs) -> logits``.
Tensors cross the interface as torch tensors on ``backend.device``. Back ends are created by name
with ``create_backend``; optional ones are imported only when asked for, and asking for one whose
package is missing names the back ends that are available. ``backend_options`` turns the node's
back-end settings into the options the named back end takes.

| name            | runs the programs as                                              | module                |
|-----------------|-------------------------------------------------------------------|-----------------------|
| ``eager``       | the model's own methods, PyTorch eager                            | ``torch_backends``    |
| ``compile``     | ``torch.compile`` (eager if compilation fails)                    | ``torch_backends``    |
| ``cudagraph``   | CUDA graphs, captured once per input size (eager without CUDA or  | ``cudagraph_backend`` |
|                 | if capture fails)                                                 |                       |
| ``onnxruntime`` | exported ONNX graphs in ONNX Runtime                              | ``onnx_backend``      |
| ``tensorrt``    | Torch-TensorRT engines (CUDA)                                     | ``tensorrt_backend``  |
"""
from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import torch

from ..models.sdcpc import SDCPC, FrameCache, stack_references
from .programs import encode_output_names

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# name -> (module:class, the package it needs)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "eager": ("sdcpc_core.runtime.torch_backends:EagerBackend", None),
    "compile": ("sdcpc_core.runtime.torch_backends:CompileBackend", None),
    "cudagraph": ("sdcpc_core.runtime.cudagraph_backend:CudaGraphBackend", None),
    "onnxruntime": ("sdcpc_core.runtime.onnx_backend:OnnxRuntimeBackend", "onnxruntime"),
    "tensorrt": ("sdcpc_core.runtime.tensorrt_backend:TensorRTBackend", "torch_tensorrt"),
}
TORCH_BACKENDS = ("eager", "compile", "cudagraph")  # run the model's PyTorch code (fused window option)


class Backend(ABC):
    """Runs a model's encode and temporal programs at one input size ``(height, width)``."""

    name: str = ""

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        self.model = model.eval()
        self.input_size = cast("tuple[int, int]", tuple(input_size))
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.num_refs = num_refs

    @property
    def is_temporal(self) -> bool:
        return self.model.is_temporal

    def frame_cache(self, outputs: Sequence[torch.Tensor]) -> FrameCache:
        """The ``FrameCache`` of an encode program's outputs (per-frame models give only logits)."""
        values = dict(zip(encode_output_names(self.model), outputs))
        return FrameCache(values.get("features"), values.get("kv"), values.get("coarse"), values.get("probs"),
                          values["logits"])

    def check_temporal_call(self, current: FrameCache, refs: Sequence[FrameCache], fixed_refs: bool) -> None:
        """Refuses a temporal call without static logits, without references or, for back ends built
        for ``num_refs`` references (``fixed_refs``), with another count."""
        if current.logits is None:
            raise ValueError("temporal needs the current frame's static logits; pass the FrameCache returned by "
                             "encode, not one stripped by without_logits()")
        if fixed_refs and len(refs) != self.num_refs:
            raise ValueError(f"the {self.name} backend was built for {self.num_refs} reference(s), got {len(refs)}; "
                             f"pass exactly {self.num_refs} (duplicate frames at a cold start)")
        if len(refs) == 0:
            raise ValueError("temporal needs at least one reference FrameCache (duplicate the current frame at a "
                             "cold start)")

    @staticmethod
    def temporal_inputs(current: FrameCache, refs: Sequence[FrameCache]) -> tuple[torch.Tensor, ...]:
        """The temporal program's inputs, in ``TEMPORAL_INPUTS`` order (references stacked on dim 1)."""
        assert current.features is not None and current.coarse is not None  # a temporal model's encode sets all
        assert current.probs is not None and current.logits is not None
        return (current.features, current.coarse, current.probs, current.logits, *stack_references(refs))

    @abstractmethod
    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` at ``input_size`` -> the frame's cache entry."""

    @abstractmethod
    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given ``num_refs`` references."""


def available_backends() -> list[str]:
    """Names of the back ends whose packages are installed here."""
    return [name for name, (_, package) in BACKENDS.items()
            if package is None or importlib.util.find_spec(package) is not None]


def backend_options(name: str, *, compile_mode: str = "", fused_window_attention: bool = True) -> dict:
    """The options of ``create_backend(name, ...)`` for the node's settings: ``fused_window_attention``
    for the PyTorch back ends (``TORCH_BACKENDS``) and ``mode`` (``compile_mode``; empty: inductor's
    default) for ``compile``. The exported back ends take neither: their graphs hold the plain-op window
    attention unless the fused switch is on explicitly (``sdcpc_core.ops.window_attention``)."""
    options: dict = {}
    if name in TORCH_BACKENDS:
        options["fused_window_attention"] = bool(fused_window_attention)
    if name == "compile" and compile_mode:
        options["mode"] = compile_mode
    return options


def create_backend(name: str, model: SDCPC, input_size: tuple[int, int], **options) -> Backend:
    """Builds back end ``name`` (a key of ``BACKENDS``) for ``model``; ``options`` go to its class."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)} "
                         f"(available here: {', '.join(available_backends())})")
    target, package = BACKENDS[name]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"backend {name!r} needs the Python package {package!r}, which is not installed; "
                         f"available here: {', '.join(available_backends())}")
    module_name, class_name = target.split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model, input_size, **options)
