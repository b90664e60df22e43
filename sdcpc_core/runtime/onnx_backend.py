"""The ``onnxruntime`` back end: the streaming programs exported to ONNX, run by ONNX Runtime.

``OnnxRuntimeBackend(model, input_size, device="cpu", precision="fp32", num_refs=3, cache_dir=None,
checkpoint_sha256=None)`` exports the model's two programs with ``export_onnx`` (opset ``OPSET``)
for its input size and ``num_refs`` references and opens one ``onnxruntime.InferenceSession`` per
graph: ``CPUExecutionProvider`` on the CPU; on a CUDA device the ``CUDAExecutionProvider`` (with
the CPU provider as fallback) when the installed onnxruntime has it, else an error naming what is
installed.

Export cache: with ``cache_dir`` the graphs are kept in ``cache_dir/<key>/`` (the layout and
``manifest.json`` of ``export_onnx``, so an ``sdcpc-export --backend onnx`` folder can be copied
there). The key (``onnx_cache_key``) hashes the model hash (``checkpoint_sha256`` when given, the
sha256 of the model's config and weights otherwise), the input size, ``num_refs``, the opset and
``EXPORT_FORMAT`` (the version of the exported computation). A
cached folder is used when its manifest names the same key fields and every graph's sha256 matches;
otherwise it is exported again (with a warning when a folder was there but unusable). Without
``cache_dir`` the graphs are exported into a temporary folder and read into memory.

Precision: the exported graphs are fp32; only ``precision="fp32"`` is accepted (other values raise a
``ValueError`` naming it). Tensors cross as torch tensors: on the CPU inputs are handed to ONNX
Runtime as numpy views of contiguous fp32 tensors and outputs come back through ``torch.from_numpy``
(no copies); on CUDA, inputs and outputs are bound to torch CUDA memory with I/O binding.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic_files import staging_folder
from ..models.sdcpc import SDCPC, FrameCache
from .backends import Backend
from .onnx_export import OPSET, export_onnx, manifest_problems, model_sha256, read_manifest
from .programs import EXPORT_FORMAT, TEMPORAL_INPUTS


def onnx_cache_key(model_hash: str, input_size: tuple[int, int], num_refs: int, opset: int = OPSET,
                   export_format: int = EXPORT_FORMAT) -> str:
    """Hex key of one export: the model hash, input size ``(H, W)``, number of references, opset and
    ``EXPORT_FORMAT``."""
    fields = {"model": model_hash, "input_size": [int(v) for v in input_size], "num_refs": int(num_refs),
              "opset": int(opset), "export_format": int(export_format)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _manifest_matches(manifest: dict, model_hash: str, checkpoint_sha256: str | None,
                      input_size: tuple[int, int], num_refs: int, opset: int, temporal: bool) -> bool:
    stored_hash = manifest.get("checkpoint_sha256") if checkpoint_sha256 else manifest.get("model_sha256")
    graphs = set(manifest.get("graphs", {}))
    return (stored_hash == model_hash and list(manifest.get("input_size", [])) == list(input_size)
            and manifest.get("num_refs") == num_refs and manifest.get("opset") == opset
            and manifest.get("export_format") == EXPORT_FORMAT
            and graphs == ({"encode", "temporal"} if temporal else {"encode"}))


class OnnxRuntimeBackend(Backend):
    """Runs the ONNX export of ``EncodeFrameProgram`` / ``TemporalStepProgram`` with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, model: SDCPC, input_size: tuple[int, int], device: str | torch.device = "cpu",
                 precision: str = "fp32", num_refs: int = 3, cache_dir: str | Path | None = None,
                 checkpoint_sha256: str | None = None, opset: int = OPSET, session_options=None) -> None:
        if precision != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 graphs only; got precision {precision!r} "
                             f"(accepted: fp32)")
        super().__init__(model, input_size, device, precision, num_refs)
        import onnxruntime

        self._ort = onnxruntime
        self.providers = self._providers()
        self.model.to(torch.device("cpu"))  # export on the CPU; the sessions hold their own weights
        self.opset = opset
        self.checkpoint_sha256 = checkpoint_sha256
        self.model_hash = checkpoint_sha256 or model_sha256(self.model)
        self.cache_key = onnx_cache_key(self.model_hash, self.input_size, num_refs, opset)
        if cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="sdcpc-onnx-") as folder:
                self.manifest = self._export(Path(folder))
                self._open_sessions(Path(folder), session_options)
            self.export_dir = None
        else:
            self.export_dir = Path(cache_dir) / self.cache_key
            self.manifest = self._cached_or_export(self.export_dir)
            self._open_sessions(self.export_dir, session_options)

    # ------------------------------------------------------------------------- set-up
    def _providers(self) -> list[str]:
        available = self._ort.get_available_providers()
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise ValueError(f"the onnxruntime backend cannot run on {self.device}: the installed onnxruntime offers "
                         f"{', '.join(available)} (for CUDA install onnxruntime-gpu); use device 'cpu'")

    def _export(self, folder: Path) -> dict:
        height, width = self.input_size
        return export_onnx(self.model, folder, height, width, self.num_refs,
                           checkpoint_sha256=self.checkpoint_sha256, opset=self.opset)

    def _cached_or_export(self, folder: Path) -> dict:
        if folder.exists():
            try:
                manifest = read_manifest(folder)
                problems = manifest_problems(folder, manifest)
                if not _manifest_matches(manifest, self.model_hash, self.checkpoint_sha256, self.input_size,
                                         self.num_refs, self.opset, self.is_temporal):
                    problems.append("its manifest describes another model, size, num_refs or opset")
            except (ValueError, KeyError, TypeError) as error:
                problems = [str(error)]
            if not problems:
                return manifest
            warnings.warn(f"ONNX export cache {folder} is unusable ({'; '.join(problems)}); exporting again",
                          RuntimeWarning, stacklevel=3)
            shutil.rmtree(folder)
        # Export next to the final folder, then rename it into place: no half-written cache entry.
        staging = staging_folder(folder)  # mode 0777 & ~umask (mkdtemp's 0700 would be published)
        try:
            manifest = self._export(staging)
            staging.replace(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def _open_sessions(self, folder: Path, session_options) -> None:
        def session(name: str):
            path = folder / self.manifest["graphs"][name]["file"]
            return self._ort.InferenceSession(path.read_bytes(), sess_options=session_options,
                                              providers=self.providers)

        self._encode_session = session("encode")
        self._temporal_session = session("temporal") if self.is_temporal else None
        self._output_shapes = {
            name: {o["name"]: tuple(o["shape"]) for o in graph["outputs"]}
            for name, graph in self.manifest["graphs"].items()
        }

    # -------------------------------------------------------------------------- running
    def _run(self, name: str, session, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        output_names = [o.name for o in session.get_outputs()]
        if self.device.type == "cpu":
            feeds = {key: _as_numpy(value) for key, value in inputs.items()}
            return [torch.from_numpy(array) for array in session.run(output_names, feeds)]
        return self._run_bound(name, session, inputs, output_names)

    def _run_bound(self, name: str, session, inputs: dict[str, torch.Tensor],
                   output_names: list[str]) -> list[torch.Tensor]:
        """CUDA: inputs and outputs stay in torch CUDA memory (ONNX Runtime I/O binding)."""
        import numpy as np

        binding = session.io_binding()
        device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        keep = []
        for key, value in inputs.items():
            value = value.to(device=self.device, dtype=torch.float32).contiguous()
            keep.append(value)
            binding.bind_input(key, "cuda", device_id, np.float32, list(value.shape), value.data_ptr())
        outputs = []
        for key in output_names:
            out = torch.empty(self._output_shapes[name][key], device=self.device, dtype=torch.float32)
            binding.bind_output(key, "cuda", device_id, np.float32, list(out.shape), out.data_ptr())
            outputs.append(out)
        session.run_with_iobinding(binding)
        return outputs

    def _check_image(self, image: torch.Tensor) -> None:
        expected = (1, 3, *self.input_size)
        if tuple(image.shape) != expected:
            raise ValueError(f"the onnxruntime backend was exported for images of shape {expected}, got "
                             f"{tuple(image.shape)}")

    def encode(self, image: torch.Tensor) -> FrameCache:
        """Normalised image ``(1, 3, H, W)`` -> the frame's ``FrameCache`` (per-frame models: logits only)."""
        self._check_image(image)
        return self.frame_cache(self._run("encode", self._encode_session, {"image": image}))

    def temporal(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(1, K, ceil(H/4), ceil(W/4))`` of ``current`` given ``num_refs`` references (oldest first)."""
        self.check_temporal_call(current, refs, fixed_refs=self.is_temporal)
        assert current.logits is not None  # checked by check_temporal_call
        if not self.is_temporal:
            return current.logits
        inputs = dict(zip(TEMPORAL_INPUTS, self.temporal_inputs(current, refs)))
        return self._run("temporal", self._temporal_session, inputs)[0]


def _as_numpy(tensor: torch.Tensor):
    """A numpy view of ``tensor`` as contiguous fp32 on the CPU (copies only when that is not already so)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
        tensor = tensor.to(device="cpu", dtype=torch.float32)
    return tensor.contiguous().numpy()


__all__ = ["OnnxRuntimeBackend", "onnx_cache_key"]
