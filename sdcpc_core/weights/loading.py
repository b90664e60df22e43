"""Loading a checkpoint into a model: format detection, key checks against the model, ``LoadReport``.

``load_weights`` reads the file (:mod:`.files`), detects its format from the metadata and the key
names, maps it onto the model's key names (:mod:`.format`, :mod:`.segformer`, :mod:`.resnet`),
checks the result against ``model.state_dict()`` and loads it in one ``load_state_dict``; the rules
are in the package docstring (:mod:`sdcpc_core.weights`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import SDCPC, SDCPCConfig
from ..models.mit import MIT_SPECS
from .files import (
    ACCEPTED_FORMATS,
    SHOWN,
    load_torch,
    read_json_object,
    read_safetensors,
    read_torch_meta,
    sniff,
    unwrap,
)
from .format import FORMAT_NAME, config_from_metadata, convert_sdcpc
from .keymap import MappedState
from .resnet import convert_resnet
from .segformer import convert_hf, convert_mmseg, convert_nvlabs

# Model keys whose shape depends on the number of classes.
CLASS_KEYS = ("decode_head.classifier.", "temporal_classifier.", "prototypes.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (strict mode)."""


@dataclass
class LoadReport:
    """What ``load_weights`` did: model keys loaded / left at initialisation, checkpoint keys unused."""

    source_format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys left at initialisation
    skipped: list[str] = field(default_factory=list)  # checkpoint keys not used
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)"

    def __str__(self) -> str:
        text = f"{self.source_format}: loaded {len(self.loaded)} tensors"
        if self.missing:
            text += f", {len(self.missing)} left at initialisation ({_group(self.missing)})"
        if self.skipped:
            text += f", {len(self.skipped)} checkpoint tensors skipped ({_group(self.skipped)})"
        if self.mismatched:
            text += f", {len(self.mismatched)} shape mismatches"
        return text


def _group(keys: list[str]) -> str:
    """Short summary of key names: ``"ssea (12), decode_head.classifier (2)"``."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        name = ".".join(parts[:2]) if parts[0] == "decode_head" and len(parts) > 2 else parts[0]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({count})" for name, count in counts.items())


# ------------------------------------------------------------------------------ format detection
def _detect(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, file: Path) -> MappedState:
    """Picks the converter from the metadata and the key names."""
    if metadata and metadata.get("format") == FORMAT_NAME:
        return convert_sdcpc(state, "sdcpc safetensors", config_from_metadata(metadata, file))
    keys = list(state)

    def has(pattern: str) -> bool:
        return any(re.search(pattern, k) for k in keys)

    if has(r"(^|\.)patch_embeddings\.\d+\.|^(segformer\.)?stages\.\d+\.patch_embeddings\."):
        return convert_hf(state)
    if has(r"^(backbone\.)?patch_embed[1-4]\."):
        return convert_nvlabs(state)
    if has(r"^(backbone\.)?layers\.\d+\.0\.projection\."):
        return convert_mmseg(state)
    if has(r"^backbone\.(stages\.\d+\.patch_embed\.|layer1\.)"):
        return convert_sdcpc(state, "SD-CPC state dict")
    if has(r"^layer1\.0\.conv1\.weight$") and "conv1.weight" in state:
        return convert_resnet(state)
    shown = ", ".join(keys[:SHOWN]) or "none"
    raise ValueError(f"{file}: unrecognised checkpoint layout (first keys: {shown}); accepted formats: "
                     + "; ".join(ACCEPTED_FORMATS))


@dataclass
class Checkpoint:
    """A checkpoint read from disk: its tensors in model key names and what it says about itself."""

    mapped: MappedState
    file: Path  # the weights file read (inside ``folder`` for a Hugging Face folder)
    folder: Path | None = None  # the Hugging Face folder given, if any
    metadata: dict[str, str] | None = None  # safetensors header metadata
    meta: Mapping | None = None  # the ``meta`` entry of a PyTorch checkpoint (mmseg / NVlabs)
    hf_config: dict | None = None  # the folder's config.json


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (a file, or a Hugging Face folder), read without unpickling anything."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    file, folder, hf_config = path, None, None
    if path.is_dir():
        folder = path
        config = path / "config.json"
        if config.is_file():
            hf_config = read_json_object(config)
            model_type = hf_config.get("model_type")
            if model_type not in (None, "segformer"):
                raise ValueError(f"{path} holds a Hugging Face {model_type!r} model, not SegFormer")
        candidates = [path / name for name in ("model.safetensors", "pytorch_model.bin")]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise FileNotFoundError(f"{path} is a folder without model.safetensors or pytorch_model.bin (expected a "
                                    f"Hugging Face SegFormer folder: config.json + model.safetensors)")
    metadata = meta = None
    if file.suffix == ".safetensors" or sniff(file) == "safetensors":
        state, metadata = read_safetensors(file)
    elif sniff(file) == "torch":
        obj = load_torch(file)
        state, meta = unwrap(obj, file), read_torch_meta(obj)
    else:
        raise ValueError(f"{file} is neither a safetensors nor a PyTorch file; accepted formats: "
                         + "; ".join(ACCEPTED_FORMATS))
    return Checkpoint(_detect(state, metadata, file), file, folder, metadata, meta, hf_config)


# ---------------------------------------------------------------------------------- validation
def _describe(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None:
        return f"the {type(model).__name__} model"
    kind = "SD-CPC" if config.temporal else "per-frame SegFormer"
    return (f"the {kind} model (backbone {config.backbone}, embed_dim {config.embed_dim}, "
            f"{config.num_classes} classes)")


def _shape(t: torch.Tensor | torch.Size) -> str:
    return "(" + ", ".join(map(str, t.shape if isinstance(t, torch.Tensor) else t)) + ")"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


def mit_shape(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(channels, depths) of a MiT encoder in model key names, or None when not inferable."""
    channels, depths = [], []
    for i in range(4):
        proj = tensors.get(f"backbone.stages.{i}.patch_embed.proj.weight")
        if proj is None:
            return None
        blocks = {int(m[1]) for k in tensors if (m := re.match(rf"backbone\.stages\.{i}\.blocks\.(\d+)\.", k))}
        channels.append(proj.shape[0])
        depths.append(max(blocks) + 1 if blocks else 0)
    return tuple(channels), tuple(depths)


def mit_name(channels: tuple[int, ...], depths: tuple[int, ...]) -> str:
    for name, spec in MIT_SPECS.items():
        if spec.channels == channels and spec.depths == depths:
            return f"{name} (channels {'/'.join(map(str, channels))}, depths {'/'.join(map(str, depths))})"
    return f"a MiT with channels {'/'.join(map(str, channels))}, depths {'/'.join(map(str, depths))}"


def _encoder_problem(tensors: Mapping[str, torch.Tensor], model: torch.nn.Module) -> str | None:
    """A sentence when the checkpoint's encoder is not the model's (strict mode), else None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    source_mit = any(k.startswith("backbone.stages.") for k in tensors)
    source_resnet = any(k.startswith("backbone.layer1.") for k in tensors)
    if config.backbone == "resnet101" and source_mit:
        return "its encoder is a MiT (SegFormer) but the model's backbone is resnet101"
    if config.backbone in MIT_SPECS and source_resnet and not source_mit:
        return f"its encoder is a ResNet but the model's backbone is {config.backbone}"
    source = mit_shape(tensors) if source_mit else None
    spec = MIT_SPECS.get(config.backbone)
    if source and spec and source != (spec.channels, spec.depths):
        return f"its encoder is {mit_name(*source)} but the model's is {mit_name(spec.channels, spec.depths)}"
    return None


def _plan(model: torch.nn.Module, mapped: MappedState, file: Path, strict: bool, ignore_classifier: bool
          ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The dict to load and the report; raises CheckpointError (strict) before anything is loaded."""
    target = model.state_dict()
    tensors = dict(mapped.tensors)
    skipped = list(mapped.skipped)
    if ignore_classifier:
        for key in [k for k in tensors if k.startswith(CLASS_KEYS)]:
            del tensors[key]
            skipped += mapped.origin[key]
    unexpected = [k for k in tensors if k not in target]
    mismatched = [k for k in tensors if k in target and tensors[k].shape != target[k].shape]

    def required(key: str) -> bool:
        return ((mapped.provides is None or key.startswith(mapped.provides))
                and not key.endswith(".num_batches_tracked")
                and not (ignore_classifier and key.startswith(CLASS_KEYS)))

    absent = [k for k in target if required(k) and k not in tensors]
    if strict:
        _check_strict(model, mapped, file, tensors, target, absent, unexpected, mismatched, ignore_classifier)
    load = {k: t.to(dtype=target[k].dtype) for k, t in tensors.items() if k in target and k not in mismatched}
    report = LoadReport(
        source_format=mapped.format,
        loaded=list(load),
        missing=[k for k in target if k not in load and not k.endswith(".num_batches_tracked")],
        skipped=skipped + [s for k in unexpected + mismatched for s in mapped.origin[k]],
        mismatched=[f"{k}: checkpoint {_shape(tensors[k])} vs model {_shape(target[k])}" for k in mismatched],
    )
    return load, report


def _check_strict(model, mapped, file, tensors, target, absent, unexpected, mismatched, ignore_classifier) -> None:
    where = f"cannot load {file} ({mapped.format}) into {_describe(model)}"
    problem = _encoder_problem(tensors, model)
    if problem:
        raise CheckpointError(f"{where}: {problem}; build the model with the matching variant, or pass "
                              f"strict=False to load only the tensors whose shapes agree")
    fuse = "decode_head.linear_fuse.weight"
    if fuse in tensors and fuse in target and tensors[fuse].shape[0] != target[fuse].shape[0]:
        width, model_width = tensors[fuse].shape[0], target[fuse].shape[0]
        raise CheckpointError(f"{where}: its decode head is {width} wide but the model's is {model_width}; build "
                              f"the model with embed_dim={width} (build_model(..., embed_dim={width})) or pass "
                              f"strict=False to load only the tensors whose shapes agree (the backbone)")
    classifier = "decode_head.classifier.weight"
    if not ignore_classifier and classifier in tensors and classifier in target:
        classes, model_classes = tensors[classifier].shape[0], target[classifier].shape[0]
        if classes != model_classes:
            raise CheckpointError(f"{where}: the checkpoint's classifier has {classes} classes but the model has "
                                  f"{model_classes}; pass ignore_classifier=True to load everything else and keep "
                                  f"the model's classifier (e.g. to fine-tune on a new class set), or build the "
                                  f"model with num_classes={classes}")
    if not (absent or unexpected or mismatched):
        return
    parts = []
    if absent:
        parts.append(f"{len(absent)} missing key(s) [{_listing(absent)}]")
    if unexpected:
        names = [s for k in unexpected for s in mapped.origin[k]]
        parts.append(f"{len(names)} unexpected key(s) [{_listing(names)}]")
    if mismatched:
        shapes = [f"{k}: checkpoint {_shape(tensors[k])} vs model {_shape(target[k])}" for k in mismatched]
        parts.append(f"{len(shapes)} shape mismatch(es) [{_listing(shapes)}]")
    hint = _config_hint(model, mapped.config)
    raise CheckpointError(f"{where}: {', '.join(parts)}{hint}; pass strict=False to load only the matching tensors")


def _config_hint(model: torch.nn.Module, config: dict | None) -> str:
    model_config = getattr(model, "config", None)
    if config is None or model_config is None:
        return ""
    differs = [f"{k} {v!r} vs {getattr(model_config, k)!r}" for k, v in config.items()
               if getattr(model_config, k, v) != v]
    if not differs:
        return ""
    return f" (the checkpoint's config differs in {', '.join(differs)}: load_model(path) builds its model)"


# ------------------------------------------------------------------------------------ public API
def load_weights(model: torch.nn.Module, path: str | os.PathLike | Checkpoint, *, strict: bool = True,
                 ignore_classifier: bool = False) -> LoadReport:
    """Loads a checkpoint of any accepted format (or one ``read_checkpoint`` read) into ``model`` (see
    :mod:`sdcpc_core.weights`)."""
    checkpoint = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    mapped, file = checkpoint.mapped, checkpoint.file
    load, report = _plan(model, mapped, file, strict, ignore_classifier)
    result = model.load_state_dict(load, strict=False)
    if result.unexpected_keys:  # cannot happen: every key was checked against model.state_dict()
        raise RuntimeError(f"internal error: unexpected keys {result.unexpected_keys[:SHOWN]}")
    return report


def load_model(path: str | os.PathLike | Checkpoint, *, map_location: str | torch.device = "cpu") -> SDCPC:
    """Builds the model saved by ``save_weights`` from its embedded config; returned in eval mode.

    The config is checked against the file's tensors on the meta device first, so a header that does
    not describe its tensors is refused before any memory is allocated for the model."""
    checkpoint = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    mapped, file = checkpoint.mapped, checkpoint.file
    if mapped.config is None:
        raise ValueError(f"{file} is not an sdcpc checkpoint (found {mapped.format}); for other formats build the "
                         f"model with build_model(variant, num_classes) and call load_weights(model, path)")
    config = SDCPCConfig(**mapped.config)
    check_fits(config, mapped, file)
    model = SDCPC(config)
    load, _ = _plan(model, mapped, file, strict=True, ignore_classifier=False)
    model.load_state_dict(load, strict=False)
    return model.to(map_location).eval()


def check_fits(config: SDCPCConfig, mapped: MappedState, file: Path) -> None:
    """``ValueError`` when a model built from ``config`` would not take ``mapped`` strictly; checked on the meta
    device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        target = SDCPC(config).state_dict()
    tensors = mapped.tensors
    problems = [f"{k} is {_shape(tensors[k])} in the file but {_shape(target[k])} in the model" for k in tensors
                if k in target and tensors[k].shape != target[k].shape]
    problems += [f"the model has no {k}" for k in tensors if k not in target]
    problems += [f"the file lacks {k}" for k in target if k not in tensors and not k.endswith(".num_batches_tracked")
                 and (mapped.provides is None or k.startswith(mapped.provides))]
    if problems:
        raise ValueError(f"{file}: its model config ({config.backbone}, {config.num_classes} classes, embed_dim "
                         f"{config.embed_dim}) does not describe its tensors: {_listing(problems)}")


__all__ = ["CLASS_KEYS", "Checkpoint", "CheckpointError", "LoadReport", "check_fits", "load_model", "load_weights",
           "mit_name", "mit_shape", "read_checkpoint"]
