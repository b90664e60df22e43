"""The ``tensorrt`` back end: the streaming programs compiled by Torch-TensorRT, with an engine cache.

``TensorRTBackend(model, input_size, device="cuda", precision="fp16", num_refs=3, cache_dir=None,
checkpoint_sha256=None)`` exports ``EncodeFrameProgram`` and ``TemporalStepProgram`` with
``export_programs`` (static shapes for the input size and ``num_refs``) and compiles each with
``torch_tensorrt.dynamo.compile`` (``enabled_precisions={torch.float16}`` for the default fp16,
``{torch.bfloat16}`` for bf16, ``{torch.float32}`` for fp32). Inputs and outputs stay fp32 tensors
on the CUDA device; TensorRT chooses reduced-precision kernels inside the engine.

The DSSA window attention reaches TensorRT as whatever ``torch.export`` captured of it (see the
table of ``sdcpc_core.ops.window_attention``). Unless the fused switch is on explicitly, that is its tiled
formulation in plain ATen ops (a constant gather index, two batched matrix products, an additive
mask and a softmax), which Torch-TensorRT converts like any other part of the graph. With the
fused switch on (``sdcpc_core.ops.use_fused_window_attention(True)``) the programs of a CUDA model
hold the custom op ``sdcpc.window_attention`` instead; this back end does not register its plugin:
call ``sdcpc_core.runtime.tensorrt_plugin.register_tensorrt_plugin()`` first to have the Triton
kernel run inside the engine as a TensorRT plugin, otherwise Torch-TensorRT runs the op in PyTorch
between two engines.

Engine cache: with ``cache_dir``, each compiled program is saved with ``torch_tensorrt.save``
(ExportedProgram format) as ``cache_dir/<key>/<program>.ep``, where ``engine_cache_key`` hashes
everything an engine depends on: checkpoint sha256 (the model's config-and-weights hash when not
given), input size, ``num_refs``, precision, GPU name, TensorRT version, Torch-TensorRT version and
``EXPORT_FORMAT`` (the version of the exported computation).
Saving is atomic (temporary name, then rename). A cached file that fails to load (corrupt, or built
by an incompatible TensorRT) is deleted and rebuilt with a ``RuntimeWarning``.

``torch_tensorrt`` is imported only inside the functions that need it, so this module (and its
hardware-independent logic, ``engine_cache_key`` and ``EngineCache``) works without it. For tests,
the build / save / load steps can be injected (``builder``, ``saver``, ``loader``) together with the
``environment`` (GPU name and versions); the default ones are Torch-TensorRT's.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from ..atomic_files import atomic_write
from ..models.sdcpc import SDCPC, FrameCache
from .backends import PRECISIONS, Backend
from .programs import EXPORT_FORMAT, example_inputs, export_programs

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".ep"
# builder(exported_program, example_inputs, precision_dtype, device) -> callable module
Builder = Callable[[torch.export.ExportedProgram, tuple, torch.dtype, torch.device], Callable]
Saver = Callable[[Callable, str, tuple], None]  # saver(module, path, example_inputs)
Loader = Callable[[str], Callable]  # loader(path) -> callable module


def engine_cache_key(checkpoint_sha256: str, input_size: tuple[int, int], num_refs: int, precision: str,
                     gpu_name: str, tensorrt_version: str, torch_tensorrt_version: str,
                     export_format: int = EXPORT_FORMAT) -> str:
    """Hex key of one engine set; a pure function of its arguments (stable across runs and machines)."""
    fields = {
        "export_format": int(export_format),
        "checkpoint_sha256": str(checkpoint_sha256),
        "input_size": [int(v) for v in input_size],
        "num_refs": int(num_refs),
        "precision": str(precision),
        "gpu_name": str(gpu_name),
        "tensorrt_version": str(tensorrt_version),
        "torch_tensorrt_version": str(torch_tensorrt_version),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


# -------------------------------------------------------------------- Torch-TensorRT defaults
def tensorrt_environment(device: torch.device) -> dict[str, str]:
    """GPU name and TensorRT / Torch-TensorRT versions (imports torch_tensorrt and tensorrt)."""
    import tensorrt
    import torch_tensorrt

    return {"gpu_name": torch.cuda.get_device_name(device), "tensorrt_version": tensorrt.__version__,
            "torch_tensorrt_version": torch_tensorrt.__version__}


def torch_tensorrt_builder(program: torch.export.ExportedProgram, inputs: tuple, precision: torch.dtype,
                           device: torch.device):
    """``torch_tensorrt.dynamo.compile`` of ``program`` for static ``inputs`` with ``precision`` enabled."""
    import torch_tensorrt

    compile_fn = torch_tensorrt.dynamo.compile
    options = {"arg_inputs": list(inputs), "enabled_precisions": {precision}, "device": device}
    parameters = inspect.signature(compile_fn).parameters
    if "arg_inputs" not in parameters:  # older releases name it ``inputs``
        options["inputs"] = options.pop("arg_inputs")
    if "use_explicit_typing" in parameters:
        # Newer releases default to explicit typing (the graph's dtypes, fp32 here), which ignores
        # enabled_precisions; turn it off so fp16 / bf16 kernels may be chosen.
        options["use_explicit_typing"] = False
    return compile_fn(program, **options)


def torch_tensorrt_saver(module, path: str, inputs: tuple) -> None:
    """``torch_tensorrt.save`` in ExportedProgram format."""
    import torch_tensorrt

    parameters = inspect.signature(torch_tensorrt.save).parameters
    key = "arg_inputs" if "arg_inputs" in parameters else "inputs"
    torch_tensorrt.save(module, path, output_format="exported_program", **{key: list(inputs)})


def torch_tensorrt_loader(path: str):
    """``torch_tensorrt.load(path).module()``: a callable module with the engines deserialised."""
    import torch_tensorrt

    return torch_tensorrt.load(path).module()


# ---------------------------------------------------------------------------- engine cache
class EngineCache:
    """A folder of saved compiled programs: ``<folder>/<key>/<name>.ep``.

    ``get_or_build(key, name, build, inputs)`` loads the saved program when it exists and loads;
    otherwise (missing, or failing to load: the file is deleted and a warning given) it calls
    ``build()``, saves the result atomically and returns it.
    """

    def __init__(self, folder: str | os.PathLike, saver: Saver, loader: Loader) -> None:
        self.folder = Path(folder)
        self.saver = saver
        self.loader = loader

    def path(self, key: str, name: str) -> Path:
        return self.folder / key / f"{name}{ENGINE_SUFFIX}"

    def get_or_build(self, key: str, name: str, build: Callable[[], Callable], inputs: tuple):
        path = self.path(key, name)
        if path.is_file():
            try:
                module = self.loader(str(path))
                logger.info("loaded TensorRT engine %s from %s", name, path)
                return module
            except Exception as error:  # corrupt file or an engine of another TensorRT: rebuild
                warnings.warn(f"cached TensorRT program {path} failed to load ({type(error).__name__}: {error}); "
                              f"rebuilding it", RuntimeWarning, stacklevel=2)
                path.unlink(missing_ok=True)
        module = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temporary: self.saver(module, temporary, inputs), suffix=ENGINE_SUFFIX)
        return module


# --------------------------------------------------------------------------------- backend
class TensorRTBackend(Backend):
    """Runs the streaming programs as Torch-TensorRT compiled modules (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cuda",
                 precision: str = "fp16", num_refs: int = 3, cache_dir: str | os.PathLike | None = None,
                 checkpoint_sha256: str | None = None, builder: Builder | None = None,
                 saver: Saver | None = None, loader: Loader | None = None,
                 environment: dict[str, str] | None = None) -> None:
        super().__init__(model, input_size, device, precision, num_refs)
        injected = builder is not None
        if not injected and self.device.type != "cuda":
            raise ValueError(f"the tensorrt backend needs a CUDA device, got {self.device}")
        if not injected and not torch.cuda.is_available():
            raise ValueError("the tensorrt backend needs a CUDA device, and torch sees none")
        self.builder = builder or torch_tensorrt_builder
        self.environment = dict(environment) if environment is not None else tensorrt_environment(self.device)
        if checkpoint_sha256 is None:
            from .onnx_export import model_sha256
            checkpoint_sha256 = model_sha256(self.model)
        self.checkpoint_sha256 = checkpoint_sha256
        self.cache_key = engine_cache_key(checkpoint_sha256, self.input_size, num_refs, precision,
                                          self.environment["gpu_name"], self.environment["tensorrt_version"],
                                          self.environment["torch_tensorrt_version"])
        self.cache = (EngineCache(cache_dir, saver or torch_tensorrt_saver, loader or torch_tensorrt_loader)
                      if cache_dir is not None else None)
        self.model.to(self.device)  # fp32 weights: TensorRT casts inside the engine
        self._programs = self._build_all()

    def _build_all(self) -> dict[str, Callable]:
        height, width = self.input_size
        inputs = example_inputs(self.model, height, width, self.num_refs)
        exported: dict[str, torch.export.ExportedProgram] = {}

        def build(name: str) -> Callable:
            if not exported:  # export only when something has to be built (non-strict: same graph, faster)
                exported.update(export_programs(self.model, height, width, self.num_refs, strict=False))
            return self.builder(exported[name], inputs[name], PRECISIONS[self.precision], self.device)

        programs = {}
        for name in inputs:  # "encode", and "temporal" for temporal models
            if self.cache is None:
                programs[name] = build(name)
            else:
                programs[name] = self.cache.get_or_build(self.cache_key, name, partial(build, name), inputs[name])
        return programs

    @property
    def programs(self) -> dict[str, Callable]:
        """The compiled programs by name (``encode``, and ``temporal`` for temporal models)."""
        return dict(self._programs)

    def _input(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=torch.float32).contiguous()

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (per-frame models: logits only)."""
        expected = (1, 3, *self.input_size)
        if tuple(image.shape) != expected:
            raise ValueError(f"the tensorrt backend was built for images of shape {expected}, got {tuple(image.shape)}")
        with torch.inference_mode():
            outputs = self._programs["encode"](self._input(image))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return self.frame_cache(outputs)

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given ``num_refs`` references (oldest first)."""
        self.check_temporal_call(current, refs, fixed_refs=self.is_temporal)
        assert current.logits is not None  # checked by check_temporal_call
        if not self.is_temporal:
            return current.logits
        with torch.inference_mode():
            out = self._programs["temporal"](*(self._input(v) for v in self.temporal_inputs(current, refs)))
        return out[0] if isinstance(out, (tuple, list)) else out


__all__ = ["EngineCache", "TensorRTBackend", "engine_cache_key", "tensorrt_environment", "torch_tensorrt_builder",
           "torch_tensorrt_loader", "torch_tensorrt_saver"]
