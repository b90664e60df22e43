"""``sdcpc-export``: the streaming programs of a checkpoint as ONNX graphs or TensorRT engines.

Example::

    sdcpc-export --checkpoint model.safetensors --backend onnx --size 480x640 [--refs 3] [--out DIR]
                 [--build-only] [--overwrite]

``--backend onnx`` writes ``encode.onnx``, ``temporal.onnx`` (temporal models) and ``manifest.json``
(see ``sdcpc_core.runtime.onnx_export``), then checks the graphs against TensorRT's ONNX operator
table and prints the result (exit status 1 when it finds problems; the files are written anyway).
``--backend tensorrt`` compiles both programs with Torch-TensorRT (fp16, CUDA) and writes
``encode.ep``, ``temporal.ep`` and ``manifest.json`` (engine cache key, versions, sha256 of each file).
Unless ``--build-only`` is given, the artefacts are then run once on a random image and compared
with the eager model (maximum logit difference and argmax agreement are printed).

Everything is written into a temporary folder beside ``--out`` that is renamed to ``--out`` at the
end: a failed run leaves nothing behind. An existing ``--out`` is refused unless ``--overwrite``.
``--checkpoint`` takes whatever weights the node takes (``sdcpc_core.weights.resolve``): a shipped name,
an sdcpc checkpoint, a Hugging Face SegFormer folder or an mmseg / NVlabs ``.pth``; one line on stderr
says what was loaded. Errors (missing or unusable checkpoint, bad size, missing Torch-TensorRT) are one
sentence on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

from ..atomic_files import staging_folder
from .cli import (
    ToolParser,
    UserError,
    announce,
    at_least,
    check_output_folder,
    image_size,
    open_weights,
    output_stem,
    run_tool,
)

PROG = "sdcpc-export"


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog=PROG, description="Export an SD-CPC checkpoint's streaming programs to ONNX or TensorRT.")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: a shipped name, an sdcpc checkpoint, a Hugging Face SegFormer folder or an "
                             "mmseg .pth")
    parser.add_argument("--backend", required=True, choices=("onnx", "tensorrt"), help="what to build")
    parser.add_argument("--size", required=True, type=image_size, help="input image size HEIGHTxWIDTH, e.g. 480x640")
    parser.add_argument("--refs", type=at_least(1), default=3, help="number of cached reference frames (default 3)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <checkpoint name>-<backend>-<H>x<W>-r<refs> beside it)")
    parser.add_argument("--build-only", action="store_true", help="skip the comparison run against the eager model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def _default_out(stem: Path, backend: str, size: tuple[int, int], refs: int) -> Path:
    return stem.with_name(f"{stem.name}-{backend}-{size[0]}x{size[1]}-r{refs}")


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _agreement(reference, candidate) -> str:
    difference = (reference.float() - candidate.float().to(reference.device)).abs().max().item()
    same = (reference.argmax(1) == candidate.to(reference.device).argmax(1)).float().mean().item()
    return f"max |logit difference| {difference:.2e}, argmax agreement {100 * same:.3f}%"


# ------------------------------------------------------------------------------------ onnx
def _export_onnx(model, folder: Path, size, refs: int, checkpoint_sha: str, build_only: bool) -> int:
    from ..runtime.onnx_export import check_tensorrt_compatibility, export_onnx, tensorrt_operator_table

    manifest = export_onnx(model, folder, size[0], size[1], refs, checkpoint_sha256=checkpoint_sha)
    table = tensorrt_operator_table()
    source = f"{table['source']['document']}, TensorRT {table['tensorrt_version']}"
    problems = {name: check_tensorrt_compatibility(folder / graph["file"])
                for name, graph in manifest["graphs"].items()}
    manifest["tensorrt_compatibility"] = {"operator_table": source, "problems": problems}
    _write_json(folder / "manifest.json", manifest)
    print(f"TensorRT compatibility check ({source}):")
    for name, found in problems.items():
        print(f"  {manifest['graphs'][name]['file']}: " + ("ok" if not found else f"{len(found)} problem(s)"))
        for problem in found:
            print(f"    - {problem}")
    if not build_only:
        _verify_onnx(model, folder, manifest, size, refs)
    return 1 if any(problems.values()) else 0


def _verify_onnx(model, folder: Path, manifest: dict, size, refs: int) -> None:
    import onnxruntime
    import torch

    from ..runtime.programs import TEMPORAL_INPUTS, encode_output_names

    def session(name):
        return onnxruntime.InferenceSession(str(folder / manifest["graphs"][name]["file"]),
                                            providers=["CPUExecutionProvider"])

    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model.encode_frame(image)
    outputs = dict(zip(encode_output_names(model), session("encode").run(None, {"image": image.numpy()})))
    print(f"  encode vs eager: {_agreement(cache.logits, torch.from_numpy(outputs['logits']))}")
    if "temporal" in manifest["graphs"]:
        with torch.no_grad():
            expected = model.temporal_step(cache, [cache] * refs)

        def stacked(name):
            return torch.from_numpy(outputs[name]).unsqueeze(1).expand(-1, refs, *outputs[name].shape[1:])

        values = (outputs["features"], outputs["coarse"], outputs["probs"], outputs["logits"],
                  stacked("kv").contiguous().numpy(), stacked("coarse").contiguous().numpy(),
                  stacked("probs").contiguous().numpy())
        result = session("temporal").run(None, dict(zip(TEMPORAL_INPUTS, values)))[0]
        print(f"  temporal vs eager: {_agreement(expected, torch.from_numpy(result))}")


# -------------------------------------------------------------------------------- tensorrt
def _check_tensorrt_available() -> None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        raise UserError("the tensorrt backend needs the Python package torch_tensorrt (and tensorrt), which is "
                         "not installed; install them with a CUDA build of torch, or use --backend onnx")
    import torch

    if not torch.cuda.is_available():
        raise UserError("the tensorrt backend needs a CUDA device, and torch sees none; use --backend onnx")


def _export_tensorrt(model, folder: Path, size, refs: int, checkpoint_sha: str, build_only: bool) -> int:
    import datetime
    from dataclasses import asdict

    import torch

    from ..runtime.onnx_export import sha256_file
    from ..runtime.programs import example_inputs
    from ..runtime.tensorrt_backend import TensorRTBackend, torch_tensorrt_saver

    device = torch.device("cuda")
    backend = TensorRTBackend(model, size, device=device, precision="fp16", num_refs=refs,
                              checkpoint_sha256=checkpoint_sha)
    inputs = example_inputs(model, size[0], size[1], refs)
    files = {}
    for name, program in backend.programs.items():
        path = folder / f"{name}.ep"
        torch_tensorrt_saver(program, str(path), inputs[name])
        files[name] = {"file": path.name, "sha256": sha256_file(path)}
    manifest = {
        "format": "sdcpc-tensorrt", "format_version": 1, "model_config": asdict(model.config),
        "checkpoint_sha256": checkpoint_sha, "input_size": list(size), "num_refs": refs, "precision": "fp16",
        "engine_cache_key": backend.cache_key, **backend.environment, "torch": torch.__version__,
        "programs": files, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(folder / "manifest.json", manifest)
    if not build_only:
        image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            cache = model.encode_frame(image)
            expected = model.temporal_step(cache, [cache] * refs) if model.is_temporal else cache.logits
        current = backend.encode(image)
        got = backend.temporal(current, [current] * refs) if model.is_temporal else current.logits
        print(f"  tensorrt (fp16) vs eager (fp32): {_agreement(expected, got)}")
    return 0


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), _run, argv)


def _run(args) -> int:
    if args.out is not None:
        check_output_folder(args.out, args.overwrite)
    if args.backend == "tensorrt":
        _check_tensorrt_available()
    loaded = open_weights(args.checkpoint)
    model = loaded.model
    out = args.out if args.out is not None else _default_out(output_stem(loaded), args.backend, args.size, args.refs)
    check_output_folder(out, args.overwrite)
    announce(PROG, loaded)

    from ..runtime.onnx_export import sha256_file

    checkpoint_sha = sha256_file(loaded.info.checkpoint.file)
    staging = staging_folder(out)  # mode 0777 & ~umask (mkdtemp's 0700 would be published)
    try:
        export = _export_onnx if args.backend == "onnx" else _export_tensorrt
        status = export(model, staging, args.size, args.refs, checkpoint_sha, args.build_only)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"wrote {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return status


if __name__ == "__main__":
    sys.exit(main())
