"""The temporal step's fused custom ops (DSSA's difference signals and stage-2 query, the gated upsampling of
the temporal correction) and their Triton kernels compute what the plain ops compute, and the model takes them exactly
where the dispatch tables say."""
from __future__ import annotations

import collections
import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sdcpc_core.ops.gated_upsample as gated
import sdcpc_core.ops.perceptual_difference as signals
import sdcpc_core.ops.pooled_softmax as pooled
import sdcpc_core.ops.query_norm as query_norm
import sdcpc_core.ops.window_attention as fused_switch
from sdcpc_core.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
FUSED_OPS = ("pooled_softmax", "difference_signals", "upsample_add_layer_norm", "gated_upsample_add")


def _inputs(k: int, r: int, h: int, w: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, k, h, w, generator=g).mul(3).softmax(1)
    q = torch.randn(batch, r, k, h, w, generator=g).mul(3).softmax(2)
    q[:, 0, :, 0, 0] = p[:, :, 0, 0]  # one identical position: exactly no difference there
    return p, q, torch.randn(1, 2, 1, 1, generator=g), torch.randn(1, generator=g)


def test_reference_signals_are_the_difference_scores_and_gate():
    p, q, weight, bias = _inputs(19, 3, 4, 5)
    scores, gate = signals.reference_difference_signals(p, q, weight, bias)
    difference = signals.perceptual_difference(p, q)
    assert scores.dtype == torch.float32 and scores.shape == (2, 3 * 4 * 5) and gate.shape == (2, 1, 4, 5)
    assert torch.equal(scores, signals.selection_scores(difference))
    logit = weight[0, 0] * difference.mean(1) + weight[0, 1] * difference.amax(1) + bias
    torch.testing.assert_close(gate[:, 0], torch.sigmoid(logit))
    assert difference[:, 0, 0, 0].abs().max() < 1e-5 and (scores[:, 0] < 1 / 256).all()


def test_custom_op_on_cpu_equals_the_reference_and_has_a_fake_kernel():
    p, q, weight, bias = _inputs(7, 2, 3, 4)
    got = torch.ops.sdcpc.difference_signals(p, q, weight, bias)
    want = signals.reference_difference_signals(p, q, weight, bias)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.sdcpc.difference_signals(*(mode.from_tensor(t) for t in (p, q, weight, bias)))
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in want]


def _gated_inputs(seed: int = 0, batch: int = 2, k: int = 5, size: tuple[int, int] = (15, 21)):
    """logits at 1/4 cropped to ``size``, correction at 1/8 and gate at 1/32 of a padded map."""
    g = torch.Generator().manual_seed(seed)
    h8, w8 = (4 * -(-4 * n // 32) for n in size)  # 1/8 of the image padded to a multiple of 32
    return (torch.randn(batch, k, *size, generator=g), torch.randn(batch, k, h8, w8, generator=g),
            torch.rand(batch, 1, h8 // 4, w8 // 4, generator=g))


def test_gated_upsample_reference_is_the_gate_weighted_upsampled_correction():
    logits, correction, gate = _gated_inputs()
    got = gated.reference_gated_upsample_add(logits, correction, gate)
    gate8 = torch.nn.functional.interpolate(gate, size=correction.shape[-2:], mode="bilinear")
    up = torch.nn.functional.interpolate(correction * gate8, size=(2 * correction.shape[-2], 2 * correction.shape[-1]),
                                         mode="bilinear")
    torch.testing.assert_close(got, logits + up[..., :logits.shape[-2], :logits.shape[-1]])
    op = torch.ops.sdcpc.gated_upsample_add(logits, correction, gate)
    assert torch.equal(op, got)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.sdcpc.gated_upsample_add(*(mode.from_tensor(t) for t in (logits, correction, gate)))
    assert fake.shape == got.shape and fake.dtype == got.dtype


def _query_inputs(seed: int = 0, batch: int = 2, channels: int = 24, coarse: tuple[int, int] = (2, 3)):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, coarse[0] * coarse[1], channels, generator=g)  # stage 1's token layout
    context = tokens.transpose(1, 2).reshape(batch, channels, *coarse)
    features = torch.randn(batch, channels, 4 * coarse[0], 4 * coarse[1], generator=g)
    return context, features, torch.randn(channels, generator=g), torch.randn(channels, generator=g), 1e-6


def test_query_norm_reference_is_layer_norm_of_the_upsampled_sum():
    context, features, weight, bias, eps = _query_inputs()
    got = query_norm.reference_upsample_add_layer_norm(context, features, weight, bias, eps)
    summed = features + torch.nn.functional.interpolate(context, size=features.shape[-2:], mode="bilinear")
    want = torch.nn.functional.layer_norm(summed.permute(0, 2, 3, 1), (24,), weight, bias, eps).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want)
    assert got.stride()[1] == 1  # channels-last, as LayerNorm2d gives it
    op = torch.ops.sdcpc.upsample_add_layer_norm(context, features, weight, bias, eps)
    assert torch.equal(op, got) and op.stride() == got.stride()
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = torch.ops.sdcpc.upsample_add_layer_norm(*(mode.from_tensor(t) for t in (context, features, weight,
                                                                                         bias)), eps)
    assert fake.shape == got.shape and fake.stride() == got.stride()


def test_pooled_softmax_reference_and_op():
    logits = torch.randn(2, 7, 16, 24, generator=torch.Generator().manual_seed(0)) * 4
    got = pooled.reference_pooled_softmax(logits, 8)
    torch.testing.assert_close(got, torch.nn.functional.avg_pool2d(torch.softmax(logits, 1), 8))
    assert torch.equal(torch.ops.sdcpc.pooled_softmax(logits, 8), got)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        assert torch.ops.sdcpc.pooled_softmax(mode.from_tensor(logits), 8).shape == got.shape


def _temporal_logits(model, images):
    with torch.inference_mode():
        refs = [model.encode_frame(image).without_logits() for image in images[:-1]]
        return model.temporal_step(model.encode_frame(images[-1]), refs)


def test_model_takes_the_custom_op_where_routed_and_predicts_the_same(monkeypatch):
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=8).eval()
    with torch.no_grad():
        model.dssa.gamma.fill_(0.5)
        model.dssa.gate.conv.weight.copy_(torch.tensor([[[[1.5]], [[-2.0]]]]))
    images = [torch.randn(1, 3, 64, 96) for _ in range(4)]
    plain = _temporal_logits(model, images)
    monkeypatch.setattr(fused_switch, "_routes_to_custom_op", lambda device: True)  # as for CUDA tensors
    op_calls = []
    for name in FUSED_OPS:
        op = getattr(torch.ops.sdcpc, name)
        monkeypatch.setattr(torch.ops.sdcpc, name, lambda *a, op=op, name=name: op_calls.append(name) or op(*a))
    routed = _temporal_logits(model, images)
    # one pooled softmax per encoded frame, the others once per temporal step (on the CPU each runs its plain ops)
    assert collections.Counter(op_calls) == {"pooled_softmax": len(images), **{name: 1 for name in FUSED_OPS[1:]}}
    torch.testing.assert_close(routed, plain, atol=1e-5, rtol=1e-5)
    with fused_switch.use_fused_window_attention(False):  # the switch turns the ops off too
        _temporal_logits(model, images)
    assert len(op_calls) == len(images) + len(FUSED_OPS) - 1


def test_training_takes_the_plain_ops_so_the_gate_learns(monkeypatch):
    """Autograd needs the plain ops: the custom ops have no backward. Only the class probabilities, taken from
    detached logits, may still use their op."""
    monkeypatch.setattr(fused_switch, "_routes_to_custom_op", lambda device: True)
    op_calls = []
    for name in FUSED_OPS:
        op = getattr(torch.ops.sdcpc, name)
        monkeypatch.setattr(torch.ops.sdcpc, name, lambda *a, op=op, name=name: op_calls.append(name) or op(*a))
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=8).train()
    with torch.no_grad():
        model.dssa.gamma.fill_(0.5)
    out = model(torch.randn(1, 3, 3, 64, 96))
    out.temporal_logits.sum().backward()
    assert set(op_calls) == {"pooled_softmax"} and model.dssa.gate.conv.weight.grad is not None


def test_autocast_takes_the_plain_ops(monkeypatch):
    """Training's mixed precision keeps autocast's per-operator dtypes (on CUDA its softmax is float32)."""
    monkeypatch.setattr(fused_switch, "_routes_to_custom_op", lambda device: True)
    op_calls = []
    op = torch.ops.sdcpc.pooled_softmax
    monkeypatch.setattr(torch.ops.sdcpc, "pooled_softmax", lambda *a: op_calls.append(1) or op(*a))
    logits = torch.randn(1, 5, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled.pooled_softmax(logits, 8)
    assert op_calls == []
    pooled.pooled_softmax(logits, 8)
    assert op_calls == [1]


# ---------------------------------------------------------------------------- Triton (interpreter)
_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import triton
    from sdcpc_core.ops.perceptual_difference import reference_difference_signals, triton_difference_signals

    results = []
    for k, r, h, w, batch in [(19, 3, 4, 7, 2), (124, 2, 3, 5, 1), (5, 1, 2, 2, 1), (200, 3, 5, 9, 1)]:
        g = torch.Generator().manual_seed(len(results))
        p = torch.randn(batch, k, h, w, generator=g).mul(3).softmax(1)
        q = torch.randn(batch, r, k, h, w, generator=g).mul(3).softmax(2)
        q[:, -1] = p  # a duplicated frame (cold start): differences of 0, ties broken by position
        weight, bias = torch.randn(1, 2, 1, 1, generator=g), torch.randn(1, generator=g)
        got = triton_difference_signals(p, q, weight, bias)
        want = reference_difference_signals(p, q, weight, bias)
        results.append({"op": "difference_signals", "case": [k, r, h, w, batch],
                        "same_layout": all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(got, want)),
                        "same_order": torch.equal(*(s[0].argsort(dim=1, stable=True) for s in (got, want))),
                        "err": max((a - b).abs().max().item() for a, b in zip(got, want)), "tol": 1e-6})
    from sdcpc_core.ops.gated_upsample import reference_gated_upsample_add, triton_gated_upsample_add

    for batch, k, size, corr, coarse in [(2, 5, (15, 21), (8, 12), (2, 3)), (1, 3, (16, 24), (8, 12), (2, 3)),
                                         (1, 2, (7, 8), (4, 4), (1, 1))]:
        g = torch.Generator().manual_seed(len(results))
        logits, correction = torch.randn(batch, k, *size, generator=g), torch.randn(batch, k, *corr, generator=g)
        gate = torch.rand(batch, 1, *coarse, generator=g)
        got = triton_gated_upsample_add(logits, correction, gate)
        want = reference_gated_upsample_add(logits, correction, gate)
        results.append({"op": "gated_upsample_add", "case": [batch, k, *size],
                        "same_layout": got.shape == want.shape and got.dtype == want.dtype, "same_order": True,
                        "err": (got - want).abs().max().item(), "tol": 1e-5})
    from sdcpc_core.ops.query_norm import reference_upsample_add_layer_norm, triton_upsample_add_layer_norm

    for batch, channels, coarse in [(2, 24, (2, 3)), (1, 256, (3, 5)), (1, 5, (1, 1))]:
        g = torch.Generator().manual_seed(len(results))
        tokens = torch.randn(batch, coarse[0] * coarse[1], channels, generator=g)
        context = tokens.transpose(1, 2).reshape(batch, channels, *coarse)  # channels-last, as stage 1 gives it
        features = torch.randn(batch, channels, 4 * coarse[0], 4 * coarse[1], generator=g)
        weight, bias = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
        got = triton_upsample_add_layer_norm(context, features, weight, bias, 1e-6)
        want = reference_upsample_add_layer_norm(context, features, weight, bias, 1e-6)
        results.append({"op": "upsample_add_layer_norm", "case": [batch, channels, *coarse],
                        "same_layout": got.shape == want.shape and got.stride() == want.stride(), "same_order": True,
                        "err": (got - want).abs().max().item(), "tol": 2e-5})
    from sdcpc_core.ops.pooled_softmax import reference_pooled_softmax, triton_pooled_softmax

    for batch, k, size, pool in [(2, 19, (16, 24), 8), (1, 124, (8, 16), 8), (1, 3, (4, 6), 2)]:
        g = torch.Generator().manual_seed(len(results))
        logits = torch.randn(batch, k, *size, generator=g) * 4
        got, want = triton_pooled_softmax(logits, pool), reference_pooled_softmax(logits, pool)
        results.append({"op": "pooled_softmax", "case": [batch, k, *size, pool],
                        "same_layout": got.shape == want.shape and got.dtype == want.dtype, "same_order": True,
                        "err": (got - want).abs().max().item(), "tol": 1e-6})
    print(json.dumps({"triton": triton.__version__, "results": results}))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: the Triton kernel tests need it")
def test_triton_kernels_match_the_plain_ops_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"triton {report['triton']} interpreter")
    for result in report["results"]:
        assert result["same_layout"] and result["same_order"] and result["err"] < result["tol"], result


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_kernel_matches_the_plain_ops(dtype):
    p, q, weight, bias = _inputs(124, 3, 15, 27)
    got = torch.ops.sdcpc.difference_signals(*(t.cuda().to(dtype) for t in (p, q, weight, bias)))
    want = signals.reference_difference_signals(p, q, weight, bias)  # float32 on the CPU: no TF32 convolution
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    # A difference within rounding of a multiple of 1/256 may land on either side of it: one quantum, rarely.
    jump = (got[0].cpu() - want[0]).abs()
    assert jump.max() <= 1 / 256 + 1e-6 and (jump > 1e-6).float().mean() < (0.05 if dtype == torch.float16 else 0.01)
    torch.testing.assert_close(got[1].cpu().float(), want[1], atol=2e-3 if dtype == torch.float16 else 1e-6,
                               rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_gated_upsample_kernel_matches_the_plain_ops(dtype):
    logits, correction, gate = (t.cuda().to(dtype) for t in _gated_inputs(k=124, size=(120, 214)))
    got = torch.ops.sdcpc.gated_upsample_add(logits, correction, gate)
    want = gated.reference_gated_upsample_add(logits.float(), correction.float(), gate.float())
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, atol=1e-2 if dtype == torch.float16 else 1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_query_norm_and_pooled_softmax_kernels_match_the_plain_ops(dtype):
    context, features, weight, bias, eps = (t.cuda().to(dtype) if isinstance(t, torch.Tensor) else t
                                            for t in _query_inputs(channels=256, coarse=(15, 27)))
    got = torch.ops.sdcpc.upsample_add_layer_norm(context, features, weight, bias, eps)
    want = query_norm.reference_upsample_add_layer_norm(*(t.float() for t in (context, features, weight, bias)), eps)
    assert got.dtype == dtype and got.stride() == want.stride()
    torch.testing.assert_close(got.float(), want, atol=2e-2 if dtype == torch.float16 else 1e-4, rtol=0)
    logits = (torch.randn(1, 124, 120, 216, device="cuda") * 4).to(dtype)
    got = torch.ops.sdcpc.pooled_softmax(logits, 8)
    torch.testing.assert_close(got.float(), pooled.reference_pooled_softmax(logits.float(), 8),
                               atol=2e-3 if dtype == torch.float16 else 1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")
def test_cuda_model_with_fused_ops_predicts_as_without():
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", 5, coarse_tokens=8).eval().cuda()
    with torch.no_grad():
        model.dssa.gamma.fill_(0.5)
    images = [torch.randn(1, 3, 64, 96, device="cuda") for _ in range(4)]
    with torch.backends.cudnn.flags(allow_tf32=False):  # the plain ops' convolutions in full float32
        with fused_switch.use_fused_window_attention(True):
            fused = _temporal_logits(model, images)
        with fused_switch.use_fused_window_attention(False):
            plain = _temporal_logits(copy.deepcopy(model), images)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)
