"""torch.export of the streaming programs: static shapes, and the same outputs as eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdcpc_core.models import build_model
from sdcpc_core.models.layers import ceil_div
from sdcpc_core.models.sdcpc import stack_references
from sdcpc_core.runtime import (
    ENCODE_OUTPUTS,
    PER_FRAME_OUTPUTS,
    TEMPORAL_INPUTS,
    TEMPORAL_OUTPUTS,
    EncodeFrameProgram,
    TemporalStepProgram,
    assert_static,
    export_programs,
    static_shape_problems,
)

# 80 is not a multiple of 32: the programs also cover the padding and the logits crop.
HEIGHT, WIDTH, CLASSES, REFS = 64, 80, 5, 3
COARSE_TOKENS = 4  # < REFS * (64/32) * (96/32) = 18 reference tokens: stage 1 really selects


def _temporal_model(variant: str) -> nn.Module:
    """A model whose temporal part changes the output: the zero-initialised scales set at random."""
    torch.manual_seed(0)
    model = build_model(variant, CLASSES, coarse_tokens=COARSE_TOKENS)
    with torch.no_grad():
        for parameter in (*model.zero_initialised_scales(), model.dssa.gate.conv.bias):
            parameter.normal_()
    return model.eval()


def _images(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, HEIGHT, WIDTH, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module", params=["sdcpc_b0", pytest.param("sdcpc_r101", marks=pytest.mark.slow)])
def exported(request):
    model = _temporal_model(request.param)
    return model, export_programs(model, HEIGHT, WIDTH, num_refs=REFS, strict=True)


def test_temporal_programs_are_static(exported):
    model, programs = exported
    assert set(programs) == {"encode", "temporal"}
    for program in programs.values():
        assert static_shape_problems(program) == []
        assert_static(program)
    # The flat signatures: one image in, the FrameCache tensors out; TEMPORAL_INPUTS in, logits out.
    assert tuple(programs["encode"].graph_signature.user_inputs) == ("image",)
    assert len(programs["encode"].graph_signature.user_outputs) == len(ENCODE_OUTPUTS)
    assert tuple(programs["temporal"].graph_signature.user_inputs) == TEMPORAL_INPUTS
    assert len(programs["temporal"].graph_signature.user_outputs) == len(TEMPORAL_OUTPUTS) == 1
    assert set(TEMPORAL_OUTPUTS).isdisjoint(TEMPORAL_INPUTS)  # ONNX needs unique value names
    # Stage 1 selects reference tokens: the top-k is part of the exported graph.
    assert REFS * ceil_div(HEIGHT, 32) * ceil_div(WIDTH, 32) > model.config.coarse_tokens
    targets = {str(node.target) for node in programs["temporal"].graph.nodes if node.op == "call_function"}
    assert "aten.topk.default" in targets


@torch.no_grad()
def test_encode_program_matches_eager(exported):
    model, programs = exported
    image = _images(1)[0]
    outputs = programs["encode"].module()(image)
    cache = model.encode_frame(image)
    assert len(outputs) == len(ENCODE_OUTPUTS)
    for name, output in zip(ENCODE_OUTPUTS, outputs):
        expected = getattr(cache, name)
        assert output.shape == expected.shape, name
        # The program computes the head's upsampling with F.interpolate, eager CPU inference phase by phase
        # in place (upsample_bilinear_add_): float32 rounding differs, and a random ResNet-101's maps reach
        # 1e5, so the tolerance is relative to each tensor's largest value.
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5 * scale, msg=name)
    assert cache.logits.shape[-2:] == (ceil_div(HEIGHT, 4), ceil_div(WIDTH, 4))


@torch.no_grad()
def test_temporal_program_matches_eager(exported):
    model, programs = exported
    caches = [model.encode_frame(image) for image in _images(REFS + 1, seed=2)]
    current, refs = caches[-1], [c.without_logits() for c in caches[:-1]]
    expected = model.temporal_step(current, refs)
    inputs = (current.features, current.coarse, current.probs, current.logits, *stack_references(refs))
    logits = programs["temporal"].module()(*inputs)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # Meaningful comparison: the temporal part changes the static logits.
    assert (expected - current.logits).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.slow
def test_per_frame_baseline_exports_logits_only():
    torch.manual_seed(0)
    model = build_model("segformer_b0", CLASSES).eval()
    programs = export_programs(model, HEIGHT, WIDTH, strict=True)
    assert set(programs) == {"encode"}
    assert_static(programs["encode"])
    assert EncodeFrameProgram(model).output_names == PER_FRAME_OUTPUTS == ("logits",)
    image = _images(1)[0]
    (logits,) = programs["encode"].module()(image)
    torch.testing.assert_close(logits, model.encode_frame(image).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="temporal"):
        TemporalStepProgram(model)


def test_static_check_reports_symbolic_shapes():
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(nn.Linear(4, 3), (torch.randn(8, 4),), dynamic_shapes=({0: batch},))
    assert static_shape_problems(program)
    with pytest.raises(AssertionError, match="symbolic"):
        assert_static(program)
