"""ONNX export (dynamo exporter), the TensorRT compatibility check, the onnxruntime back end and sdcpc-export.

The tiny temporal model is exported once for the whole module, through the ``sdcpc-export`` CLI
(which calls ``export_onnx``); the other tests read that folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from sdcpc_core.runtime import onnx_backend  # noqa: E402
from sdcpc_core.runtime.backends import create_backend  # noqa: E402
from sdcpc_core.runtime.onnx_export import (  # noqa: E402
    OPSET,
    check_tensorrt_compatibility,
    manifest_problems,
    read_manifest,
    sha256_file,
    tensorrt_operator_table,
)
from sdcpc_core.runtime.programs import ENCODE_OUTPUTS, EXPORT_FORMAT, TEMPORAL_INPUTS, TEMPORAL_OUTPUTS  # noqa: E402
from sdcpc_core.tools.export import main as export_main  # noqa: E402
from sdcpc_core.weights import save_weights  # noqa: E402

HEIGHT, WIDTH, CLASSES, REFS = 64, 96, 5, 3
SIZE = f"{HEIGHT}x{WIDTH}"


@pytest.fixture(scope="module")
def model(tiny_temporal_model):
    return tiny_temporal_model


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    save_weights(model, path)
    return path


def _run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = export_main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """(folder, stdout) of one ``sdcpc-export --backend onnx`` run."""
    folder = tmp_path_factory.mktemp("exports") / "tiny-onnx"
    status, stdout, stderr = _run_cli("--checkpoint", checkpoint, "--backend", "onnx", "--size", SIZE,
                                      "--refs", REFS, "--out", folder)
    assert status == 0, stdout + stderr
    return folder, stdout


def _images(count: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, HEIGHT, WIDTH, generator=generator) for _ in range(count)]


def _assert_close_labels(expected: torch.Tensor, got: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= 0.999


# ------------------------------------------------------------------------------ CLI + manifest
@pytest.mark.slow
def test_cli_writes_the_folder_and_reports_the_check(exported):
    folder, stdout = exported
    assert sorted(p.name for p in folder.iterdir()) == ["encode.onnx", "manifest.json", "temporal.onnx"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left
    assert "encode.onnx: ok" in stdout and "temporal.onnx: ok" in stdout
    assert "temporal vs eager" in stdout


@pytest.mark.slow
def test_manifest_describes_the_files(exported, checkpoint, model):
    folder, _ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest_problems(folder) == []
    for graph in manifest["graphs"].values():
        assert graph["sha256"] == sha256_file(folder / graph["file"])
    assert manifest["checkpoint_sha256"] == sha256_file(checkpoint)
    assert manifest["model_config"] == json.loads(json.dumps(asdict(model.config)))
    assert manifest["input_size"] == [HEIGHT, WIDTH] and manifest["num_refs"] == REFS
    assert manifest["opset"] == OPSET
    assert {"torch", "onnx"} <= set(manifest["versions"]) and manifest["created"]
    encode, temporal = manifest["graphs"]["encode"], manifest["graphs"]["temporal"]
    assert [v["name"] for v in encode["inputs"]] == ["image"]
    assert encode["inputs"][0]["shape"] == [1, 3, HEIGHT, WIDTH]
    assert [v["name"] for v in encode["outputs"]] == list(ENCODE_OUTPUTS)
    assert [v["name"] for v in temporal["inputs"]] == list(TEMPORAL_INPUTS)
    assert [v["name"] for v in temporal["outputs"]] == list(TEMPORAL_OUTPUTS)
    assert temporal["inputs"][4]["shape"][1] == REFS
    for graph in (encode, temporal):
        for value in graph["inputs"] + graph["outputs"]:
            assert all(isinstance(d, int) for d in value["shape"]) and value["dtype"] == "float32"
    # A changed file no longer matches its hash.
    copy = folder.parent / "tampered"
    shutil.copytree(folder, copy)
    with open(copy / "encode.onnx", "ab") as handle:
        handle.write(b"\0")
    assert any("encode" in p for p in manifest_problems(copy))
    shutil.rmtree(copy)


@pytest.mark.slow
def test_graphs_hold_no_local_paths(exported):
    folder, _ = exported
    for name in ("encode.onnx", "temporal.onnx", "manifest.json"):
        data = (folder / name).read_bytes()
        assert b"site-packages" not in data and str(Path.cwd()).encode() not in data


# -------------------------------------------------------------------------- parity with eager
@torch.no_grad()
@pytest.mark.slow
def test_onnxruntime_matches_eager(exported, model):
    folder, _ = exported
    encode = onnxruntime.InferenceSession(str(folder / "encode.onnx"), providers=["CPUExecutionProvider"])
    temporal = onnxruntime.InferenceSession(str(folder / "temporal.onnx"), providers=["CPUExecutionProvider"])
    images = _images(REFS + 1)
    caches, outputs = [], []
    for image in images:
        caches.append(model.encode_frame(image))
        outputs.append(dict(zip(ENCODE_OUTPUTS, encode.run(None, {"image": image.numpy()}))))
    for cache, out in zip(caches, outputs):
        for name in ENCODE_OUTPUTS:
            assert np.abs(out[name] - getattr(cache, name).numpy()).max() < 1e-3, name
        _assert_close_labels(cache.logits, torch.from_numpy(out["logits"]))
    expected = model.temporal_step(caches[-1], caches[:-1])
    assert (expected - caches[-1].logits).abs().max() > 1e-2  # the temporal part changes the output
    refs = outputs[:-1]
    feeds = dict(zip(TEMPORAL_INPUTS[:4], (outputs[-1][n] for n in ("features", "coarse", "probs", "logits"))))
    for input_name, name in zip(TEMPORAL_INPUTS[4:], ("kv", "coarse", "probs")):
        feeds[input_name] = np.stack([r[name] for r in refs], axis=1)
    _assert_close_labels(expected, torch.from_numpy(temporal.run(None, feeds)[0]))


# ------------------------------------------------------------------ TensorRT compatibility
def test_operator_table_records_its_source():
    table = tensorrt_operator_table()
    assert "operators.md" in table["source"]["url"] and table["tensorrt_version"] and table["recorded"]
    assert table["supported"]["TopK"]["restrictions"] and "Unique" in table["unsupported"]
    assert not set(table["supported"]) & set(table["unsupported"])


@pytest.mark.slow
def test_check_passes_on_our_graphs(exported):
    folder, _ = exported
    for name in ("encode.onnx", "temporal.onnx"):
        assert check_tensorrt_compatibility(folder / name) == []
    ops = {n.op_type for n in onnx.load(str(folder / "temporal.onnx")).graph.node}
    assert "TopK" in ops  # the check saw stage 1's selection


def _graph(nodes, inputs, outputs, initializers=(), opset=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_check_fails_on_an_unsupported_operator():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = _graph([helper.make_node("Det", ["x"], ["y"])], [x], [y])
    problems = check_tensorrt_compatibility(model)
    assert len(problems) == 1 and "Det" in problems[0]


def test_check_fails_on_a_large_or_non_constant_topk():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8000])
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 5000])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 5000])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    model = _graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)], [x], [values, indices], [k])
    problems = check_tensorrt_compatibility(model)
    assert len(problems) == 1 and "K = 5000" in problems[0] and "3840" in problems[0]
    small = helper.make_tensor("k", TensorProto.INT64, [1], [3840])
    ok = _graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)], [x],
                [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 3840]),
                 helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 3840])], [small])
    assert check_tensorrt_compatibility(ok) == []
    k_input = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    dynamic = _graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)], [x, k_input],
                     [values, indices])
    assert any("not a constant" in p for p in check_tensorrt_compatibility(dynamic))


def test_check_fails_on_a_symbolic_dimension():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    problems = check_tensorrt_compatibility(_graph([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))
    assert problems and all("batch" in p for p in problems)
    assert {p.split()[0] for p in problems} == {"input", "output"}


def test_check_fails_on_unlisted_custom_domains_and_opsets(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("WindowAttention", ["x"], ["y"], domain="sdcpc")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("sdcpc", 1)])
    assert any("sdcpc::WindowAttention" in p for p in check_tensorrt_compatibility(model))
    assert check_tensorrt_compatibility(model, plugins=["sdcpc::WindowAttention"]) == []
    old = _graph([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=8)
    path = tmp_path / "old.onnx"
    onnx.save(old, str(path))
    assert any("opset 8" in p for p in check_tensorrt_compatibility(path))


# ------------------------------------------------------------------------ onnxruntime backend
def _cache_with(exported_folder: Path, cache_dir: Path, checkpoint: Path) -> Path:
    key = onnx_backend.onnx_cache_key(sha256_file(checkpoint), (HEIGHT, WIDTH), REFS)
    shutil.copytree(exported_folder, cache_dir / key)
    return cache_dir / key


def _fake_export(source: Path):
    """Stands in for export_onnx: copies the module's export (the real export is tested above)."""
    calls = []

    def fake(model, folder, height, width, num_refs=3, **options):
        calls.append((height, width, num_refs, options))
        for path in source.iterdir():
            shutil.copy(path, Path(folder) / path.name)
        return json.loads((source / "manifest.json").read_text())
    return fake, calls


@pytest.mark.slow
def test_backend_gives_the_eager_labels(exported, checkpoint, model, tmp_path, monkeypatch):
    folder, _ = exported
    _cache_with(folder, tmp_path, checkpoint)

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been used")
    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    backend = create_backend("onnxruntime", model, (HEIGHT, WIDTH), num_refs=REFS, cache_dir=tmp_path,
                             checkpoint_sha256=sha256_file(checkpoint))
    assert backend.name == "onnxruntime" and backend.providers == ["CPUExecutionProvider"]
    images = _images(REFS + 2, seed=5)
    with torch.no_grad():
        eager = [model.encode_frame(image) for image in images]
    caches = [backend.encode(image) for image in images]
    for cache, reference in zip(caches, eager):
        assert cache.kv is not None and cache.kv.shape == reference.kv.shape
        _assert_close_labels(reference.logits, cache.logits)
    for target in range(REFS, len(images)):
        refs = [c.without_logits() for c in caches[target - REFS:target]]
        got = backend.temporal(caches[target], refs)
        with torch.no_grad():
            expected = model.temporal_step(eager[target], eager[target - REFS:target])
        _assert_close_labels(expected, got)
    with pytest.raises(ValueError, match=f"built for {REFS} reference"):
        backend.temporal(caches[-1], caches[:1])
    with pytest.raises(ValueError, match="shape"):
        backend.encode(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
def test_backend_reexports_a_cache_of_an_older_export_format(exported, checkpoint, model, tmp_path, monkeypatch):
    folder, _ = exported
    entry = _cache_with(folder, tmp_path, checkpoint)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["export_format"] == EXPORT_FORMAT
    (entry / "manifest.json").write_text(json.dumps({**manifest, "export_format": EXPORT_FORMAT - 1}))
    fake, calls = _fake_export(folder)
    monkeypatch.setattr(onnx_backend, "export_onnx", fake)
    with pytest.warns(RuntimeWarning, match="exporting again"):
        create_backend("onnxruntime", model, (HEIGHT, WIDTH), num_refs=REFS, cache_dir=tmp_path,
                       checkpoint_sha256=sha256_file(checkpoint))
    assert len(calls) == 1 and read_manifest(entry)["export_format"] == EXPORT_FORMAT


@pytest.mark.slow
def test_backend_reexports_a_corrupt_cache(exported, checkpoint, model, tmp_path, monkeypatch):
    folder, _ = exported
    entry = _cache_with(folder, tmp_path, checkpoint)
    (entry / "temporal.onnx").write_bytes(b"not a graph")
    fake, calls = _fake_export(folder)
    monkeypatch.setattr(onnx_backend, "export_onnx", fake)
    with pytest.warns(RuntimeWarning, match="exporting again"):
        backend = create_backend("onnxruntime", model, (HEIGHT, WIDTH), num_refs=REFS, cache_dir=tmp_path,
                                 checkpoint_sha256=sha256_file(checkpoint))
    assert len(calls) == 1 and calls[0][:3] == (HEIGHT, WIDTH, REFS)
    assert manifest_problems(entry) == [] and [p.name for p in tmp_path.iterdir()] == [entry.name]
    # A second back end finds the repaired entry and exports nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_backend("onnxruntime", model, (HEIGHT, WIDTH), num_refs=REFS, cache_dir=tmp_path,
                       checkpoint_sha256=sha256_file(checkpoint))
    assert len(calls) == 1
    assert backend.encode(_images(1)[0]).logits.shape == (1, CLASSES, HEIGHT // 4, WIDTH // 4)


def test_backend_cache_key_covers_its_fields():
    base = onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH), REFS, OPSET)
    assert base == onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH), REFS, OPSET)
    others = [onnx_backend.onnx_cache_key("b" * 64, (HEIGHT, WIDTH), REFS, OPSET),
              onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH + 32), REFS, OPSET),
              onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH), REFS + 1, OPSET),
              onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH), REFS, OPSET - 1),
              onnx_backend.onnx_cache_key("a" * 64, (HEIGHT, WIDTH), REFS, OPSET, export_format=1)]
    assert len({base, *others}) == 6


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_backend_accepts_fp32_only(model, precision):
    with pytest.raises(ValueError, match="accepted: fp32"):
        create_backend("onnxruntime", model, (HEIGHT, WIDTH), precision=precision)


# ------------------------------------------------------------------------------- CLI errors
def _one_sentence_error(status: int, stdout: str, stderr: str, *words: str) -> None:
    assert status == 2
    assert stdout == "" and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    for word in words:
        assert word in stderr


@pytest.mark.slow
def test_cli_refuses_an_existing_folder(exported, checkpoint):
    folder, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = _run_cli("--checkpoint", checkpoint, "--backend", "onnx", "--size", SIZE, "--out", folder)
    _one_sentence_error(*result, "already exists", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_cli_errors_are_one_sentence(tmp_path):
    out = tmp_path / "out"
    _one_sentence_error(*_run_cli("--checkpoint", tmp_path / "missing.safetensors", "--backend", "onnx",
                                  "--size", SIZE, "--out", out), "checkpoint not found")
    _one_sentence_error(*_run_cli("--checkpoint", tmp_path / "x", "--backend", "onnx", "--size", "16x16",
                                  "--out", out), "size")
    _one_sentence_error(*_run_cli("--checkpoint", tmp_path / "x", "--backend", "onnx", "--size", "big",
                                  "--out", out), "HEIGHTxWIDTH")
    not_ours = tmp_path / "random.bin"
    not_ours.write_bytes(b"\x00" * 64)
    _one_sentence_error(*_run_cli("--checkpoint", not_ours, "--backend", "onnx", "--size", SIZE, "--out", out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.bin"]  # nothing written
