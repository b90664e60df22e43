"""The PyTorch back ends: eager vs torch.compile (and its fallback), CUDA graphs (buffers, recapture and fallback,
with a stand-in capture on the CPU), bf16 on the CPU, fp16 refused on the CPU."""

from __future__ import annotations

import copy
import os
import time
import warnings

import pytest
import torch

from sdcpc_core.models import build_model
from sdcpc_core.runtime import available_backends, create_backend, torch_backends
from sdcpc_core.runtime.backends import TORCH_BACKENDS, backend_options
from sdcpc_core.runtime.cudagraph_backend import CudaGraphBackend, CudaGraphCapture, as_tuple
from sdcpc_core.runtime.programs import TemporalStepProgram
from sdcpc_core.runtime.torch_backends import BackendFallbackWarning, CompileBackend, EagerBackend

SIZE = (64, 64)
CLASSES = 5


def _model(**overrides):
    """A tiny model whose temporal part changes the output (zero-initialised scales set at random)."""
    torch.manual_seed(0)
    model = build_model("sdcpc_b0", CLASSES, coarse_tokens=4, **overrides)
    with torch.no_grad():
        for parameter in model.zero_initialised_scales():
            parameter.normal_()
    return model.eval()


def _images(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *SIZE, generator=generator) for _ in range(count)]


def _stream(backend, images):
    """Encodes every image; the last one is the target of the first three (oldest first)."""
    caches = [backend.encode(image) for image in images]
    return caches, backend.temporal(caches[-1], [c.without_logits() for c in caches[:-1]])


def _compile_unsupported() -> str | None:
    """Why ``torch.compile`` cannot run here (None when it can): probes a one-op function."""
    try:
        compiled = torch.compile(lambda x: x * 2.0 + 1.0, dynamic=False)
        with torch.inference_mode():
            compiled(torch.ones(4))
    except Exception as error:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile is unsupported here ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    return None


def test_eager_backend_matches_the_model():
    model = _model()
    images = _images(4)
    with torch.no_grad():
        clip = model.forward_clip(torch.stack(images, dim=1))
    backend = create_backend("eager", copy.deepcopy(model), SIZE)
    assert isinstance(backend, EagerBackend) and backend.name == "eager"
    _, logits = _stream(backend, images)
    assert torch.equal(logits, clip.temporal_logits)
    assert logits.dtype == torch.float32 and not logits.requires_grad


def _check_compile_matches_eager(compiler: str) -> None:
    reason = _compile_unsupported()
    if reason:
        print(reason)
        pytest.skip(reason)
    # Small decoder and window: inductor's compile time grows with the number of kernels it generates.
    model = _model(embed_dim=16, heads=2, window=3, ssea_grids=(1,))
    images = _images(4)
    eager = create_backend("eager", copy.deepcopy(model), SIZE)
    compiled = create_backend("compile", copy.deepcopy(model), SIZE, compiler=compiler)
    assert isinstance(compiled, CompileBackend) and compiled.name == "compile"
    assert compiled._encode_program is None and compiled._temporal_program is None  # compiled lazily
    start = time.perf_counter()
    eager_caches, eager_logits = _stream(eager, images)
    compiled_caches, compiled_logits = _stream(compiled, images)
    print(f"eager + {compiler} compile of both programs: {time.perf_counter() - start:.1f} s")
    for name in ("features", "kv", "coarse", "probs", "logits"):
        torch.testing.assert_close(getattr(compiled_caches[-1], name), getattr(eager_caches[-1], name),
                                   atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-4, rtol=1e-4)
    # another frame reuses the compiled programs (same static shapes): the same answer again
    again = compiled.temporal(compiled.encode(images[-1]), [c.without_logits() for c in compiled_caches[:-1]])
    torch.testing.assert_close(again, eager_logits, atol=1e-4, rtol=1e-4)
    assert compiled.fallback_reason is None  # compiled, not the eager fallback


@pytest.mark.slow
def test_compile_graphs_match_eager():
    """The compile back end's wiring with graph capture only (dynamo + AOT, no kernel generation): fast."""
    _check_compile_matches_eager("aot_eager")


SLOW = os.environ.get("SDCPC_SLOW_TESTS", "") not in ("", "0")
SLOW_REASON = ("inductor's first compilation takes minutes on a small CPU (about 4 min on 2 busy cores, "
               "then cached on disk); set SDCPC_SLOW_TESTS=1 to run it")


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SLOW, reason=SLOW_REASON)
def test_compile_inductor_matches_eager():
    """The default compiler (inductor kernels) agrees with eager within 1e-4."""
    _check_compile_matches_eager("inductor")


def test_bf16_on_cpu_agrees_with_fp32():
    model = _model()
    images = _images(4)
    _, fp32 = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    bf16_backend = create_backend("eager", copy.deepcopy(model), SIZE, precision="bf16")
    assert next(bf16_backend.model.parameters()).dtype == torch.bfloat16
    caches, bf16 = _stream(bf16_backend, images)
    assert bf16.dtype == torch.bfloat16 and caches[-1].features.dtype == torch.bfloat16
    agreement = (bf16.float().argmax(1) == fp32.argmax(1)).double().mean().item()
    assert agreement >= 0.95, f"bf16 labels agree with fp32 on only {100 * agreement:.1f}% of pixels"


@pytest.mark.parametrize("name", ["eager", "compile"])
def test_fp16_on_cpu_is_refused(name):
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU"):
        create_backend(name, _model(), SIZE, precision="fp16")


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16, got 'int8'"):
        create_backend("eager", _model(), SIZE, precision="int8")


# ------------------------------------------------------------------------------ compile: fallback, mode
class _RaisingCompile:
    """Stands in for ``torch.compile``: the compiled callable raises, as inductor does on SD-CPC in torch 2.11."""

    def __init__(self) -> None:
        self.compiled = 0

    def __call__(self, program, **options):
        self.compiled += 1

        def run(*inputs):
            raise RuntimeError("InductorError: TypeError: CantSplit.__init__() missing 2 required arguments\nmore")

        return run


def _fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BackendFallbackWarning)]


def test_compile_failure_warns_once_and_continues_in_eager(monkeypatch):
    model = _model()
    images = _images(4)
    _, eager_logits = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    fake = _RaisingCompile()
    monkeypatch.setattr(torch_backends.torch, "compile", fake)
    backend = create_backend("compile", copy.deepcopy(model), SIZE)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, logits = _stream(backend, images)
        _, again = _stream(backend, images)
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    assert "the compile backend falls back to the eager backend" in messages[0]
    assert "encode program" in messages[0] and "RuntimeError: InductorError: TypeError: CantSplit" in messages[0]
    assert "more" not in messages[0]  # the first line of the error only
    assert backend.fallback_reason is not None and fake.compiled == 1  # not compiled again after the failure
    assert torch.equal(logits, eager_logits) and torch.equal(again, eager_logits)


def test_compile_failure_in_the_temporal_program_falls_back_too(monkeypatch):
    model = _model()
    images = _images(4)
    _, eager_logits = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    real_compile = torch.compile

    def compile_encode_only(program, **options):  # the encode program "compiles" (runs eagerly), temporal fails
        if isinstance(program, TemporalStepProgram):
            return _RaisingCompile()(program)
        return real_compile(program, backend="eager", dynamic=False)

    monkeypatch.setattr(torch_backends.torch, "compile", compile_encode_only)
    backend = create_backend("compile", copy.deepcopy(model), SIZE)
    with pytest.warns(BackendFallbackWarning, match="temporal program failed"):
        _, logits = _stream(backend, images)
    # traced code takes the general formulations, eager CPU code the in-place ones: equal up to rounding
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)


def test_compile_with_an_unknown_compiler_falls_back():
    model = _model()
    images = _images(4)
    _, eager_logits = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    backend = create_backend("compile", copy.deepcopy(model), SIZE, compiler="some-broken-backend")
    with pytest.warns(BackendFallbackWarning, match="some-broken-backend"):
        _, logits = _stream(backend, images)
    assert torch.equal(logits, eager_logits)


def test_compile_raises_errors_of_the_input_as_eager_does(monkeypatch):
    monkeypatch.setattr(torch_backends.torch, "compile", lambda program, **options: program)
    backend = create_backend("compile", _model(), SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        with pytest.raises(ValueError, match="3 colour channels"):
            backend.encode(torch.zeros(1, 4, *SIZE))
    assert backend.fallback_reason is None  # a bad input is not a compiler failure
    backend.encode(_images(1)[0])


def test_compile_mode_is_checked_and_cuda_graph_modes_clone_their_outputs(monkeypatch):
    with pytest.raises(ValueError, match=r"compile mode must be empty .* or one of default, reduce-overhead, "
                                         r"max-autotune, max-autotune-no-cudagraphs, got 'fast'"):
        create_backend("compile", _model(), SIZE, mode="fast")
    assert create_backend("compile", _model(), SIZE, mode="").mode is None
    seen, steps = [], []
    monkeypatch.setattr(torch_backends.torch, "compile", lambda program, **options: seen.append(options) or program)
    monkeypatch.setattr(torch_backends.torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    backend = create_backend("compile", _model(), SIZE, mode="reduce-overhead")
    _stream(backend, _images(4))
    assert seen[0]["mode"] == "reduce-overhead" and len(steps) == 5  # one step per program call
    plain = create_backend("compile", _model(), SIZE, mode="max-autotune-no-cudagraphs")
    _stream(plain, _images(4))
    assert len(steps) == 5  # no CUDA graphs: nothing to mark, nothing cloned


def test_fused_window_option_switches_the_kernel_off_for_the_calls_only():
    from sdcpc_core.ops import window_attention as dispatch

    settings = []
    model = _model()
    model.dssa.register_forward_pre_hook(lambda *_: settings.append(dispatch._FUSED_DEFAULT[0]))
    backend = create_backend("eager", model, SIZE, fused_window_attention=False)
    _stream(backend, _images(4))
    assert settings == [False] and dispatch._FUSED_DEFAULT[0] is None  # restored after the call
    _stream(create_backend("eager", model, SIZE), _images(4))  # default: the process-wide (automatic) setting
    assert settings[-1] is None


def test_backend_options_of_the_node_settings():
    assert backend_options("eager") == {"fused_window_attention": True}
    assert backend_options("compile", compile_mode="reduce-overhead", fused_window_attention=False) == {
        "mode": "reduce-overhead", "fused_window_attention": False}
    assert backend_options("compile") == {"fused_window_attention": True}
    assert backend_options("cudagraph", compile_mode="max-autotune") == {"fused_window_attention": True}
    assert backend_options("onnxruntime", compile_mode="max-autotune", fused_window_attention=False) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendFallbackWarning)  # cudagraph without CUDA
        for name in TORCH_BACKENDS:  # every option built is one the back end takes
            create_backend(name, _model(), SIZE, device="cpu", **backend_options(name, compile_mode="default"))


# ------------------------------------------------------------------------------ cudagraph (CPU parts)
class EagerCapture:
    """Stands in for CUDA graph capture on the CPU with the same contract: ``replay`` reads the static
    inputs and rewrites the static outputs in place (by running the program again)."""

    def __init__(self) -> None:
        self.pools = 0
        self.programs: list[str] = []

    def new_pool(self, device):
        self.pools += 1
        return object()

    def __call__(self, program, static_inputs, pool):
        self.programs.append(type(program).__name__)
        outputs = as_tuple(program(*static_inputs))

        class Graph:
            def replay(self) -> None:
                for output, value in zip(outputs, as_tuple(program(*static_inputs))):
                    output.copy_(value)

        return Graph(), outputs


def _graphs_and_eager(capture) -> tuple[CudaGraphBackend, EagerBackend]:
    """A ``CudaGraphBackend`` on the CPU with the stand-in ``capture``, and an eager back end of the same model."""
    model = _model()
    return (CudaGraphBackend(copy.deepcopy(model), SIZE, device="cpu", capture=capture),
            create_backend("eager", copy.deepcopy(model), SIZE))


def test_cudagraph_backend_matches_eager_and_keeps_its_buffers():
    images = _images(6)
    capture = EagerCapture()
    graphs, eager = _graphs_and_eager(capture)
    assert "cudagraph" in available_backends() and graphs.captured == ()
    eager_caches, eager_logits = _stream(eager, images[:4])
    caches, logits = _stream(graphs, images[:4])
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    for name in ("features", "kv", "coarse", "probs", "logits"):
        torch.testing.assert_close(getattr(caches[0], name), getattr(eager_caches[0], name), atol=1e-5, rtol=1e-5)
    # outputs are clones: later replays rewrite the static outputs, not the caches handed out earlier
    assert all(c.kv.data_ptr() != graphs._programs["encode"].outputs[1].data_ptr() for c in caches)
    assert not torch.equal(caches[0].kv, caches[1].kv)
    # the references are copied into the static reference inputs, each into its slot
    static = graphs._programs["temporal"].inputs
    for slot, ref in enumerate(caches[:-1]):
        assert torch.equal(static[4][:, slot], ref.kv) and torch.equal(static[6][:, slot], ref.probs)
    buffers = [t.data_ptr() for t in static]
    _, logits_b = _stream(graphs, images[2:6])  # same shapes: replayed, not captured again
    _, eager_b = _stream(eager, images[2:6])
    torch.testing.assert_close(logits_b, eager_b, atol=1e-5, rtol=1e-5)
    assert graphs.captures == 2 and capture.pools == 1 and capture.programs == ["EncodeFrameProgram",
                                                                                 "TemporalStepProgram"]
    assert [t.data_ptr() for t in graphs._programs["temporal"].inputs] == buffers
    assert graphs.fallback_reason is None


def test_cudagraph_backend_recaptures_on_a_new_reference_count_or_size():
    images = _images(4)
    capture = EagerCapture()
    graphs, eager = _graphs_and_eager(capture)
    caches = [graphs.encode(image) for image in images]
    graphs.temporal(caches[-1], [c.without_logits() for c in caches[:-1]])
    assert graphs.captures == 2
    two = graphs.temporal(caches[-1], [c.without_logits() for c in caches[1:-1]])  # two references
    want = eager.temporal(caches[-1], [c.without_logits() for c in caches[1:-1]])
    torch.testing.assert_close(two, want, atol=1e-5, rtol=1e-5)
    assert graphs.captures == 3 and graphs.captured == ("temporal",) and capture.pools == 2  # all released first
    assert graphs._programs["temporal"].shapes[4][1] == 2
    bigger = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(5))
    cache = graphs.encode(bigger)  # captured again (for the new size)
    torch.testing.assert_close(cache.logits, eager.encode(bigger).logits, atol=1e-5, rtol=1e-5)
    assert graphs.captures == 4 and graphs.captured == ("temporal", "encode") and capture.pools == 2
    graphs.encode(images[0])  # back to the first size: the encode graph is replaced, all graphs released first
    assert graphs.captures == 5 and graphs.captured == ("encode",) and capture.pools == 3


def test_cudagraph_backend_without_cuda_runs_eager_with_one_warning():
    model = _model()
    images = _images(4)
    _, eager_logits = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        backend = create_backend("cudagraph", copy.deepcopy(model), SIZE, device="cpu")
        _, logits = _stream(backend, images)
    messages = _fallback_warnings(record)
    assert messages == ["the cudagraph backend falls back to the eager backend: CUDA graphs need a CUDA device, "
                        "got device cpu"]
    assert torch.equal(logits, eager_logits) and backend.captured == ()


def test_cudagraph_capture_failure_warns_once_and_continues_in_eager():
    model = _model()
    images = _images(4)
    _, eager_logits = _stream(create_backend("eager", copy.deepcopy(model), SIZE), images)

    class FailingCapture(EagerCapture):
        def __call__(self, program, static_inputs, pool):
            self.programs.append(type(program).__name__)
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    capture = FailingCapture()
    backend = CudaGraphBackend(copy.deepcopy(model), SIZE, device="cpu", capture=capture)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, logits = _stream(backend, images)
        _, again = _stream(backend, images)
    messages = _fallback_warnings(record)
    assert len(messages) == 1 and "CUDA graph capture of the encode program failed (RuntimeError: CUDA error: " \
                                  "operation not permitted when stream is capturing)" in messages[0]
    assert capture.programs == ["EncodeFrameProgram"] and backend.captured == ()  # never tried again
    assert torch.equal(logits, eager_logits) and torch.equal(again, eager_logits)


def test_cuda_graph_capture_needs_a_warmup_run():
    with pytest.raises(ValueError, match="warmup must be an integer >= 1, got 0"):
        CudaGraphCapture(warmup=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cudagraph_fill_puts_references_in_their_slots(dtype):
    from sdcpc_core.runtime.cudagraph_backend import fill, source_shape

    refs = [torch.full((1, 2, 3), float(i)) for i in range(3)]  # float64 buffers take the slot-by-slot copies
    buffer = torch.empty(source_shape(refs), dtype=dtype)
    fill(buffer, refs)
    assert buffer.shape == (1, 3, 2, 3) and all((buffer[:, i] == i).all() for i in range(3))
