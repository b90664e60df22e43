"""ONNX export of the streaming programs, and a check that TensorRT's ONNX parser can take the graphs.

``export_onnx(model, out_dir, height, width, num_refs=3)`` exports ``EncodeFrameProgram`` and (for
temporal models) ``TemporalStepProgram`` with the dynamo exporter (``torch.onnx.export(...,
dynamo=True)`` of the ``ExportedProgram`` objects of ``export_programs``), opset ``OPSET`` = 18, and
writes into ``out_dir``:

* ``encode.onnx``: input ``image (1, 3, H, W)`` -> ``ENCODE_OUTPUTS`` (``PER_FRAME_OUTPUTS`` for the
  per-frame baselines);
* ``temporal.onnx`` (temporal models only): ``TEMPORAL_INPUTS`` -> ``TEMPORAL_OUTPUTS``;
* ``manifest.json``: model config, checkpoint sha256 (when known), input size, ``num_refs``, opset,
  ``export_format`` (``sdcpc_core.runtime.programs.EXPORT_FORMAT``),
  torch / onnx / onnxscript versions, creation time (UTC) and, per graph, its file, sha256 and the
  names, shapes and dtypes of its inputs and outputs.

Every file is written under a temporary name in ``out_dir`` and then renamed (``os.replace``), so a
reader never sees a half-written graph. Opset 18 is the dynamo exporter's native opset and lies in
the range TensorRT 10 parses (9 to 20). Node metadata that the exporter adds (Python stack traces,
which hold file paths of the exporting machine) is dropped before saving; the graphs are the same.
Graphs are saved as one file each (no external data), which is fine below ONNX's 2 GiB limit
(MiT-B5 is about 340 MB in fp32).

``check_tensorrt_compatibility(onnx_path)`` lists what would stop TensorRT's ONNX parser, judged
against ``data/tensorrt_onnx_ops.json`` (the operator table of onnx-tensorrt's ``docs/operators.md``,
source and version recorded in that file): operators outside the supported list, ``TopK`` whose K
is not a constant or exceeds 3840, symbolic or unknown dimensions on graph inputs, outputs and
inferred intermediate values, an opset outside the parser's range, and operators of other domains
that are not registered plugins. An empty list means no problem was found.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_write
from ..models.sdcpc import SDCPC
from .programs import EXPORT_FORMAT, TEMPORAL_INPUTS, TEMPORAL_OUTPUTS, encode_output_names, export_programs

OPSET = 18
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
GRAPH_FILES = {"encode": "encode.onnx", "temporal": "temporal.onnx"}
TENSORRT_OPS_FILE = Path(__file__).with_name("data") / "tensorrt_onnx_ops.json"
_DEFAULT_DOMAINS = ("", "ai.onnx")


# ------------------------------------------------------------------------------------ hashing
def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(model: torch.nn.Module) -> str:
    """Hex sha256 of a model's config and state dict (names, dtypes, shapes, values); stable across runs."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _write_json(target: Path, data: dict) -> None:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    atomic_write(target, write)


# ------------------------------------------------------------------------------------- export
def _strip_metadata(model_proto) -> None:
    """Drops the exporter's per-node metadata (stack traces with local paths, FX node text)."""
    graphs = [model_proto.graph, *[f for f in model_proto.functions]]
    for graph in graphs:
        for node in _walk_nodes(graph.node):
            del node.metadata_props[:]
    del model_proto.graph.value_info[:]  # recomputed by shape inference when needed
    model_proto.doc_string = ""


def _value_summary(values) -> list[dict]:
    from onnx import helper

    summary = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        summary.append({"name": value.name, "shape": shape,
                        "dtype": helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name})
    return summary


def _versions() -> dict[str, str]:
    import onnx

    versions = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript
        versions["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - the dynamo exporter needs it
        pass
    return versions


def export_onnx(
    model: SDCPC, out_dir: str | os.PathLike, height: int, width: int, num_refs: int = 3, *,
    checkpoint_sha256: str | None = None, opset: int = OPSET,
) -> dict:
    """Exports the model's streaming programs to ``out_dir`` (created if needed); returns the manifest.

    ``height x width`` is the image size the graphs take (any size >= 32; padding to a multiple of
    32 is inside the graph), ``num_refs`` the number of cached references of the temporal graph.
    ``checkpoint_sha256`` (the sha256 of the weights file the model came from) goes into the
    manifest; the manifest always holds ``model_sha256`` (a hash of the config and weights). The
    model is switched to eval mode.
    """
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Non-strict torch.export: the same static graph as strict mode here (no data-dependent Python
    # control flow in the model), traced in about half the time.
    programs = export_programs(model, height, width, num_refs=num_refs, strict=False)
    names = {
        "encode": (("image",), encode_output_names(model)),
        "temporal": (TEMPORAL_INPUTS, TEMPORAL_OUTPUTS),
    }
    graphs = {}
    for name, program in programs.items():
        input_names, output_names = names[name]
        onnx_program = torch.onnx.export(program, args=(), f=None, dynamo=True, opset_version=opset,
                                         input_names=list(input_names), output_names=list(output_names))
        assert onnx_program is not None  # dynamo=True returns the program
        proto = onnx_program.model_proto
        _strip_metadata(proto)
        target = out_dir / GRAPH_FILES[name]
        atomic_write(target, partial(onnx.save_model, proto))  # onnx.save_model(proto, path)
        graphs[name] = {
            "file": target.name,
            "sha256": sha256_file(target),
            "inputs": _value_summary(proto.graph.input),
            "outputs": _value_summary(proto.graph.output),
        }
    manifest = {
        "format": "sdcpc-onnx",
        "format_version": MANIFEST_VERSION,
        "model_config": asdict(model.config),
        "checkpoint_sha256": checkpoint_sha256,
        "model_sha256": model_sha256(model),
        "input_size": [height, width],
        "num_refs": num_refs,
        "opset": opset,
        "export_format": EXPORT_FORMAT,
        "graphs": graphs,
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder; ``ValueError`` when it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist (not an export folder written by export_onnx)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable manifest ({error})") from None


def manifest_problems(folder: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """Graph files of an export folder that are missing or whose sha256 differs from the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    problems = []
    for name, graph in manifest.get("graphs", {}).items():
        path = folder / graph["file"]
        if not path.is_file():
            problems.append(f"{name}: {graph['file']} is missing")
        elif sha256_file(path) != graph["sha256"]:
            problems.append(f"{name}: {graph['file']} does not match the sha256 in the manifest")
    return problems


# --------------------------------------------------------------------------- TensorRT check
@lru_cache(maxsize=1)
def tensorrt_operator_table() -> dict:
    """The contents of ``data/tensorrt_onnx_ops.json`` (source, TensorRT version, operator lists)."""
    return json.loads(TENSORRT_OPS_FILE.read_text(encoding="utf-8"))


def _walk_nodes(nodes: Iterable) -> Iterator:
    """Nodes, including those of subgraphs (If / Loop / Scan bodies)."""
    from onnx import AttributeProto

    for node in nodes:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _walk_nodes(attribute.g.node)
            elif attribute.type == AttributeProto.GRAPHS:
                for graph in attribute.graphs:
                    yield from _walk_nodes(graph.node)


def _constant_values(model_proto) -> dict:
    """Name -> numpy value of initializers and ``Constant`` node outputs (main graph)."""
    from onnx import numpy_helper

    values: dict[str, Any] = {init.name: numpy_helper.to_array(init) for init in model_proto.graph.initializer}
    for node in model_proto.graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
                elif attribute.name in ("value_int", "value_ints"):
                    values[node.output[0]] = attribute.i if attribute.name == "value_int" else list(attribute.ints)
    return values


def _dimension_problems(kind: str, value) -> list[str]:
    if not value.type.HasField("tensor_type"):
        return [f"{kind} {value.name!r} is not a tensor"]
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return [f"{kind} {value.name!r} has no known shape"]
    dims = []
    dynamic = False
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(str(dim.dim_value))
        else:
            dynamic = True
            dims.append(dim.dim_param or "?")
    if dynamic:
        return [f"{kind} {value.name!r} has a symbolic or unknown dimension ({', '.join(dims)})"]
    return []


def check_tensorrt_compatibility(onnx_path, plugins: Iterable[str] = ()) -> list[str]:
    """Problems that would stop TensorRT from building ``onnx_path`` (a path or a ``ModelProto``).

    ``plugins``: op types (``"domain::Op"`` or ``"Op"``) of other domains that TensorRT plugins
    implement (added to the ``plugins`` list of the data file). Returns an empty list when none.
    """
    import onnx

    model_proto = onnx.load(str(onnx_path)) if isinstance(onnx_path, (str, os.PathLike)) else onnx_path
    table = tensorrt_operator_table()
    supported = table["supported"]
    allowed_plugins = set(table.get("plugins", [])) | set(plugins)
    max_k = int(table["topk_max_k"])
    low, high = table["opset_range"]
    problems: list[str] = []

    for opset in model_proto.opset_import:
        if opset.domain in _DEFAULT_DOMAINS and not low <= opset.version <= high:
            problems.append(f"opset {opset.version} is outside the range TensorRT {table['tensorrt_version']} "
                            f"parses ({low} to {high})")
    try:
        inferred = onnx.shape_inference.infer_shapes(model_proto, strict_mode=True, data_prop=True)
    except Exception as error:  # onnx raises InferenceError (or others for broken graphs)
        problems.append(f"ONNX shape inference failed ({type(error).__name__}: {str(error).splitlines()[0]})")
        inferred = model_proto

    functions = {(f.domain, f.name): f for f in model_proto.functions}
    constants = _constant_values(inferred)
    unsupported: dict[str, int] = {}
    for node in _walk_nodes(_expand_functions(inferred.graph.node, functions)):
        where = f"node {node.name or node.output[0]!r}"
        if node.domain not in _DEFAULT_DOMAINS:
            if node.op_type not in allowed_plugins and f"{node.domain}::{node.op_type}" not in allowed_plugins:
                problems.append(f"{where}: operator {node.domain}::{node.op_type} of a non-default domain has no "
                                f"TensorRT plugin listed")
            continue
        if node.op_type not in supported:
            unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
            continue
        if node.op_type == "TopK":
            problems += _topk_problems(node, where, constants, max_k)
    for op_type, count in sorted(unsupported.items()):
        problems.append(f"operator {op_type} ({count} node(s)) is not in TensorRT "
                        f"{table['tensorrt_version']}'s supported ONNX operators")

    graph = inferred.graph
    for kind, values in (("input", graph.input), ("output", graph.output), ("value", graph.value_info)):
        for value in values:
            problems += _dimension_problems(kind, value)
    return problems


def _expand_functions(nodes: Iterable, functions: dict) -> Iterator:
    """Nodes with calls of model-local functions replaced by the functions' bodies."""
    for node in nodes:
        function = functions.get((node.domain, node.op_type))
        if function is None:
            yield node
        else:
            yield from _expand_functions(function.node, functions)


def _topk_problems(node, where: str, constants: dict, max_k: int) -> list[str]:
    import numpy as np

    problems = []
    sorted_attr = next((a.i for a in node.attribute if a.name == "sorted"), 1)
    if sorted_attr != 1:
        problems.append(f"{where}: TopK with sorted={sorted_attr} (TensorRT needs sorted=1)")
    if len(node.input) < 2 or node.input[1] not in constants:
        problems.append(f"{where}: TopK's K is not a constant (initializer or Constant); TensorRT needs K "
                        f"at build time")
        return problems
    k = int(np.asarray(constants[node.input[1]]).reshape(-1)[0])
    if k > max_k:
        problems.append(f"{where}: TopK with K = {k} exceeds TensorRT's limit of {max_k}")
    return problems


__all__ = ["GRAPH_FILES", "MANIFEST_NAME", "OPSET", "check_tensorrt_compatibility", "export_onnx",
           "manifest_problems", "model_sha256", "read_manifest", "sha256_file", "tensorrt_operator_table"]
