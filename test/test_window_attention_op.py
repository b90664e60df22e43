"""Tests for the custom op ``sdcpc::window_attention``, its Triton kernel and the dispatch switch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sdcpc_core.ops as ops
import sdcpc_core.ops.window_attention as dispatch
from sdcpc_core.ops.window_attention import triton as op_module
from sdcpc_core.runtime.tensorrt_plugin import register_tensorrt_plugin

REPO_ROOT = Path(__file__).resolve().parents[1]
OP = torch.ops.sdcpc.window_attention.default
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
NO_TRITON_REASON = "triton is not installed: the Triton kernel tests need it"


def reference(q, k, v, window, dilation=1, scale=None):
    """The dispatcher without the custom op: what the model runs with the fused switch off."""
    return dispatch.window_attention(q, k, v, window, dilation, scale, allow_fused=False)


def _inputs(B, R, h, d, H, W, dtype=torch.float64, seed=0, requires_grad=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, d, H, W, generator=g, dtype=torch.float64)
    k = torch.randn(B, R, h, d, H, W, generator=g, dtype=torch.float64)
    v = torch.randn(B, R, h, d, H, W, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v))


def _call_targets(program: torch.export.ExportedProgram) -> list[str]:
    return [str(node.target) for node in program.graph.nodes if node.op == "call_function"]


class _Model(torch.nn.Module):
    """Calls the public dispatcher, as the model does."""

    def forward(self, q, k, v):
        return dispatch.window_attention(q, k, v, 3, 2)


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Lets the switch route CPU tensors to the custom op (as it does CUDA tensors)."""
    monkeypatch.setattr(dispatch, "_routes_to_custom_op", lambda device: device.type in ("cpu", "cuda"))
    yield


# ---------------------------------------------------------------------------- op vs reference (CPU)
@pytest.mark.parametrize(
    "shape,window,dilation,dtype",
    [
        ((1, 1, 2, 4, 6, 9), 3, 1, torch.float32),
        ((2, 3, 2, 3, 7, 5), 3, 2, torch.float64),
        ((1, 3, 1, 4, 2, 7), 5, 1, torch.float32),  # image shorter than the window
        ((1, 3, 2, 8, 9, 10), 5, 2, torch.bfloat16),
    ],
)
def test_op_equals_reference_on_cpu(shape, window, dilation, dtype):
    q, k, v = _inputs(*shape, dtype=dtype)
    scale = shape[3] ** -0.5
    out = OP(q, k, v, window, dilation, scale)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.equal(out, reference(q, k, v, window, dilation))
    assert torch.equal(ops.fused_window_attention(q, k, v, window, dilation), out)
    assert torch.equal(OP(q, k, v, window, dilation, 0.7), reference(q, k, v, window, dilation, scale=0.7))


def test_gradcheck_float64():
    q, k, v = _inputs(1, 2, 1, 2, 3, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: OP(q, k, v, 3, 2, 0.6), (q, k, v))


def test_gradients_equal_reference():
    q, k, v = _inputs(1, 3, 2, 4, 5, 6, dtype=torch.float32, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(OP(q, k, v, 3, 1, 0.5), (q, k, v), grad_out)
    want = torch.autograd.grad(reference(q, k, v, 3, 1, 0.5), (q, k, v), grad_out)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_opcheck():
    q, k, v = _inputs(1, 2, 1, 2, 3, 4, dtype=torch.float32, requires_grad=True)
    result = torch.library.opcheck(OP, (q, k, v, 3, 2, 0.6))
    assert all(value == "SUCCESS" for value in result.values()), result


def test_bad_inputs_raise_through_op():
    q, k, v = _inputs(1, 1, 2, 4, 5, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^window must"):
        OP(q, k, v, 4, 1, 0.5)
    with pytest.raises(ValueError, match=r"^k and v must have shape"):
        OP(q, k[..., :-1], v[..., :-1], 3, 1, 0.5)


# ---------------------------------------------------------------------------- fake kernel / export
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_kernel_under_fake_tensor_mode(dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 16, 60, 107, dtype=dtype)
        k = torch.empty(2, 3, 4, 16, 60, 107, dtype=dtype)
        out = OP(q, k, k, 7, 1, 0.25)
        assert out.shape == (2, 4, 16, 60, 107) and out.dtype == dtype
        with pytest.raises(ValueError, match="dtype"):
            OP(q, k.float() if dtype != torch.float32 else k.double(), k, 7, 1, 0.25)


class _OpModel(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.ops.sdcpc.window_attention(q, k, v, 5, 2, 0.5)


def test_torch_export_keeps_the_op():
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float16)
    program = torch.export.export(_OpModel(), (q, k, v), strict=True)
    assert _call_targets(program) == ["sdcpc.window_attention.default"]
    node = next(n for n in program.graph.nodes if n.op == "call_function")
    assert tuple(node.meta["val"].shape) == tuple(q.shape) and node.meta["val"].dtype == torch.float16
    # export's default decompositions keep the custom op; decompose_to_reference replaces it
    assert "sdcpc.window_attention.default" in _call_targets(program.run_decompositions())
    plain = op_module.decompose_to_reference(program)
    assert not any("sdcpc" in target for target in _call_targets(plain))
    torch.testing.assert_close(plain.module()(q, k, v), reference(q, k, v, 5, 2, 0.5))


# ---------------------------------------------------------------------------- dispatch switch
def test_switch_is_automatic_by_default_and_cpu_takes_the_reference():
    assert dispatch._FUSED_DEFAULT[0] is None
    assert ops.fused_window_attention_enabled() is dispatch._automatic_from_environment()
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float32)
    assert torch.equal(dispatch.window_attention(q, k, v, 5, 2), reference(q, k, v, 5, 2))
    program = torch.export.export(_Model(), (q, k, v), strict=True)
    targets = _call_targets(program)
    assert not any("sdcpc" in target for target in targets)
    reference_program = torch.export.export(_Reference(), (q, k, v), strict=True)
    assert targets == _call_targets(reference_program)


class _Reference(torch.nn.Module):
    def forward(self, q, k, v):
        return reference(q, k, v, 3, 2)


def test_switch_on_keeps_cpu_tensors_on_the_reference():
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float32)
    with ops.use_fused_window_attention(True):
        assert ops.fused_window_attention_enabled()
        program = torch.export.export(_Model(), (q, k, v), strict=False)
    assert dispatch._FUSED_DEFAULT[0] is None  # the context restored the automatic setting
    assert not any("sdcpc" in target for target in _call_targets(program))


@pytest.fixture
def op_calls(monkeypatch) -> list:
    """Counts the dispatcher's calls of the custom op (one entry per call)."""
    calls = []
    original = dispatch.fused_window_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dispatch, "fused_window_attention", counting)
    return calls


def test_switch_routes_to_the_custom_op(fused_on_cpu, op_calls):
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float32)
    previous = ops.use_fused_window_attention(True)  # plain call: stays on
    try:
        assert previous.previous is None and ops.fused_window_attention_enabled()
        torch.testing.assert_close(dispatch.window_attention(q, k, v, 3, 2), reference(q, k, v, 3, 2))
        assert len(op_calls) == 1
        for strict in (True, False):
            program = torch.export.export(_Model(), (q, k, v), strict=strict)
            assert _call_targets(program) == ["sdcpc.window_attention.default"]
        ops.use_fused_window_attention(False)
        assert not ops.fused_window_attention_enabled()
        before = len(op_calls)
        dispatch.window_attention(q, k, v, 3, 2)
        assert len(op_calls) == before  # switched off: the reference again
    finally:
        ops.use_fused_window_attention(previous.previous)
    assert dispatch._FUSED_DEFAULT[0] is None


def test_automatic_switch_takes_the_op_for_inference_only(fused_on_cpu, op_calls, monkeypatch):
    monkeypatch.setattr(dispatch, "_FUSED_AUTOMATIC", True)
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float32)
    assert ops.fused_window_attention_enabled()
    torch.testing.assert_close(dispatch.window_attention(q, k, v, 3, 2), reference(q, k, v, 3, 2))
    assert len(op_calls) == 1  # inference: the fused op
    q_grad = q.clone().requires_grad_(True)
    out = dispatch.window_attention(q_grad, k, v, 3, 2)
    assert len(op_calls) == 1 and out.grad_fn is not None  # autograd: the reference and its plain backward
    with torch.no_grad():
        dispatch.window_attention(q_grad, k, v, 3, 2)
    assert len(op_calls) == 2  # no gradients recorded: inference again
    program = torch.export.export(_Model(), (q, k, v), strict=False)
    assert not any("sdcpc" in target for target in _call_targets(program))  # exported graphs: plain ops
    monkeypatch.setattr(dispatch, "_FUSED_AUTOMATIC", False)  # as SDCPC_FUSED_WINDOW=0 at import
    assert not ops.fused_window_attention_enabled()
    dispatch.window_attention(q, k, v, 3, 2)
    assert len(op_calls) == 2
    with ops.use_fused_window_attention(True):  # an explicit "on" still wins over the environment
        dispatch.window_attention(q, k, v, 3, 2)
    assert len(op_calls) == 3


@pytest.mark.parametrize("value,expected", [("", True), ("1", True), ("true", True), ("0", False),
                                            ("false", False), (" OFF ", False), ("no", False)])
def test_environment_variable_sets_the_automatic_switch(value, expected, monkeypatch):
    monkeypatch.setenv(dispatch.FUSED_ENV, value)
    assert dispatch._automatic_from_environment() is expected


def test_environment_variable_is_read_at_import():
    env = dict(os.environ, **{dispatch.FUSED_ENV: "0"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code = "import sdcpc_core.ops as ops; print(ops.fused_window_attention_enabled())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_onnx_export_runs_the_reference(fused_on_cpu, monkeypatch):
    pytest.importorskip("onnxscript", reason="onnxscript is needed by the ONNX dynamo exporter")
    q, k, v = _inputs(1, 2, 1, 4, 5, 6, dtype=torch.float32)
    monkeypatch.setattr(dispatch, "fused_window_attention",
                        lambda *a, **kw: pytest.fail("custom op called during ONNX export"))
    with ops.use_fused_window_attention(True):
        onnx_program = torch.onnx.export(_Model(), (q, k, v), f=None, dynamo=True, opset_version=18,
                                         verbose=False)
    op_types = {node.op_type for node in onnx_program.model_proto.graph.node}
    assert "Softmax" in op_types and not any("window" in name.lower() for name in op_types)


def test_register_tensorrt_plugin_reports_a_reason():
    result = register_tensorrt_plugin()
    assert isinstance(result.reason, str) and result.reason
    if importlib.util.find_spec("torch_tensorrt") is None:
        assert not result and "torch_tensorrt" in result.reason


# ---------------------------------------------------------------------------- Triton (interpreter)
_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import triton
    from sdcpc_core.ops.window_attention import window_attention as reference
    from sdcpc_core.ops.window_attention.triton import _triton_forward

    results = []
    # B, R, h, d, H, W, window, dilation, non-contiguous k / v
    for case in [(1, 1, 2, 4, 6, 9, 3, 1, False), (2, 3, 2, 3, 7, 5, 3, 2, False),
                 (1, 3, 1, 16, 5, 11, 5, 2, True), (1, 1, 1, 5, 2, 3, 5, 1, False),
                 (1, 3, 2, 4, 8, 6, 1, 1, False)]:
        B, R, h, d, H, W, window, dilation, strided = case
        g = torch.Generator().manual_seed(len(results))
        q = torch.randn(B, h, d, H, W, generator=g)
        kv = torch.randn(B, R, 2, h, d, H, W, generator=g)
        k, v = (kv[:, :, 0], kv[:, :, 1]) if strided else (kv[:, :, 0].contiguous(), kv[:, :, 1].contiguous())
        out = _triton_forward(q, k, v, window, dilation, d ** -0.5)
        want = reference(q, k, v, window, dilation)
        results.append({"case": list(case), "shape_ok": out.shape == want.shape and out.dtype == want.dtype,
                        "max_err": (out - want).abs().max().item()})
    print(json.dumps({"triton": triton.__version__, "results": results}))
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason=NO_TRITON_REASON)
def test_triton_kernel_matches_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    if proc.returncode != 0 and ("interpret" in proc.stderr.lower() and "not supported" in proc.stderr.lower()):
        pytest.skip(f"this triton has no working interpreter: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"triton {report['triton']} interpreter")  # 3.6 on the GPU machine, newer in the CPU venv
    for result in report["results"]:
        assert result["shape_ok"], result
        assert result["max_err"] < 2e-5, (report["triton"], result)


# ---------------------------------------------------------------------------- CUDA
cuda_triton = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TRITON),
    reason="needs a CUDA device and triton" + ("" if HAS_CUDA else " (no CUDA device)")
    + ("" if HAS_TRITON else " (triton not installed)"),
)


@pytest.mark.gpu
@cuda_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("shape,window,dilation", [((1, 3, 4, 16, 60, 107), 7, 1), ((2, 1, 8, 32, 13, 17), 5, 2),
                                                    ((1, 3, 2, 24, 3, 5), 7, 1)])
def test_cuda_kernel_matches_reference(shape, window, dilation, dtype, tol):
    q, k, v = _inputs(*shape, dtype=dtype, device="cuda")
    # The reference upcasts half inputs to float32 too: only the final rounding may differ.
    want = reference(q.float(), k.float(), v.float(), window, dilation)
    out = OP(q, k, v, window, dilation, shape[3] ** -0.5)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(out, reference(q, k, v, window, dilation), atol=tol, rtol=tol)
    with ops.use_fused_window_attention(None):  # automatic: CUDA inference takes the kernel
        if ops.fused_window_attention_enabled():
            torch.testing.assert_close(dispatch.window_attention(q, k, v, window, dilation), out, atol=0, rtol=0)
    with ops.use_fused_window_attention(True):
        torch.testing.assert_close(dispatch.window_attention(q, k, v, window, dilation), out, atol=0, rtol=0)


@pytest.mark.gpu
@cuda_triton
def test_cuda_non_contiguous_and_backward():
    q, kv, _ = _inputs(1, 3, 2, 8, 9, 10, dtype=torch.float32, device="cuda")
    kv = torch.stack([kv, kv.flip(-1)], dim=2).requires_grad_(True)  # (B, R, 2, h, d, H, W)
    q.requires_grad_(True)
    k, v = kv[:, :, 0], kv[:, :, 1]
    out = ops.fused_window_attention(q, k, v, 5, 2)  # the op itself: the dispatcher sends autograd to the reference
    want = reference(q, k, v, 5, 2)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    grads = torch.autograd.grad(out.square().sum(), (q, kv))
    grads_want = torch.autograd.grad(want.square().sum(), (q, kv))
    for got, expected in zip(grads, grads_want):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@cuda_triton
def test_cuda_export_sees_the_op_with_the_switch_on():
    q, k, v = _inputs(1, 3, 2, 4, 6, 9, dtype=torch.float16, device="cuda")
    with ops.use_fused_window_attention(True):
        program = torch.export.export(_Model(), (q, k, v), strict=False)
    assert _call_targets(program) == ["sdcpc.window_attention.default"]
    torch.testing.assert_close(program.module()(q, k, v), _Model()(q, k, v))
    with ops.use_fused_window_attention(None):  # automatic: exported graphs keep plain ops
        automatic = torch.export.export(_Model(), (q, k, v), strict=False)
    assert not any("sdcpc" in target for target in _call_targets(automatic))
