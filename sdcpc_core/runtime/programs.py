"""Export-path wrappers around ``SDCPC``: flat tensor inputs and outputs, static shapes.

The streaming runtime splits the model into two programs that exchange plain tensors:

* ``EncodeFrameProgram``: the static branch of one frame, ``image (1, 3, H, W)`` -> the
  ``FrameCache`` tensors named in ``ENCODE_OUTPUTS`` (``PER_FRAME_OUTPUTS`` for the per-frame
  SegFormer baselines, which only produce logits);
* ``TemporalStepProgram``: the temporal step of the target frame given ``R`` cached references
  stacked on dim 1 (inputs named in ``TEMPORAL_INPUTS``) -> the temporal logits (``TEMPORAL_OUTPUTS``).

Every shape, including the number of references, is fixed when the program is exported, so the
graphs contain no symbolic or data-dependent sizes (what ONNX and TensorRT builders want).
``export_programs`` exports both with ``torch.export``; ``static_shape_problems`` /
``assert_static`` check an exported program for symbolic shapes.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.sdcpc import SDCPC, SIZE_MULTIPLE, FrameCache

ENCODE_OUTPUTS: tuple[str, ...] = ("features", "kv", "coarse", "probs", "logits")
PER_FRAME_OUTPUTS: tuple[str, ...] = ("logits",)
TEMPORAL_INPUTS: tuple[str, ...] = ("features", "coarse", "probs", "logits", "ref_kv", "ref_coarse", "ref_probs")
# Distinct from the input "logits" (the static logits): ONNX needs unique value names.
TEMPORAL_OUTPUTS: tuple[str, ...] = ("temporal_logits",)
# Version of what ``export_programs`` captures, part of the ONNX and TensorRT cache keys: bump it when
# the exported computation changes, even if its results do not, so that cached graphs and engines of
# the older form are rebuilt. 2: head projections folded into the fusion, window attention in tiles.
EXPORT_FORMAT = 2


def encode_output_names(model: SDCPC) -> tuple[str, ...]:
    """Names of ``EncodeFrameProgram(model)``'s outputs, in order."""
    return ENCODE_OUTPUTS if model.is_temporal else PER_FRAME_OUTPUTS


class EncodeFrameProgram(nn.Module):
    """``image (1, 3, H, W)`` (normalised) -> tuple of the tensors named by ``encode_output_names``."""

    def __init__(self, model: SDCPC) -> None:
        super().__init__()
        self.model = model
        self.output_names = encode_output_names(model)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.model.encode_frame(image)
        return tuple(getattr(cache, name) for name in self.output_names)


class TemporalStepProgram(nn.Module):
    """Temporal step on flat tensors (``TEMPORAL_INPUTS``) -> temporal logits ``(1, K, ceil(H/4), ceil(W/4))``.

    ``features``, ``coarse``, ``probs`` and ``logits`` are the target frame's encode outputs;
    ``ref_kv``, ``ref_coarse`` and ``ref_probs`` are the references' ``kv``, ``coarse`` and
    ``probs`` stacked on dim 1 (oldest first), as ``stack_references`` does.
    """

    def __init__(self, model: SDCPC) -> None:
        super().__init__()
        if not model.is_temporal:
            raise ValueError("TemporalStepProgram needs a temporal SD-CPC model; the per-frame baseline "
                             f"({model.config.backbone}, temporal=False) has no temporal step: its encode "
                             "program's logits are final")
        self.model = model

    def forward(
        self, features: torch.Tensor, coarse: torch.Tensor, probs: torch.Tensor, logits: torch.Tensor,
        ref_kv: torch.Tensor, ref_coarse: torch.Tensor, ref_probs: torch.Tensor,
    ) -> torch.Tensor:
        current = FrameCache(features, None, coarse, probs, logits)
        attended, gate = self.model.temporal_features(current, ref_kv, ref_coarse, ref_probs)
        return self.model.temporal_logits(current, attended, gate)


def example_inputs(model: SDCPC, height: int, width: int, num_refs: int = 3) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example inputs of each program for one ``height x width`` image (shapes from an eager run)."""
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, height, width, device=device)
    inputs: dict[str, tuple[torch.Tensor, ...]] = {"encode": (image,)}
    if model.is_temporal:
        with torch.no_grad():
            cache = model.encode_frame(image)
        assert cache.features is not None and cache.kv is not None  # a temporal model's encode_frame sets all
        assert cache.coarse is not None and cache.probs is not None and cache.logits is not None

        def refs(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(1).expand(-1, num_refs, *t.shape[1:]).contiguous()

        inputs["temporal"] = (cache.features, cache.coarse, cache.probs, cache.logits,
                              refs(cache.kv), refs(cache.coarse), refs(cache.probs))
    return inputs


def export_programs(
    model: SDCPC, height: int, width: int, num_refs: int = 3, strict: bool = True,
) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` of the eval model's programs for one image size and ``num_refs`` references.

    Returns ``{"encode": ...}`` and, for temporal models, ``"temporal"``. The model is switched to
    eval mode (and left there); every shape is static.
    """
    if num_refs < 1:
        raise ValueError(f"num_refs must be >= 1, got {num_refs}")
    if min(height, width) < SIZE_MULTIPLE:
        raise ValueError(f"height and width must be >= {SIZE_MULTIPLE}, got {height}x{width}")
    model.eval()
    inputs = example_inputs(model, height, width, num_refs)
    programs: dict[str, nn.Module] = {"encode": EncodeFrameProgram(model)}
    if model.is_temporal:
        programs["temporal"] = TemporalStepProgram(model)
    with torch.no_grad():
        return {name: torch.export.export(program, inputs[name], strict=strict)
                for name, program in programs.items()}


def static_shape_problems(program: torch.export.ExportedProgram) -> list[str]:
    """Nodes of ``program`` whose value is symbolic or has a symbolic shape; empty when fully static."""
    problems = []

    def check(node_name: str, value) -> None:
        if isinstance(value, (list, tuple)):
            for item in value:
                check(node_name, item)
        elif isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            problems.append(f"{node_name}: symbolic value {value}")
        elif isinstance(value, torch.Tensor) and not all(type(size) is int for size in value.shape):
            problems.append(f"{node_name}: shape {tuple(value.shape)}")

    for node in program.graph.nodes:
        check(node.name, node.meta.get("val"))
    return problems


def assert_static(program: torch.export.ExportedProgram) -> None:
    """Raises ``AssertionError`` listing the nodes with symbolic shapes, if any."""
    problems = static_shape_problems(program)
    if problems:
        raise AssertionError(f"{len(problems)} node(s) with symbolic shapes: " + "; ".join(problems[:10]))
