"""Reading checkpoint files safely: safetensors, or PyTorch files with ``torch.load(..., weights_only=True)``.

The kind of a file is told by its first bytes (``sniff``), not trusted from its name: a pickle named
``.safetensors`` is refused, and a file holding arbitrary Python objects is never unpickled.
"""
from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ACCEPTED_FORMATS = (
    "sdcpc safetensors (save_weights) or an SD-CPC state dict",
    "Hugging Face SegFormer folder (config.json + model.safetensors) or its model.safetensors",
    "NVlabs SegFormer / MiT .pth (mmseg 0.x)",
    "mmseg 1.x MixVisionTransformer .pth (backbone only)",
    "torchvision ResNet-101 state dict (.pth or .safetensors)",
)

SHOWN = 5  # keys named per category in error messages


def sniff(file: Path) -> str:
    """'torch' (zip or legacy pickle), 'safetensors' or 'unknown', from the first bytes."""
    with open(file, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, like a pickle
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    return "unknown"


def _unreadable(file: Path, error: Exception) -> ValueError:
    return ValueError(f"{file} is not a readable safetensors file ({error})")


def read_safetensors_metadata(file: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty when it has none)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise _unreadable(file, error) from None


def read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a PyTorch (pickle/zip) file is refused."""
    kind = sniff(file)
    if kind == "torch":
        raise ValueError(f"{file} is not a safetensors file (it looks like a pickle/zip PyTorch file written by "
                         f"torch.save) and will not be unpickled as one; name it .pth to have it read with "
                         f"torch.load(weights_only=True)")
    metadata = read_safetensors_metadata(file)
    try:
        return load_file(str(file)), metadata
    except Exception as error:  # safetensors raises its own error types
        raise _unreadable(file, error) from None


def read_torch(file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a PyTorch file, loaded with ``weights_only=True`` (see ``unwrap``)."""
    return unwrap(load_torch(file), file)


def read_torch_meta(obj: object) -> Mapping | None:
    """The ``meta`` mapping of a ``torch.load`` result (mmseg / NVlabs checkpoints keep class names there)."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return meta if isinstance(meta, Mapping) else None


def load_torch(file: Path) -> object:
    """Whatever a PyTorch file holds, loaded with ``weights_only=True``; ``ValueError`` naming the file."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        raise ValueError(
            f"{file} contains arbitrary Python objects{f' (e.g. {found[1]})' if found else ''}, not only tensors, "
            f"and will not be unpickled (that could run code); extract its state dict in a trusted environment "
            f"and save that with torch.save or safetensors") from None
    except Exception as error:
        raise ValueError(f"{file} is not a readable PyTorch file ({type(error).__name__}: {error})") from None
    return obj


def read_json_object(file: Path) -> dict:
    """The JSON object (a mapping) in ``file``; ``ValueError`` naming the file when it is not one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object (a mapping of settings), got a {type(data).__name__}")
    return data


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap(obj: object, file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``torch.load`` result: top level, or under ``state_dict`` / ``model``."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("state_dict", "model", "module"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        found = f"keys {', '.join(map(str, list(obj)[:SHOWN]))}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file}: no state dict found (a dict of tensors at the top level or under "
                         f"'state_dict' / 'model'; got {found}); accepted formats: " + "; ".join(ACCEPTED_FORMATS))
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


__all__ = ["ACCEPTED_FORMATS", "SHOWN", "load_torch", "read_json_object", "read_safetensors",
           "read_safetensors_metadata", "read_torch", "read_torch_meta", "sniff", "unwrap"]
