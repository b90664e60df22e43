"""Our own weights format: a safetensors file with the whole state dict and the model config as metadata.

Metadata: ``format`` (``"sdcpc"``), ``format_version``, ``config`` (JSON of the model config) and the
user's entries (as strings; JSON for anything that is not a string). By convention the key ``classes``
holds the model's class list (``ClassList.to_json``); ``read_class_list`` returns it, and the key
``input_size`` the recommended network input ``[height, width]`` (``read_input_size``): the scale the model
was trained at. A plain state dict of an SD-CPC model (e.g. ``torch.save(model.state_dict())``) is read
the same way, without the config.

The embedded config is checked field by field (type, range, size; ``check_model_config``) before any
model is built from it, so a damaged or hostile header gives one sentence instead of a crash or a huge
allocation: ``num_classes`` is at most ``MAX_CLASSES`` (65535, the mono16 label limit), widths at most
4096, head counts at most 64.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic_files import atomic_write
from ..classes import ClassList
from ..models import SDCPC, SDCPCConfig
from ..models.dssa import MAX_SELECTED_TOKENS
from ..models.sdcpc import BACKBONES, SIZE_MULTIPLE
from .files import read_safetensors_metadata, sniff
from .keymap import MappedState, rename

FORMAT_NAME = "sdcpc"
FORMAT_VERSION = "1"
RESERVED_METADATA = ("format", "format_version", "config")
INPUT_SIZE_KEY = "input_size"  # metadata: the recommended network input [height, width] (JSON)
MAX_INPUT_SIDE = 8192


def convert_sdcpc(state: Mapping, name: str, config: dict | None = None) -> MappedState:
    """Our own keys, unchanged: the source provides every model part."""
    tensors, origin, skipped = rename(state, [])
    return MappedState(name, tensors, origin, skipped, None, config)


def config_from_metadata(metadata: Mapping[str, str], file: Path) -> dict:
    """The model config (``SDCPCConfig`` fields) embedded in our format's metadata, checked field by field
    (``check_model_config``); tuples restored."""
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{file}: sdcpc format version {version!r} is not supported (this version reads "
                         f"{FORMAT_VERSION!r})")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: sdcpc checkpoint without a valid embedded config ({error})") from None
    return check_model_config(config, file)


def _int_check(low: int, high: int) -> tuple[Callable[[object], bool], str]:
    return (lambda v: _is_int(v) and low <= v <= high), f"an integer in {low}..{high}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# What each embedded config field may hold. The integer bounds keep a header from making the loader
# allocate more than a real model of the largest variant would (every tensor size is a product of these).
MAX_CLASSES = 65535  # label images are mono16 at most
MAX_GRIDS = 8
_FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "backbone": (lambda v: v in BACKBONES, f"one of {', '.join(BACKBONES)}"),
    "num_classes": _int_check(1, MAX_CLASSES),
    "temporal": (lambda v: isinstance(v, bool), "true or false"),
    "embed_dim": _int_check(8, 4096),
    "heads": _int_check(1, 64),
    "ssea_dim": _int_check(1, 4096),
    "window_heads": _int_check(1, 64),
    "window_dim": _int_check(1, 4096),
    "window": _int_check(1, 63),
    "dilation": _int_check(1, 64),
    "coarse_tokens": _int_check(1, MAX_SELECTED_TOKENS),
    "num_prototypes": _int_check(1, 64),
    "proj_dim": _int_check(1, 4096),
    "ssea_grids": (lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_GRIDS and all(_is_int(g) and 1 <= g <= 64
                                                                                      for g in v),
                   f"a list of 1..{MAX_GRIDS} integers in 1..64"),
}
_NUMBER_CHECK = (_is_number, "a finite number")  # the remaining fields (rates, dropout, momentum)


def check_model_config(config: object, file: Path | str) -> dict:
    """An embedded model config checked for types, ranges and sizes before anything is built from it:
    the ``SDCPCConfig`` fields as a dict (lists as tuples); ``ValueError`` naming ``file`` and the field."""
    if not isinstance(config, dict):
        raise ValueError(f"{file}: the embedded model config must be a JSON object of SDCPCConfig fields, got "
                         f"{_short(config)}")
    unknown = sorted(set(map(str, config)) - set(SDCPCConfig.field_names()))
    if unknown:
        raise ValueError(f"{file}: the embedded config has unknown field(s) {', '.join(unknown)} (written by a "
                         f"newer version?)")
    absent = [name for name in ("backbone", "num_classes") if name not in config]
    if absent:
        raise ValueError(f"{file}: the embedded model config lacks {' and '.join(absent)}")
    for name, value in config.items():
        ok, accepted = _FIELD_CHECKS.get(name, _NUMBER_CHECK)
        if not ok(value):
            raise ValueError(f"{file}: the embedded model config's {name} must be {accepted}, got {_short(value)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    try:
        SDCPCConfig(**values)  # the relations between fields (multiples of heads, odd window, ...)
    except ValueError as error:
        raise ValueError(f"{file}: the embedded model config is invalid ({error})") from None
    return values


def _short(value: object) -> str:
    """``value`` as it appears in the JSON header, cut to 60 characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read_input_size(metadata: Mapping[str, str], file: Path | str) -> tuple[int, int] | None:
    """The recommended network input size (height, width) in our format's metadata, or None without one."""
    text = metadata.get(INPUT_SIZE_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and len(value) == 2 and all(
            _is_int(v) and SIZE_MULTIPLE <= v <= MAX_INPUT_SIDE and v % SIZE_MULTIPLE == 0 for v in value)):
        raise ValueError(f"{file}: metadata '{INPUT_SIZE_KEY}' must be [height, width], multiples of {SIZE_MULTIPLE} "
                         f"in {SIZE_MULTIPLE}..{MAX_INPUT_SIDE}, got {_short(text)}")
    return value[0], value[1]


def _metadata_string(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def save_weights(model: SDCPC, path: str | os.PathLike, *, metadata: dict | None = None) -> None:
    """Writes ``model`` in our format (safetensors + config), atomically."""
    user = dict(metadata or {})
    reserved = sorted(set(map(str, user)) & set(RESERVED_METADATA))
    if reserved:
        raise ValueError(f"metadata key(s) {', '.join(reserved)} are reserved by the sdcpc format")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(model.config)),
        **{str(k): _metadata_string(v) for k, v in user.items()},
    }
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: save_file(state, temporary, metadata=header), fsync=True)


def read_class_list(path: str | os.PathLike) -> ClassList | None:
    """The class list stored in an sdcpc checkpoint's metadata (key ``classes``), or None without one."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    if sniff(file) != "safetensors":
        return None
    text = read_safetensors_metadata(file).get("classes")
    return None if text is None else ClassList.from_json(text, f"{file} (metadata 'classes')")


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "INPUT_SIZE_KEY", "MAX_CLASSES", "RESERVED_METADATA",
           "check_model_config", "config_from_metadata", "convert_sdcpc", "read_class_list", "read_input_size",
           "save_weights"]
