"""Reading and writing model weights: our own format and the released SegFormer / ResNet weights.

``load_weights(model, path, strict=True, ignore_classifier=False)`` accepts:

1. **sdcpc** -- our own safetensors files written by ``save_weights`` (metadata ``format = "sdcpc"``,
   the model config as JSON). A plain state dict of an SD-CPC model (e.g. ``torch.save(model.state_dict())``)
   is read the same way, without the config.
2. **Hugging Face SegFormer** -- a folder with ``config.json`` + ``model.safetensors`` (``nvidia/mit-b*``:
   encoder + ImageNet classifier; ``nvidia/segformer-b*-finetuned-*``: encoder + decode head), or a
   bare ``model.safetensors`` with HF key names. Both the classic hub names
   (``segformer.encoder.block.{i}.{j}.attention.self.query`` ...) and the module names of
   transformers 5.x (``segformer.stages.{i}.blocks.{j}.attention.q_proj`` ...) are understood, with or
   without the ``segformer.`` prefix. HF keeps key and value apart; they are concatenated into
   ``attn.kv`` (rows: key, then value).
3. **NVlabs SegFormer** (mmseg 0.x) ``.pth`` files (``backbone.patch_embed1`` ..., ``decode_head.linear_c4``
   ..., ``decode_head.linear_pred``) and the ImageNet MiT release (same encoder names without the
   ``backbone.`` prefix, ``head.*`` classifier); **mmseg 1.x** ``MixVisionTransformer`` backbones
   (``backbone.layers.{i}.{0,1,2}`` ...; the fused q/k/v ``in_proj`` is split, the 1x1 conv FFN weights
   become linear weights). mmseg 1.x's ``SegformerHead`` is a different architecture (a ConvModule
   with BN per level), so only the encoder of those files is used.
4. **torchvision ResNet-101** state dicts (``conv1``, ``bn1``, ``layer1..4``, ``fc``) as ``.pth`` or
   ``.safetensors``, mapped onto ``backbone.*`` of ``sdcpc_r101``.

The format is detected from the path (folder, safetensors or PyTorch file, checked by content) and
the key names. PyTorch files are read only with ``torch.load(..., weights_only=True)``: a file
holding arbitrary Python objects is refused, never unpickled.

Semantics
---------
* Each source format provides a known set of model parts: our format -> everything; a full SegFormer
  (HF with decode head, NVlabs SegFormer) -> ``backbone.*`` and ``decode_head.*``; backbone-only
  sources (HF/NVlabs ImageNet MiT, mmseg 1.x, torchvision ResNet) -> ``backbone.*``. Model keys
  outside what the source provides (SSEA, DSSA, temporal classifier, projector, prototypes; plus the
  decode head for backbone-only sources) are expected to be missing: they are reported in
  ``LoadReport.missing`` and are not an error. ``num_batches_tracked`` may be absent anywhere (and
  is not listed in ``missing``).
* ``strict=True`` (default): an error if the source lacks a key it should provide, has keys that map
  nowhere, or has any shape mismatch. Known heads that the model has no place for go to
  ``LoadReport.skipped`` instead: the ImageNet classifiers of backbone-only sources (HF
  ``classifier.*``, NVlabs ``head.*``, torchvision ``fc.*``), mmseg's decode and auxiliary heads
  that do not match ours, and the unused ``decode_head.conv_seg`` of the NVlabs release. The error
  is one sentence naming the file, the format, and the first missing / unexpected / mismatched keys.
  Before that generic check come three specific ones: a different encoder (e.g. MiT-B2 weights into
  a B0 model), a different decoder width (e.g. a 768-wide SegFormer-B2 head into a 256-wide model:
  build with ``embed_dim=768``), and a different class count of the classifier.
* ``ignore_classifier=True`` skips the class-dependent tensors (``decode_head.classifier``,
  ``temporal_classifier``, ``prototypes``) of the checkpoint: the model keeps its own (reported in
  ``missing``), e.g. to fine-tune on a new class set.
* ``strict=False`` loads every key that maps onto the model with the right shape and reports the rest
  (``missing``, ``skipped``, ``mismatched``); it never errors on missing, unexpected or mismatched keys,
  only on unreadable files.
* Nothing is loaded half-way: the complete mapped dict is built and validated first, then loaded with
  one ``model.load_state_dict(..., strict=False)``; after any error the model is unchanged. Tensors
  are cast to the dtype of the model tensor they replace.
* A missing file or folder raises ``FileNotFoundError``; unreadable or unrecognised files raise
  ``ValueError`` (``CheckpointError`` for the strict-mode key checks, also a ``ValueError``).

``save_weights(model, path, metadata=None)`` writes our format atomically (a temporary file in the
same folder, then ``os.replace``): the whole state dict (prototype buffers included) plus metadata
``format``, ``format_version``, ``config`` (JSON of the model config) and the user's entries (as strings).
``load_model(path)`` builds the model from that embedded config and loads it strictly. By convention
the metadata key ``classes`` holds the model's class list (``ClassList.to_json``); ``read_class_list``
returns it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .io import atomic_write
from .classes import ClassList
from .models import SDCPC, SDCPCConfig
from .models.mit import MIT_SPECS

FORMAT_NAME = "sdcpc"
FORMAT_VERSION = "1"
RESERVED_METADATA = ("format", "format_version", "config")

# Model keys whose shape depends on the number of classes.
CLASS_KEYS = ("decode_head.classifier.", "temporal_classifier.", "prototypes.")

ACCEPTED_FORMATS = (
    "sdcpc safetensors (save_weights) or an SD-CPC state dict",
    "Hugging Face SegFormer folder (config.json + model.safetensors) or its model.safetensors",
    "NVlabs SegFormer / MiT .pth (mmseg 0.x)",
    "mmseg 1.x MixVisionTransformer .pth (backbone only)",
    "torchvision ResNet-101 state dict (.pth or .safetensors)",
)

_SHOWN = 5  # keys named per category in error messages


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


# ----------------------------------------------------------------------------------- key mapping
Rule = tuple[str, "str | Callable[[re.Match], str]"]


def _stage(template: str) -> Callable[[re.Match], str]:
    """Replacement for 1-based stage numbers: ``{s}`` is group 1 minus one, ``{b}`` group 2."""
    return lambda m: template.format(s=int(m[1]) - 1, b=m[2] if m.re.groups > 1 else "")


_MIX_FFN = [(r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv.")]

_HF_RULES: list[Rule] = [
    # classic hub names
    (r"^encoder\.patch_embeddings\.(\d+)\.", r"backbone.stages.\1.patch_embed."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"backbone.stages.\1.norm."),
    # transformers 5.x module names
    (r"^stages\.(\d+)\.patch_embeddings\.", r"backbone.stages.\1.patch_embed."),
    (r"^stages\.(\d+)\.blocks\.", r"backbone.stages.\1.blocks."),
    (r"^stages\.(\d+)\.layer_norm\.", r"backbone.stages.\1.norm."),
    # inside a stage / block (both styles)
    (r"\.patch_embed\.layer_norm\.", ".patch_embed.norm."),
    (r"\.(?:layer_norm_1|layernorm_before)\.", ".norm1."),
    (r"\.(?:layer_norm_2|layernorm_after)\.", ".norm2."),
    (r"\.attention\.(?:self\.query|q_proj)\.", ".attn.q."),
    (r"\.attention\.(?:self\.key|k_proj)\.", ".attn.k."),
    (r"\.attention\.(?:self\.value|v_proj)\.", ".attn.v."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", ".attn.sr."),
    (r"\.attention\.(?:self|sequence_reduction)\.layer_norm\.", ".attn.norm."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    *_MIX_FFN,
    # decode head
    (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.", r"decode_head.linear_c.\1."),
    (r"^decode_head\.batch_norm\.", "decode_head.bn."),
]
_HF_SKIP = (r"^classifier\.",)

_NVLABS_RULES: list[Rule] = [
    (r"^(?:backbone\.)?patch_embed([1-4])\.", _stage("backbone.stages.{s}.patch_embed.")),
    (r"^(?:backbone\.)?block([1-4])\.(\d+)\.", _stage("backbone.stages.{s}.blocks.{b}.")),
    (r"^(?:backbone\.)?norm([1-4])\.", _stage("backbone.stages.{s}.norm.")),
    *_MIX_FFN,
    (r"^decode_head\.linear_c([1-4])\.proj\.", _stage("decode_head.linear_c.{s}.")),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.linear_fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
]
_NVLABS_SKIP = (r"^head\.", r"^decode_head\.conv_seg\.", r"^auxiliary_head\.")

_MMSEG_RULES: list[Rule] = [
    (r"^(?:backbone\.)?layers\.(\d+)\.0\.projection\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"^(?:backbone\.)?layers\.(\d+)\.0\.norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (r"^(?:backbone\.)?layers\.(\d+)\.1\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^(?:backbone\.)?layers\.(\d+)\.2\.", r"backbone.stages.\1.norm."),
    (r"\.attn\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.attn\.out_proj\.", ".attn.proj."),
    (r"\.ffn\.layers\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.dwconv."),
    (r"\.ffn\.layers\.4\.", ".mlp.fc2."),
]
_MMSEG_SKIP = (r"^decode_head\.", r"^auxiliary_head\.")

_RESNET_RULES: list[Rule] = [(r"^(conv1|bn1|layer[1-4])\.", r"backbone.\1.")]
_RESNET_SKIP = (r"^fc\.",)


@dataclass
class _Mapped:
    """A checkpoint translated to model key names."""

    format: str
    tensors: dict[str, torch.Tensor]  # model key -> tensor
    origin: dict[str, tuple[str, ...]]  # model key -> checkpoint key(s) it came from
    skipped: list[str]  # checkpoint keys of known heads the model has no place for
    provides: tuple[str, ...] | None  # model key prefixes the source provides; None: everything
    config: dict | None = None  # embedded model config (our format)


def _rename(state: Mapping[str, torch.Tensor], rules: list[Rule], skip: tuple[str, ...] = ()) -> tuple[
        dict[str, torch.Tensor], dict[str, tuple[str, ...]], list[str]]:
    tensors, origin, skipped = {}, {}, []
    for key, tensor in state.items():
        if any(re.search(pattern, key) for pattern in skip):
            skipped.append(key)
            continue
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new, count=1)
        tensors[new], origin[new] = tensor, (key,)
    return tensors, origin, skipped


def _merge_kv(tensors: dict, origin: dict) -> None:
    """``*.attn.k.*`` + ``*.attn.v.*`` -> ``*.attn.kv.*`` (rows: key then value), in place."""
    for key in [k for k in tensors if re.search(r"\.attn\.k\.(weight|bias)$", k)]:
        value_key = key.replace(".attn.k.", ".attn.v.")
        if value_key in tensors:
            fused = key.replace(".attn.k.", ".attn.kv.")
            tensors[fused] = torch.cat([tensors.pop(key), tensors.pop(value_key)])
            origin[fused] = origin.pop(key) + origin.pop(value_key)


def _split_qkv(tensors: dict, origin: dict) -> None:
    """``*.attn.qkv.*`` (rows q, k, v) -> ``*.attn.q.*`` and ``*.attn.kv.*``, in place."""
    for key in [k for k in tensors if re.search(r"\.attn\.qkv\.(weight|bias)$", k)]:
        qkv, source = tensors.pop(key), origin.pop(key)
        if qkv.shape[0] % 3:
            tensors[key], origin[key] = qkv, source  # left to be reported as unexpected
            continue
        channels = qkv.shape[0] // 3
        for name, part in (("q", qkv[:channels]), ("kv", qkv[channels:])):
            new = key.replace(".attn.qkv.", f".attn.{name}.")
            tensors[new], origin[new] = part, source


def _head_provided(tensors: dict) -> tuple[str, ...]:
    return ("backbone.", "decode_head.") if any(k.startswith("decode_head.") for k in tensors) else ("backbone.",)


def _convert_sdcpc(state: Mapping, name: str, config: dict | None = None) -> _Mapped:
    tensors, origin, skipped = _rename(state, [])
    return _Mapped(name, tensors, origin, skipped, None, config)


def _convert_hf(state: Mapping, name: str = "Hugging Face SegFormer") -> _Mapped:
    state = {k.removeprefix("segformer."): v for k, v in state.items()}
    tensors, origin, skipped = _rename(state, _HF_RULES, _HF_SKIP)
    _merge_kv(tensors, origin)
    provides = _head_provided(tensors)
    part = "backbone + decode head" if len(provides) == 2 else "backbone only"
    return _Mapped(f"{name} ({part})", tensors, origin, skipped, provides)


def _convert_nvlabs(state: Mapping) -> _Mapped:
    tensors, origin, skipped = _rename(state, _NVLABS_RULES, _NVLABS_SKIP)
    provides = _head_provided(tensors)
    name = "NVlabs SegFormer (mmseg 0.x)" if len(provides) == 2 else "NVlabs MiT backbone"
    return _Mapped(name, tensors, origin, skipped, provides)


def _convert_mmseg(state: Mapping) -> _Mapped:
    tensors, origin, skipped = _rename(state, _MMSEG_RULES, _MMSEG_SKIP)
    _split_qkv(tensors, origin)
    for key in [k for k in tensors if re.search(r"\.mlp\.fc[12]\.weight$", k)]:
        if tensors[key].dim() == 4 and tensors[key].shape[2:] == (1, 1):
            tensors[key] = tensors[key].flatten(1)  # 1x1 conv -> linear
    return _Mapped("mmseg 1.x MixVisionTransformer (backbone only)", tensors, origin, skipped, ("backbone.",))


def _convert_resnet(state: Mapping) -> _Mapped:
    tensors, origin, skipped = _rename(state, _RESNET_RULES, _RESNET_SKIP)
    return _Mapped("torchvision ResNet (backbone only)", tensors, origin, skipped, ("backbone.",))


def _detect(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, file: Path) -> _Mapped:
    """Picks the converter from the metadata and the key names."""
    if metadata and metadata.get("format") == FORMAT_NAME:
        return _convert_sdcpc(state, "sdcpc safetensors", _config_from_metadata(metadata, file))
    keys = list(state)

    def has(pattern: str) -> bool:
        return any(re.search(pattern, k) for k in keys)

    if has(r"(^|\.)patch_embeddings\.\d+\.|^(segformer\.)?stages\.\d+\.patch_embeddings\."):
        return _convert_hf(state)
    if has(r"^(backbone\.)?patch_embed[1-4]\."):
        return _convert_nvlabs(state)
    if has(r"^(backbone\.)?layers\.\d+\.0\.projection\."):
        return _convert_mmseg(state)
    if has(r"^backbone\.(stages\.\d+\.patch_embed\.|layer1\.)"):
        return _convert_sdcpc(state, "SD-CPC state dict")
    if has(r"^layer1\.0\.conv1\.weight$") and "conv1.weight" in state:
        return _convert_resnet(state)
    shown = ", ".join(keys[:_SHOWN]) or "none"
    raise ValueError(f"{file}: unrecognised checkpoint layout (first keys: {shown}); accepted formats: "
                     + "; ".join(ACCEPTED_FORMATS))


# -------------------------------------------------------------------------------- file reading
def _sniff(file: Path) -> str:
    """'torch' (zip or legacy pickle), 'safetensors' or 'unknown', from the first bytes."""
    with open(file, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, like a pickle
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    return "unknown"


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    kind = _sniff(file)
    if kind == "torch":
        raise ValueError(f"{file} is not a safetensors file (it looks like a pickle/zip PyTorch file written by "
                         f"torch.save) and will not be unpickled as one; name it .pth to have it read with "
                         f"torch.load(weights_only=True)")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(file)), metadata
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{file} is not a readable safetensors file ({error})") from None


def _read_torch(file: Path) -> dict[str, torch.Tensor]:
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
    return _unwrap(obj, file)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: object, file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``torch.load`` result: top level, or under ``state_dict`` / ``model``."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("state_dict", "model", "module"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        found = f"keys {', '.join(map(str, list(obj)[:_SHOWN]))}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file}: no state dict found (a dict of tensors at the top level or under "
                         f"'state_dict' / 'model'; got {found}); accepted formats: " + "; ".join(ACCEPTED_FORMATS))
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _read(path: str | os.PathLike) -> tuple[_Mapped, Path]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    file = path
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            model_type = json.loads(config.read_text()).get("model_type")
            if model_type not in (None, "segformer"):
                raise ValueError(f"{path} holds a Hugging Face '{model_type}' model, not SegFormer")
        candidates = [path / name for name in ("model.safetensors", "pytorch_model.bin")]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise FileNotFoundError(f"{path} is a folder without model.safetensors (expected a Hugging Face "
                                    f"SegFormer folder: config.json + model.safetensors)")
    if file.suffix == ".safetensors" or _sniff(file) == "safetensors":
        state, metadata = _read_safetensors(file)
    elif _sniff(file) == "torch":
        state, metadata = _read_torch(file), None
    else:
        raise ValueError(f"{file} is neither a safetensors nor a PyTorch file; accepted formats: "
                         + "; ".join(ACCEPTED_FORMATS))
    return _detect(state, metadata, file), file


def _config_from_metadata(metadata: Mapping[str, str], file: Path) -> dict:
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{file}: sdcpc format version {version!r} is not supported (this version reads "
                         f"{FORMAT_VERSION!r})")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: sdcpc checkpoint without a valid embedded config ({error})") from None
    unknown = sorted(set(config) - set(SDCPCConfig.field_names()))
    if unknown:
        raise ValueError(f"{file}: the embedded config has unknown field(s) {', '.join(unknown)} (written by a "
                         f"newer version?)")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


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
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def _mit_shape(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
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


def _mit_name(channels: tuple[int, ...], depths: tuple[int, ...]) -> str:
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
    source = _mit_shape(tensors) if source_mit else None
    spec = MIT_SPECS.get(config.backbone)
    if source and spec and source != (spec.channels, spec.depths):
        return f"its encoder is {_mit_name(*source)} but the model's is {_mit_name(spec.channels, spec.depths)}"
    return None


def _plan(model: torch.nn.Module, mapped: _Mapped, file: Path, strict: bool, ignore_classifier: bool
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
def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True,
                 ignore_classifier: bool = False) -> LoadReport:
    """Loads a checkpoint of any accepted format into ``model`` (see the module docstring)."""
    mapped, file = _read(path)
    load, report = _plan(model, mapped, file, strict, ignore_classifier)
    result = model.load_state_dict(load, strict=False)
    if result.unexpected_keys:  # cannot happen: every key was checked against model.state_dict()
        raise RuntimeError(f"internal error: unexpected keys {result.unexpected_keys[:_SHOWN]}")
    return report


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


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> SDCPC:
    """Builds the model saved by ``save_weights`` from its embedded config; returned in eval mode."""
    mapped, file = _read(path)
    if mapped.config is None:
        raise ValueError(f"{file} is not an sdcpc checkpoint (found {mapped.format}); for other formats build the "
                         f"model with build_model(variant, num_classes) and call load_weights(model, path)")
    model = SDCPC(SDCPCConfig(**mapped.config))
    load, _ = _plan(model, mapped, file, strict=True, ignore_classifier=False)
    model.load_state_dict(load, strict=False)
    return model.to(map_location).eval()


def read_class_list(path: str | os.PathLike) -> ClassList | None:
    """The class list stored in an sdcpc checkpoint's metadata (key ``classes``), or None without one."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    if _sniff(file) != "safetensors":
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{file} is not a readable safetensors file ({error})") from None
    text = metadata.get("classes")
    return None if text is None else ClassList.from_json(text, f"{file} (metadata 'classes')")


__all__ = ["ACCEPTED_FORMATS", "CheckpointError", "LoadReport", "load_model", "load_weights", "read_class_list",
           "save_weights"]
