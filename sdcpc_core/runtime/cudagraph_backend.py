"""The ``cudagraph`` back end: both streaming programs captured once as CUDA graphs, replayed per frame.

On a GPU at batch 1 a frame's cost is set by kernel launches as much as by arithmetic (hundreds of
small kernels per SD-CPC frame, see ``bench/op_count.py``). A CUDA graph launches all of a program's
kernels at once, without Python or the dispatcher in between: this is the fast path of a robot
without TensorRT. ``CudaGraphBackend(model, input_size, device="cuda", precision="fp32", num_refs=3,
fused_window_attention=True, warmup=3, capture=None)``:

* **encode**: on the first frame ``EncodeFrameProgram`` is captured with a static input buffer
  ``image (1, 3, H, W)`` in the back end's dtype. Each frame copies the image into that buffer,
  replays the graph and returns *clones* of the static outputs as the ``FrameCache``: the reference
  cache keeps them across frames, while the next replay rewrites the static outputs.
* **temporal**: ``TemporalStepProgram`` likewise, with static inputs for the target's ``features``,
  ``coarse``, ``probs`` and ``logits`` and for the references' ``kv``, ``coarse`` and ``probs``
  stacked on dim 1 (``TEMPORAL_INPUTS``). The references the cache chose are copied straight into
  their slots of those buffers (one stacking kernel per tensor), the graph is replayed and the logits
  are cloned.
* **capture** (``CudaGraphCapture``, PyTorch's recipe): ``warmup`` runs on a side stream first, so
  that everything built lazily on a first call (constants of the input size, cuBLAS / cuDNN
  workspaces, Triton kernels) exists before the capture, then ``torch.cuda.graph``. The graphs of
  one capture share a memory pool (``torch.cuda.graph_pool_handle``): safe, since the replays run
  one after another on one stream and every output is cloned right after its replay.
* **recapture**: a program whose inputs change shape (another input size, another reference count)
  is captured again; every graph and the pool are released first (the other program is captured
  again on its next call, into the new pool).
* **fallback**: on a device other than CUDA, or when a warm-up or capture raises (e.g. a host
  synchronisation inside the program), the back end warns once (``BackendFallbackWarning``, naming
  the error) and runs eager from then on.

``capture`` replaces ``CudaGraphCapture`` (tests use one that runs the program eagerly, which checks
the buffer handling and recapture logic without a GPU). The model is moved and cast in place, as
by the other PyTorch back ends (``sdcpc_core.runtime.torch_backends``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..models.sdcpc import SDCPC, FrameCache
from .programs import EncodeFrameProgram, TemporalStepProgram
from .torch_backends import _ProgramBackend

# An input of a captured program: one tensor, or the references' tensors stacked on dim 1 (R >= 1).
Source = torch.Tensor | Sequence[torch.Tensor]


class Replayable(Protocol):
    def replay(self) -> None: ...


class GraphCapture(Protocol):
    """What ``CudaGraphBackend`` needs to capture programs: a pool factory and the capture itself."""

    def new_pool(self, device: torch.device) -> Any: ...

    def __call__(self, program: nn.Module, static_inputs: tuple[torch.Tensor, ...], pool: Any
                 ) -> tuple[Replayable, tuple[torch.Tensor, ...]]: ...


class CudaGraphCapture:
    """Captures a program as a ``torch.cuda.CUDAGraph`` after ``warmup`` runs on a side stream."""

    def __init__(self, warmup: int = 3) -> None:
        if int(warmup) < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.warmup = int(warmup)

    def new_pool(self, device: torch.device) -> Any:
        return torch.cuda.graph_pool_handle()

    def __call__(self, program: nn.Module, static_inputs: tuple[torch.Tensor, ...], pool: Any
                 ) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]:
        """``(graph, static outputs)``: replaying ``graph`` reads ``static_inputs`` and rewrites the outputs."""
        device = static_inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                program(*static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = program(*static_inputs)
        return graph, as_tuple(outputs)


def as_tuple(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def source_shape(source: Source) -> tuple[int, ...]:
    """The static buffer's shape for ``source``: its own, or ``(B, R, ...)`` for R stacked references."""
    if isinstance(source, torch.Tensor):
        return tuple(source.shape)
    first = source[0]
    return (first.shape[0], len(source), *first.shape[1:])


def fill(buffer: torch.Tensor, source: Source) -> None:
    """Copies ``source`` into ``buffer`` (casting dtype and device); references go to their dim-1 slots, in one
    kernel when they already have the buffer's dtype and device."""
    if isinstance(source, torch.Tensor):
        buffer.copy_(source)
        return
    if all(t.dtype == buffer.dtype and t.device == buffer.device for t in source):
        torch.stack(list(source), dim=1, out=buffer)
        return
    for index, tensor in enumerate(source):
        buffer[:, index].copy_(tensor)


@dataclass
class CapturedProgram:
    """One captured program: the shapes it was captured for, its static buffers and its graph."""

    shapes: tuple[tuple[int, ...], ...]
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    graph: Replayable

    def run(self, sources: Sequence[Source]) -> tuple[torch.Tensor, ...]:
        """Copies ``sources`` into the static inputs, replays, and returns clones of the static outputs."""
        for buffer, source in zip(self.inputs, sources):
            fill(buffer, source)
        self.graph.replay()
        return tuple(output.clone() for output in self.outputs)


class CudaGraphBackend(_ProgramBackend):
    """``EncodeFrameProgram`` and ``TemporalStepProgram`` as CUDA graphs with static buffers (module docstring)."""

    name = "cudagraph"
    failure = "CUDA graph capture"

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cuda",
                 precision: str = "fp32", num_refs: int = 3, fused_window_attention: bool = True, warmup: int = 3,
                 capture: GraphCapture | None = None) -> None:
        super().__init__(model, input_size, device, precision, num_refs, fused_window_attention)
        self.capture: GraphCapture = capture if capture is not None else CudaGraphCapture(warmup)
        self.captures = 0  # captures made so far (recaptures included)
        self._programs: dict[str, CapturedProgram] = {}
        self._pool: Any = None
        if capture is None and self.device.type != "cuda":
            self._fall_back(f"CUDA graphs need a CUDA device, got device {self.device}")

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the programs captured now (``encode``, ``temporal``)."""
        return tuple(self._programs)

    def release(self) -> None:
        """Drops every captured graph, its buffers and the memory pool (the next call captures again)."""
        self._programs.clear()
        self._pool = None

    def _replay(self, name: str, build: Callable[[], nn.Module], sources: Sequence[Source]) -> tuple[torch.Tensor, ...]:
        """Outputs of program ``name`` for ``sources``, captured first when needed (a failed capture releases
        every graph and raises)."""
        shapes = tuple(source_shape(source) for source in sources)
        program = self._programs.get(name)
        with self._running():
            if program is None or program.shapes != shapes:
                if program is not None:
                    self.release()  # another input size or reference count: a new pool for new graphs
                try:
                    program = self._capture(build(), shapes, sources)
                except Exception:
                    self.release()
                    raise
                self._programs[name] = program
            return program.run(sources)

    def _capture(self, module: nn.Module, shapes: tuple[tuple[int, ...], ...], sources: Sequence[Source]
                 ) -> CapturedProgram:
        if self._pool is None:
            self._pool = self.capture.new_pool(self.device)
        inputs = tuple(torch.empty(shape, device=self.device, dtype=self.dtype) for shape in shapes)
        for buffer, source in zip(inputs, sources):
            fill(buffer, source)
        graph, outputs = self.capture(module, inputs, self._pool)
        self.captures += 1
        return CapturedProgram(shapes, inputs, outputs, graph)

    def _run_encode(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._replay("encode", lambda: EncodeFrameProgram(self.model), (image,))

    def _run_temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        # every field of a temporal model's FrameCache is set (typed optional for per-frame models)
        sources = cast(tuple[Source, ...], (current.features, current.coarse, current.probs, current.logits,
                                            [r.kv for r in refs], [r.coarse for r in refs], [r.probs for r in refs]))
        return self._replay("temporal", lambda: TemporalStepProgram(self.model), sources)[0]


__all__ = ["CapturedProgram", "CudaGraphBackend", "CudaGraphCapture", "GraphCapture"]
