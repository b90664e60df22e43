"""TensorRT back end: engine cache key, rebuild of corrupt cached engines (fakes), the CLI without
Torch-TensorRT; real TensorRT builds run only where torch_tensorrt and a CUDA device exist."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
from pathlib import Path

import pytest
import torch

from sdcpc_core.runtime.tensorrt_backend import EngineCache, TensorRTBackend, engine_cache_key
from sdcpc_core.tools.export import main as export_main

HEIGHT, WIDTH, CLASSES, REFS = 64, 96, 5, 3
KEY_ARGS = dict(checkpoint_sha256="0" * 64, input_size=(480, 640), num_refs=3, precision="fp16",
                gpu_name="NVIDIA H100 80GB HBM3", tensorrt_version="10.1.0", torch_tensorrt_version="2.4.0")
FAKE_ENVIRONMENT = {"gpu_name": "fake GPU", "tensorrt_version": "0.0", "torch_tensorrt_version": "0.0"}
HAS_TORCH_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None


# ------------------------------------------------------------------------------- cache key
def test_engine_cache_key_is_stable():
    # A fixed value: the key must not depend on the process (hash seeds) or the machine.
    assert engine_cache_key(**KEY_ARGS) == engine_cache_key(**dict(KEY_ARGS))
    assert engine_cache_key(**KEY_ARGS) == "4c4f4ee284cf0d82fca69a685ad31013"  # changes with EXPORT_FORMAT


@pytest.mark.parametrize("field, value", [
    ("checkpoint_sha256", "1" * 64), ("input_size", (480, 672)), ("input_size", (640, 480)), ("num_refs", 2),
    ("precision", "fp32"), ("gpu_name", "NVIDIA H200"), ("tensorrt_version", "10.2.0"),
    ("torch_tensorrt_version", "2.5.0"), ("export_format", 1),
])
def test_every_field_changes_the_key(field, value):
    assert engine_cache_key(**{**KEY_ARGS, field: value}) != engine_cache_key(**KEY_ARGS)


# ------------------------------------------------------------------------- fakes for TensorRT
class FakeEngines:
    """In-memory stand-ins for torch_tensorrt's compile / save / load: a saved "engine" is a token
    file naming an entry of ``store``; anything else fails to load, like a corrupt engine."""

    def __init__(self) -> None:
        self.store: dict[str, object] = {}
        self.builds: list[str] = []
        self.loads: list[str] = []
        self._ids = itertools.count()

    def builder(self, program, inputs, precision, device):
        self.builds.append(str(program.graph_signature.user_inputs))
        return program.module()  # runs the exported program on the CPU

    def saver(self, module, path, inputs):
        token = f"engine-{next(self._ids)}"
        self.store[token] = module
        Path(path).write_text(token)

    def loader(self, path):
        self.loads.append(path)
        token = Path(path).read_text(errors="replace")
        if token not in self.store:
            raise RuntimeError("could not deserialize the engine")
        return self.store[token]


def test_engine_cache_rebuilds_a_corrupt_file(tmp_path):
    fake = FakeEngines()
    cache = EngineCache(tmp_path, fake.saver, fake.loader)
    built = []

    def build():
        built.append(1)
        return lambda x: x + len(built)

    first = cache.get_or_build("key", "encode", build, ())
    assert len(built) == 1 and cache.path("key", "encode").is_file()
    assert EngineCache(tmp_path, fake.saver, fake.loader).get_or_build("key", "encode", build, ()) is first
    assert len(built) == 1  # loaded, not rebuilt
    cache.path("key", "encode").write_bytes(b"\x00garbage")
    with pytest.warns(RuntimeWarning, match="failed to load.*rebuilding"):
        second = cache.get_or_build("key", "encode", build, ())
    assert len(built) == 2 and second(0) == 2
    assert fake.loader(str(cache.path("key", "encode"))) is second  # the rebuilt engine was saved
    assert sorted(p.name for p in (tmp_path / "key").iterdir()) == ["encode.ep"]  # no temporary files


def test_engine_cache_leaves_nothing_when_saving_fails(tmp_path):
    def failing_saver(module, path, inputs):
        Path(path).write_text("half")
        raise OSError("disk full")

    cache = EngineCache(tmp_path, failing_saver, lambda path: None)
    with pytest.raises(OSError):
        cache.get_or_build("key", "encode", lambda: object(), ())
    assert list((tmp_path / "key").iterdir()) == []


@pytest.fixture(scope="module")
def model(tiny_temporal_model):
    return tiny_temporal_model


@pytest.mark.slow
def test_backend_with_fake_engines_caches_and_rebuilds(model, tmp_path):
    fake = FakeEngines()

    def backend():
        return TensorRTBackend(model, (HEIGHT, WIDTH), device="cpu", precision="fp32", num_refs=REFS,
                               cache_dir=tmp_path, checkpoint_sha256="c" * 64, builder=fake.builder,
                               saver=fake.saver, loader=fake.loader, environment=FAKE_ENVIRONMENT)

    first = backend()
    assert len(fake.builds) == 2  # encode and temporal
    key = engine_cache_key("c" * 64, (HEIGHT, WIDTH), REFS, "fp32", **FAKE_ENVIRONMENT)
    assert first.cache_key == key
    assert sorted(p.name for p in (tmp_path / key).iterdir()) == ["encode.ep", "temporal.ep"]
    # The programs run and agree with eager.
    generator = torch.Generator().manual_seed(3)
    images = [torch.randn(1, 3, HEIGHT, WIDTH, generator=generator) for _ in range(REFS + 1)]
    caches = [first.encode(image) for image in images]
    with torch.no_grad():
        eager = [model.encode_frame(image) for image in images]
        expected = model.temporal_step(eager[-1], eager[:-1])
    got = first.temporal(caches[-1], caches[:-1])
    assert (got - expected).abs().max() < 1e-4
    # Cached: nothing is built again.
    backend()
    assert len(fake.builds) == 2
    # A corrupt cached engine is rebuilt (only that one), with a warning.
    (tmp_path / key / "temporal.ep").write_text("corrupt")
    with pytest.warns(RuntimeWarning, match="temporal.ep failed to load"):
        third = backend()
    assert len(fake.builds) == 3
    assert (third.temporal(caches[-1], caches[:-1]) - expected).abs().max() < 1e-4


def test_backend_without_injected_builder_needs_cuda(model):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the CPU refusal cannot be observed")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TensorRTBackend(model, (HEIGHT, WIDTH), device="cpu", precision="fp32")


# ------------------------------------------------------------------------------------- CLI
def test_cli_without_torch_tensorrt_says_what_is_missing(tmp_path):
    if HAS_TORCH_TENSORRT:
        pytest.skip("torch_tensorrt is installed: the missing-package message cannot be observed")
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")  # never read: the missing package is reported first
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = export_main(["--checkpoint", str(checkpoint), "--backend", "tensorrt", "--size", "64x96",
                              "--out", str(tmp_path / "engines")])
    assert status == 2 and out.getvalue() == ""
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "torch_tensorrt" in lines[0] and "not installed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # nothing written


# ----------------------------------------------------------------------------- real TensorRT
def _require_tensorrt() -> None:
    if not HAS_TORCH_TENSORRT:
        pytest.skip("torch_tensorrt is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
def test_real_tensorrt_fp16_matches_eager_and_caches(model, tmp_path):
    _require_tensorrt()
    import copy

    gpu_model = copy.deepcopy(model).cuda()
    backend = TensorRTBackend(copy.deepcopy(model), (HEIGHT, WIDTH), device="cuda", num_refs=REFS,
                              cache_dir=tmp_path)
    generator = torch.Generator().manual_seed(3)
    images = [torch.randn(1, 3, HEIGHT, WIDTH, generator=generator).cuda() for _ in range(REFS + 1)]
    caches = [backend.encode(image) for image in images]
    with torch.no_grad():
        eager = [gpu_model.encode_frame(image) for image in images]
        expected = gpu_model.temporal_step(eager[-1], eager[:-1])
    got = backend.temporal(caches[-1], caches[:-1])
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.99
    reloaded = TensorRTBackend(copy.deepcopy(model), (HEIGHT, WIDTH), device="cuda", num_refs=REFS,
                               cache_dir=tmp_path)
    assert torch.equal(reloaded.temporal(caches[-1], caches[:-1]).argmax(1), got.argmax(1))
