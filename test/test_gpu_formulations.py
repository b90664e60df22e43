"""The formulations a GPU frame takes (fewer kernels) compute what the direct forms compute, and
constants reused across frames follow the weights they are derived from."""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.models import build_model
from sdcpc_core.models.layers import conv_on_tokens, grid_pool_tokens, inference_constant, mean_pool2x2
from sdcpc_core.ops.perceptual_difference import perceptual_difference, selection_scores

ROOT = Path(__file__).resolve().parent.parent


def _direct_js(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Jensen-Shannon / ln 2 as the two KL terms against the mixture."""
    p, q = p.unsqueeze(1).clamp_min(eps), q.clamp_min(eps)
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(2) + 0.5 * (q * (q / m).log()).sum(2)
    return (js / math.log(2.0)).clamp(0.0, 1.0)


def test_perceptual_difference_equals_the_kl_form():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 19, 6, 7, generator=g).mul(3).softmax(1)
    q = torch.randn(2, 3, 19, 6, 7, generator=g).mul(3).softmax(2)
    q[:, 0] = p  # identical frames: exactly no difference
    expected = _direct_js(p, q)
    got = perceptual_difference(p, q)
    assert torch.allclose(got, expected, atol=2e-5)
    assert got[:, 0].abs().max() < 1e-5


def test_grid_pool_tokens_general_path_matches_adaptive_pooling_and_its_gradient():
    x = torch.randn(2, 5, 13, 22, dtype=torch.float64, requires_grad=True)  # autograd: the dense product
    grids = (1, 2, 4, 8)
    tokens = grid_pool_tokens(x, grids)
    expected = torch.cat([F.adaptive_avg_pool2d(x, g).flatten(2).transpose(1, 2) for g in grids], dim=1)
    assert tokens.shape == (2, sum(g * g for g in grids), 5)
    assert torch.allclose(tokens, expected, atol=1e-12)
    weights = torch.randn_like(expected)
    (grad,) = torch.autograd.grad((tokens * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    with torch.inference_mode():  # eager CPU inference: the separable products, same values
        assert torch.allclose(grid_pool_tokens(x.detach(), grids), expected.detach(), atol=1e-12)


def test_mean_pool2x2_general_path_is_avg_pool():
    x = torch.randn(1, 4, 6, 10, requires_grad=True)
    assert torch.equal(mean_pool2x2(x), F.avg_pool2d(x, 2))


def test_selection_scores_rank_like_the_fresh_tie_break():
    difference = torch.rand(1, 3, 4, 5)
    difference[0, 1] = difference[0, 2]  # ties between references
    first = selection_scores(difference)
    again = selection_scores(difference)  # cached tie-breakers
    assert torch.equal(first, again)
    order = first.argsort(descending=True)[0]
    quantised = torch.floor(difference.flatten(1) * 256)[0]
    assert (quantised[order][:-1] >= quantised[order][1:]).all()


class _Owner(torch.nn.Linear):
    def folded(self):
        self.calls += 1
        return self.weight * 2


def test_inference_constant_is_reused_and_follows_the_weights():
    owner = _Owner(3, 2)
    owner.calls = 0
    with torch.inference_mode():
        first = inference_constant(owner, "w2", owner.folded, owner.weight)
        assert inference_constant(owner, "w2", owner.folded, owner.weight) is first
        assert owner.calls == 1
    with torch.no_grad():
        owner.weight.add_(1.0)  # an in-place update (load_state_dict, an optimiser step)
    with torch.inference_mode():
        assert torch.equal(inference_constant(owner, "w2", owner.folded, owner.weight), owner.weight * 2)
    assert owner.calls == 2
    owner.double()  # new storage and dtype
    with torch.inference_mode():
        assert inference_constant(owner, "w2", owner.folded, owner.weight).dtype == torch.float64
    assert owner.calls == 3
    with torch.enable_grad():  # autograd: computed afresh every time, gradients flow
        out = inference_constant(owner, "w2", owner.folded, owner.weight)
        assert out.requires_grad
        inference_constant(owner, "w2", owner.folded, owner.weight)
    assert owner.calls == 5


def test_streaming_model_follows_new_weights_after_its_first_frame():
    """Folded weights cached by one frame must not outlive a weight load."""
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=4).eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for b in other.buffers():
            if b.is_floating_point():
                b.mul_(1.1)
    image = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        refs = [model.encode_frame(image).without_logits()]
        model.temporal_step(model.encode_frame(image), refs)  # fills the caches
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        got = model.temporal_step(model.encode_frame(image), [model.encode_frame(image).without_logits()])
        expected = other.temporal_step(other.encode_frame(image), [other.encode_frame(image).without_logits()])
    assert torch.allclose(got, expected, atol=1e-5)


def _op_count_module():
    spec = importlib.util.spec_from_file_location("op_count", ROOT / "bench" / "op_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ["gpu", "cpu"])
def test_op_count_counts_operators_per_part_and_the_window_op_once(path):
    op_count = _op_count_module()
    sdcpc = op_count.summarise(op_count.count_frame("sdcpc_b0", (64, 96), 5, path))
    segformer = op_count.summarise(op_count.count_frame("segformer_b0", (64, 96), 5, path))
    assert sdcpc["operators"][op_count.WINDOW_OP] == 1
    assert set(sdcpc["parts"]) >= {"backbone", "ssea", "dssa"} and "ssea" not in segformer["parts"]
    assert sdcpc["parts"]["backbone"] == segformer["parts"]["backbone"]
    unfused = op_count.summarise(op_count.count_frame("sdcpc_b0", (64, 96), 5, path, fused_window=False))
    assert unfused["total"] > sdcpc["total"]
    if path == "gpu":  # guards the kernel count of SD-CPC's own parts on the GPU path
        assert sdcpc["total"] <= op_count.GOAL * segformer["total"], (sdcpc, segformer)


def test_inference_constant_built_in_inference_mode_serves_training_through_frozen_weights():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    tokens = torch.randn(1, 16, 4)
    with torch.inference_mode():
        conv_on_tokens(conv, tokens, 4, 4)  # fills the cache with a channels-last weight
    conv.requires_grad_(False)  # a frozen layer in fine-tuning
    x = tokens.clone().requires_grad_(True)
    conv_on_tokens(conv, x, 4, 4).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_inference_constant_of_inference_tensors_and_replaced_weights():
    owner = _Owner(3, 2)
    owner.calls = 0
    with torch.inference_mode():
        inference = torch.randn(2, 3)
        assert torch.equal(inference_constant(owner, "w", lambda: inference * 2, inference), inference * 2)
    with torch.inference_mode():
        first = inference_constant(owner, "w2", owner.folded, owner.weight)
    owner.weight = torch.nn.Parameter(owner.weight.detach())  # a new object on the same storage and version
    with torch.inference_mode():
        second = inference_constant(owner, "w2", owner.folded, owner.weight)
    assert owner.calls == 2 and torch.equal(first, second)  # recomputed for the new object


def _frame_outputs(model, images):
    refs = [model.encode_frame(image).without_logits() for image in images[:-1]]
    current = model.encode_frame(images[-1])
    return [current.features, current.kv, current.probs, current.logits, model.temporal_step(current, refs)]


def test_a_frame_on_the_general_path_and_under_autograd_equals_the_cpu_path():
    """The static logits classifier(F4 + up2(A)), SSEA's tokens written in place and the fused difference
    signals (a GPU frame) give what the CPU formulations and the autograd ones give."""
    op_count = _op_count_module()
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=8).eval()
    with torch.no_grad():
        model.ssea.gamma.fill_(0.3)
        model.dssa.gamma.fill_(0.5)
    images = [torch.randn(1, 3, 64, 96) for _ in range(4)]
    with torch.inference_mode():
        cpu = _frame_outputs(model, images)
        with op_count.general_formulations():
            general = _frame_outputs(model, images)
    with torch.enable_grad():
        autograd = _frame_outputs(model, images)
    assert autograd[-1].requires_grad
    for name, a, b, c in zip(("features", "kv", "probs", "logits", "temporal"), cpu, general, autograd):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(c.detach(), a, atol=1e-5, rtol=1e-5, msg=name)
