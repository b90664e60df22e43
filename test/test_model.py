"""SD-CPC model: variants, shapes, streaming equality, zero-initialised temporal branch, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.models import VARIANTS, FrameCache, build_model, list_models
from sdcpc_core.models.decode_head import SegFormerHead
from sdcpc_core.models.layers import adaptive_avg_pool, mean_pool2x2
from sdcpc_core.models.resnet import DilatedResNet
from sdcpc_core.ops.perceptual_difference import perceptual_difference, selection_scores


def randomise_temporal_scales(model, seed=0):
    """Makes the zero-initialised residual scales non-zero so that the temporal path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.zero_initialised_scales():
            parameter.copy_(torch.randn(parameter.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def sdcpc_b0():
    torch.manual_seed(0)
    return randomise_temporal_scales(build_model("sdcpc_b0", 7, coarse_tokens=5)).eval()


def test_variant_names():
    names = list_models()
    assert names == list(VARIANTS)
    expected = {f"{p}_b{i}" for p in ("sdcpc", "segformer") for i in range(6)} | {"sdcpc_r101"}
    assert set(names) == expected


@pytest.mark.parametrize("variant, millions", [
    ("segformer_b0", 3.8), ("segformer_b1", 13.7), ("segformer_b2", 27.5),
    ("segformer_b3", 47.3), ("segformer_b4", 64.1), ("segformer_b5", 84.7),
])
def test_segformer_parameter_counts_match_the_segformer_paper(variant, millions):
    """SegFormer paper, ADE20K (150 classes) model sizes."""
    with torch.device("meta"):
        model = build_model(variant, 150)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.02)


def test_resnet101_backbone_has_torchvision_parameter_count():
    with torch.device("meta"):
        backbone = DilatedResNet()
    # torchvision resnet101 has 44,549,160 parameters, 2,049,000 of them in the ImageNet classifier.
    assert sum(p.numel() for p in backbone.parameters()) == 44_549_160 - 2_049_000


def test_resnet101_is_dilated_to_output_stride_8():
    backbone = DilatedResNet((1, 1, 1, 1)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 24), (512, 8, 12), (1024, 8, 12), (2048, 8, 12)]


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model variant 'sdcpc_b9'.*sdcpc_b0.*segformer_b5"):
        build_model("sdcpc_b9", 19)


def test_unknown_and_invalid_options_name_the_field():
    with pytest.raises(ValueError, match=r"unknown model option.*windw.*valid options.*window"):
        build_model("sdcpc_b0", 19, windw=7)
    with pytest.raises(ValueError, match=r"coarse_tokens must be in 1\.\.3840, got 5000"):
        build_model("sdcpc_b0", 19, coarse_tokens=5000)
    with pytest.raises(ValueError, match="window must be an odd integer"):
        build_model("sdcpc_b0", 19, window=4)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        build_model("sdcpc_b0", 0)


def test_clip_shapes_with_a_size_that_needs_padding(sdcpc_b0):
    frames = torch.randn(2, 3, 3, 70, 100)
    with torch.no_grad():
        out = sdcpc_b0.forward_clip(frames)
    assert out.static_logits.shape == (2, 3, 7, 18, 25)
    assert out.temporal_logits.shape == (2, 7, 18, 25)
    assert out.embeddings.shape == (2, 256, 9, 13)
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(2, 9, 13), atol=1e-5)
    assert torch.isfinite(out.temporal_logits).all()


@pytest.mark.parametrize("frames_in_clip", [4, 1])
def test_streaming_equals_clip(sdcpc_b0, frames_in_clip):
    torch.manual_seed(1)
    frames = torch.randn(2, frames_in_clip, 3, 64, 96)
    with torch.no_grad():
        clip = sdcpc_b0.forward_clip(frames)
        caches = [sdcpc_b0.encode_frame(frames[:, i]) for i in range(frames_in_clip)]
        refs = [c.without_logits() for c in caches[:-1]] or [caches[-1]]
        streamed = sdcpc_b0.temporal_step(caches[-1], refs)
    assert (streamed - clip.temporal_logits).abs().max() < 1e-5
    # the temporal branch is active: it changes the prediction of the static branch
    assert (clip.temporal_logits - clip.static_logits[:, -1]).abs().max() > 1e-3


def test_coarse_selection_is_active_and_changes_with_references(sdcpc_b0):
    torch.manual_seed(2)
    a, b, c = (torch.randn(1, 3, 64, 96) for _ in range(3))
    with torch.no_grad():
        cur = sdcpc_b0.encode_frame(a)
        one = sdcpc_b0.temporal_step(cur, [sdcpc_b0.encode_frame(b)])
        two = sdcpc_b0.temporal_step(cur, [sdcpc_b0.encode_frame(c)])
    assert (one - two).abs().max() > 1e-4


def test_baseline_is_segformer_and_streaming_is_static():
    torch.manual_seed(0)
    model = build_model("segformer_b0", 5).eval()
    assert not model.is_temporal and not hasattr(model, "dssa")
    frames = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        logits = model(frames[:, -1])
        clip = model.forward_clip(frames)
        cache = model.encode_frame(frames[:, -1])
        streamed = model.temporal_step(cache, [])
    assert logits.shape == (1, 5, 16, 16)
    assert clip.embeddings is None
    assert torch.equal(clip.temporal_logits, logits) and torch.equal(streamed, logits)


@pytest.mark.parametrize("training", [False, True])
def test_head_fusion_equals_segformers_projections_and_concatenated_1x1_convolution(training):
    """SegFormer's head ``relu(bn(conv1x1(cat(up(P_3 c_3), ..., P_0 c_0))))`` with the projections
    folded into the fusion: values and gradients (features and every weight), batch statistics."""
    torch.manual_seed(0)
    head = SegFormerHead((8, 16, 24, 32), 12, 5).double().train(training)
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.normal_()
        head.bn.bias.normal_()
        for linear in head.linear_c:
            linear.bias.normal_()
    features = [torch.randn(2, c, 16 // s, 24 // s, dtype=torch.float64, requires_grad=True)
                for c, s in zip((8, 16, 24, 32), (1, 2, 4, 8))]
    projected = [torch.einsum("bchw,ec->behw", f, linear.weight) + linear.bias.view(1, -1, 1, 1)
                 for f, linear in zip(features, head.linear_c)]
    up = [projected[0]] + [F.interpolate(p, size=(16, 24), mode="bilinear", align_corners=False)
                           for p in projected[1:]]
    reference_bn = torch.nn.BatchNorm2d(12).double().train(training)
    reference_bn.load_state_dict(head.bn.state_dict())
    reference = F.relu(reference_bn(F.conv2d(torch.cat(up[::-1], dim=1), head.linear_fuse.weight)))
    fused = head.fuse(features)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(fused)
    inputs = features + [head.linear_fuse.weight] + [p for linear in head.linear_c for p in linear.parameters()]
    expected = torch.autograd.grad(reference, inputs, grad)
    actual = torch.autograd.grad(fused, inputs, grad)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(head.bn.running_mean, reference_bn.running_mean)  # same batch statistics


def test_ssea_tokens_pooled_before_the_projection_equal_pooled_projected_maps():
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5).double()
    features = [torch.randn(2, c, 48 // s, 72 // s, dtype=torch.float64)
                for c, s in zip(model.backbone.out_channels, (4, 8, 16, 32))]
    pooled = model.ssea.pool(features)
    for level, linear, level_tokens in zip(features, model.decode_head.linear_c, pooled):
        got = linear(level_tokens)
        projected = torch.einsum("bchw,ec->behw", level, linear.weight) + linear.bias.view(1, -1, 1, 1)
        expected = torch.cat([F.adaptive_avg_pool2d(projected, g).flatten(2).transpose(1, 2)
                              for g in model.config.ssea_grids], dim=1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_temporal_classifier_of_the_attended_values_equals_classifying_the_residual():
    """W_t D with D = gamma * gate * proj(a), built or folded: values and gradients (float64)."""
    torch.manual_seed(0)
    model = randomise_temporal_scales(build_model("sdcpc_b0", 7, coarse_tokens=4)).double()
    attended = torch.randn(2, model.config.window_dim, 6, 9, dtype=torch.float64)
    gate = torch.rand(2, 1, 2, 3, dtype=torch.float64)  # at 1/32: 4x coarser than the attended values
    dssa, classifier = model.dssa, model.temporal_classifier
    folded = classifier(attended, dssa.fine.proj, dssa.gamma) * F.interpolate(gate, size=(6, 9), mode="bilinear")
    built = F.conv2d(dssa.residual(attended, gate), classifier.weight)
    torch.testing.assert_close(folded, built, rtol=1e-10, atol=1e-10)
    weights = [classifier.weight, dssa.gamma, dssa.fine.proj.weight, dssa.fine.proj.bias]
    grad = torch.randn_like(folded)
    for a, b in zip(torch.autograd.grad(folded, weights, grad), torch.autograd.grad(built, weights, grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sdcpc_at_initialisation_predicts_what_its_segformer_predicts():
    torch.manual_seed(0)
    segformer = build_model("segformer_b0", 5).eval()
    sdcpc = build_model("sdcpc_b0", 5).eval()
    missing, unexpected = sdcpc.load_state_dict(segformer.state_dict(), strict=False)
    assert not unexpected
    assert all(k.split(".")[0] in {"ssea", "dssa", "temporal_classifier", "projector", "prototypes"} for k in missing)
    frames = torch.randn(1, 4, 3, 64, 96)
    with torch.no_grad():
        expected = segformer(frames[:, -1])
        out = sdcpc.forward_clip(frames)
    assert torch.allclose(out.temporal_logits, expected, atol=1e-5)
    assert torch.allclose(out.static_logits[:, -1], expected, atol=1e-5)


def test_zero_initialised_scales_are_zero():
    """A fresh model's temporal scales and difference gate are zeros (the gate reads 0.5 everywhere), whatever
    the seed, so training, not the draw of the initial weights, sets where DSSA takes from the references."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("sdcpc_b0", 4)
        assert all(torch.count_nonzero(p) == 0 for p in (*model.zero_initialised_scales(), model.dssa.gate.conv.bias))


def test_zero_initialised_scales_still_learn():
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 4, drop_path_rate=0.0, classifier_dropout=0.0).train()
    frames = torch.randn(1, 3, 3, 64, 64)
    labels = torch.randint(0, 4, (1, 64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        out = model.forward_clip(frames)
        logits = F.interpolate(out.temporal_logits, size=(64, 64), mode="bilinear", align_corners=False)
        F.cross_entropy(logits, labels).backward()
        if step == 0:
            assert model.dssa.gamma.grad.abs().sum() > 0 and model.ssea.gamma.grad.abs().sum() > 0
            assert model.dssa.fine.q.weight.grad.abs().sum() == 0  # behind the zero scale
        optimizer.step()
    assert model.dssa.fine.q.weight.grad.abs().sum() > 0


def test_encode_frame_outputs(sdcpc_b0):
    with torch.no_grad():
        cache = sdcpc_b0.encode_frame(torch.randn(1, 3, 64, 96))
    assert isinstance(cache, FrameCache)
    assert cache.features.shape == (1, 256, 8, 12)
    assert cache.kv.shape == (1, 128, 8, 12)
    assert cache.coarse.shape == (1, 256, 2, 3)
    assert cache.probs.shape == (1, 7, 2, 3)
    assert torch.allclose(cache.probs.sum(1), torch.ones(1, 2, 3), atol=1e-5)
    assert cache.without_logits().logits is None


@pytest.mark.parametrize("bad, message", [
    (torch.randn(3, 64, 64), r"rank 3"),
    (torch.randn(1, 4, 64, 64), r"3 colour channels.*got 4"),
    (torch.randn(1, 3, 16, 64), r"at least 32x32 pixels, got 16x64"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"floating-point.*uint8"),
])
def test_bad_images_are_refused_with_a_clear_message(sdcpc_b0, bad, message):
    with pytest.raises(ValueError, match=message):
        sdcpc_b0.encode_frame(bad)


def test_bad_temporal_step_calls(sdcpc_b0):
    with torch.no_grad():
        cur = sdcpc_b0.encode_frame(torch.randn(1, 3, 64, 96))
        other = sdcpc_b0.encode_frame(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="at least one reference"):
        sdcpc_b0.temporal_step(cur, [])
    with pytest.raises(ValueError, match="one size"):
        sdcpc_b0.temporal_step(cur, [other])
    with pytest.raises(ValueError, match="static logits"):
        sdcpc_b0.temporal_step(cur.without_logits(), [cur])
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        sdcpc_b0.forward_clip(torch.randn(1, 3, 64, 64))


def test_perceptual_difference_bounds():
    p = torch.softmax(torch.randn(2, 5, 3, 4), dim=1)
    same = perceptual_difference(p, p.unsqueeze(1))
    assert same.shape == (2, 1, 3, 4) and same.abs().max() < 1e-5
    a = F.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 5).permute(0, 3, 1, 2).float()
    b = F.one_hot(torch.ones(1, 2, 2, dtype=torch.long), 5).permute(0, 3, 1, 2).float()
    assert torch.allclose(perceptual_difference(a, b.unsqueeze(1)), torch.ones(1, 1, 2, 2), atol=1e-4)
    q = torch.softmax(torch.randn(2, 5, 3, 4), dim=1)
    assert torch.allclose(perceptual_difference(p, q.unsqueeze(1)), perceptual_difference(q, p.unsqueeze(1)))


def test_selection_prefers_large_differences_then_newer_references():
    difference = torch.zeros(1, 2, 2, 2)
    difference[0, 0, 1, 1] = 0.9
    difference[0, 1, 0, 0] = 0.5
    order = selection_scores(difference).argsort(descending=True)[0].tolist()
    assert order[:2] == [3, 4]  # (ref 0, pos 3) then (ref 1, pos 0)
    assert order[2:5] == [5, 6, 7]  # ties: the newer reference first, earlier positions first
    noisy = selection_scores(difference + 1e-7)
    assert noisy.argsort(descending=True)[0].tolist() == order


@pytest.mark.parametrize("size, grid", [((15, 27), 8), ((7, 7), 4), ((8, 12), 1), ((5, 3), 2)])
def test_export_friendly_pooling_matches_adaptive_pooling(size, grid):
    x = torch.randn(2, 3, *size)
    pooled = adaptive_avg_pool(x, (grid, 1, 3))
    for out, g in zip(pooled, (grid, 1, 3)):
        assert torch.allclose(out, F.adaptive_avg_pool2d(x, g), atol=1e-6)


@pytest.mark.parametrize("size", [(8, 12), (2, 2), (7, 10), (6, 5)])
def test_mean_pool2x2_matches_avg_pool(size):
    """Even sizes take the pairwise sums, odd ones avg_pool2d; both match it, values and gradients."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    expected = F.avg_pool2d(x, 2)
    out = mean_pool2x2(x)
    assert out.shape == expected.shape and torch.allclose(out, expected)
    grad = torch.randn_like(expected)
    assert torch.allclose(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_selection_ties_stay_resolvable_for_large_maps():
    """3 references of a 1/32 map of 1080x1920 (34 x 60): every token gets a distinct float32 score."""
    scores = selection_scores(torch.full((1, 3, 34, 60), 0.999))
    assert scores.unique().numel() == scores.numel()


def test_cli_size_multiple_matches_the_model():
    from sdcpc_core.models.sdcpc import SIZE_MULTIPLE
    from sdcpc_core.tools import cli

    assert cli.SIZE_MULTIPLE == SIZE_MULTIPLE


def test_switch_off_zeroes_one_branch_and_refuses_what_it_cannot_do():
    model = randomise_temporal_scales(build_model("sdcpc_b0", 5, coarse_tokens=4)).eval()
    baseline = build_model("segformer_b0", 5).eval()
    baseline.load_state_dict(model.state_dict(), strict=False)
    model.switch_off("ssea")
    assert torch.count_nonzero(model.ssea.gamma) == 0 and torch.count_nonzero(model.dssa.gamma) > 0
    frame = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_frame(frame).logits, baseline(frame))  # SSEA off: SegFormer logits
    with pytest.raises(ValueError, match="unknown alignment 'mcp'; choose from ssea, dssa"):
        model.switch_off("mcp")
    with pytest.raises(ValueError, match="needs an SD-CPC model"):
        baseline.switch_off("dssa")
