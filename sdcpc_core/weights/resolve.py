"""The one way in for every entry point: whatever weights a user has -> the model, its classes, one sentence.

``inspect_weights(path_or_name)`` reads a shipped name, a checkpoint file or a Hugging Face folder once
and says what it holds (``WeightsInfo``) without building a model; ``open_model(path_or_name)`` then
builds and loads the model (``LoadedModel``, with ``message``: one sentence saying what was loaded).
The node (``model``), ``sdcpc-bag --model``, ``sdcpc-eval --checkpoint``, ``sdcpc-export --checkpoint``,
``sdcpc-convert`` and ``sdcpc-train --init-from`` all go through here.

=============================  ===========================  ====================================  ===============
source                         model built                  class names                           input size
=============================  ===========================  ====================================  ===============
shipped name / our .safetensors  the embedded config          metadata ``classes``                  metadata
                                                                                                  ``input_size``
                                                                                                  (shipped:
                                                                                                  ``SHIPPED_INFO``)
Hugging Face SegFormer folder  ``sdcpc_bX`` (MiT-BX from     ``config.json`` ``id2label``          none
(config.json + weights)        the weights' channels and
                               depths; decoder width and
                               classes from the head)
NVlabs / mmseg 0.x ``.pth``    as above                      ``meta.CLASSES`` or                   none
                                                             ``meta.dataset_meta.classes``
SD-CPC state dict (no config)  inferred as above             none                                  none
backbone only (ImageNet MiT,   refused: nothing to segment   --                                    --
mmseg 1.x, torchvision)        with (``sdcpc-train
                               --init-from`` takes them)
=============================  ===========================  ====================================  ===============

A SegFormer loaded into ``sdcpc_bX`` keeps its temporal parts (SSEA, DSSA) at their initialisation,
whose residual scales are zero: its predictions are exactly the SegFormer's, and the sentence says so.
Names the file does not give are ``class_<i>``, and the sentence then says how to pass a class list.
Every check (metadata types and sizes, class names against the class count, the config against the
tensors' shapes) runs before the model is built; failures are one ``ValueError`` sentence naming the file.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..classes import ClassInfo, ClassList, shipped_class_lists
from ..models import SDCPC, VARIANTS, SDCPCConfig, model_config
from ..models.mit import MIT_SPECS
from .format import MAX_CLASSES, read_input_size
from .loading import Checkpoint, check_fits, load_model, load_weights, mit_name, mit_shape, read_checkpoint
from .shipped import SHIPPED_INFO, resolve_checkpoint, shipped_name

CONVERTED_FROM_KEY = "converted_from"  # metadata of a converted SegFormer: what it was converted from
SHOWN_CLASSES = 5  # class names quoted in the sentence
_HF_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")  # what transformers writes when a model has no label names


@dataclass
class WeightsInfo:
    """What a checkpoint holds, read once (``inspect_weights``); ``config`` is None for backbone-only weights."""

    checkpoint: Checkpoint
    path: Path  # the file or folder given (a shipped name resolved)
    shipped: str | None  # the shipped name, when it is one
    kind: str  # "sdcpc checkpoint", "Hugging Face SegFormer", "mmseg SegFormer", ...
    backbone: str | None  # mit_b0..mit_b5 or resnet101; None when the encoder matches none of them
    config: SDCPCConfig | None  # the model these weights make; None without a decode head
    classes: ClassList | None  # the class list the file names; None when it names none
    input_size: tuple[int, int] | None  # recommended network input (height, width)
    converted_from: str = ""  # our format converted from a SegFormer: its description

    @property
    def variant(self) -> str | None:
        """The ``build_model`` variant of ``config`` (its options aside)."""
        return None if self.config is None else variant_of(self.config)

    @property
    def num_classes(self) -> int | None:
        return None if self.config is None else self.config.num_classes

    @property
    def untrained_temporal(self) -> bool:
        """A SegFormer in an SD-CPC model: the temporal parts are at their (zero-scaled) initialisation."""
        foreign = self.checkpoint.mapped.config is None or bool(self.converted_from)
        return foreign and self.config is not None and self.config.temporal

    def label(self) -> str:
        """``Hugging Face SegFormer-B1`` / ``sdcpc checkpoint (sdcpc_b0)`` / ``the shipped sdcpc_b0_synthetic``."""
        if self.shipped:
            return f"the shipped {self.shipped} ({self.variant})"
        if self.checkpoint.mapped.config is not None:
            return f"sdcpc checkpoint ({self.variant})"
        if self.backbone in MIT_SPECS:
            size = _short_backbone(self.backbone)
            return self.kind.replace("MiT encoder", f"MiT-{size} encoder") if self.config is None else \
                f"{self.kind}-{size}"
        return self.kind.replace("ResNet", "ResNet-101") if self.backbone == "resnet101" else self.kind

    def describe(self, class_hint: str = "") -> str:
        """One sentence: what was loaded, its classes, and whether its temporal parts are trained."""
        classes = self._classes_phrase(class_hint)
        if self.shipped:
            text = f"loaded the shipped {self.shipped} ({self.variant}, {classes})"
        elif self.checkpoint.mapped.config is not None:
            text = f"loaded the {self.variant} checkpoint {self.path} ({classes})"
        else:
            text = f"loaded {self.label()} from {self.path} as {self.variant} ({classes})"
        if self.untrained_temporal:
            origin = f"converted from {self.converted_from}: " if self.converted_from else ""
            text += (f"; {origin}SD-CPC's temporal parts are untrained, so its predictions are exactly "
                     f"{'that' if self.converted_from else 'this'} SegFormer's")
        return text

    def _classes_phrase(self, class_hint: str) -> str:
        count = self.num_classes
        if self.classes is not None:
            return f"{count} classes: {shown_names(self.classes)}"
        text = f"{count} classes without names, shown as class_0..class_{count - 1}"
        if class_hint:
            same = [name for name in shipped_class_lists() if len(ClassList.shipped(name)) == count]
            text += f"; name them with {class_hint}" + (f", e.g. {same[0]}" if same else "")
        return text


@dataclass
class LoadedModel:
    """``open_model``'s result: the model (eval mode), its class list and the sentence saying what was loaded."""

    model: SDCPC
    info: WeightsInfo
    message: str

    @property
    def classes(self) -> ClassList:
        """The file's class list, else ``class_0..class_{K-1}``."""
        return self.info.classes if self.info.classes is not None else ClassList.generic(self.model.num_classes)

    @property
    def named_classes(self) -> bool:
        return self.info.classes is not None

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.info.input_size

    @property
    def demo(self) -> str:
        """Non-empty for a shipped demo model: what it is (for a warning)."""
        entry = SHIPPED_INFO.get(self.info.shipped or "")
        return entry.demo if entry else ""


# ----------------------------------------------------------------------------------------- public API
def inspect_weights(path_or_name: str | os.PathLike) -> WeightsInfo:
    """What the weights at ``path_or_name`` (a shipped name, a file or a Hugging Face folder) hold.

    ``FileNotFoundError`` for a missing path, ``ValueError`` (one sentence naming the file) for anything
    unreadable, malformed or inconsistent."""
    path = resolve_checkpoint(path_or_name)
    checkpoint = read_checkpoint(path)
    mapped, file = checkpoint.mapped, checkpoint.file
    shipped = shipped_name(path)
    metadata = checkpoint.metadata or {}
    if mapped.config is not None:  # ours: the embedded config, checked against the tensors before building
        config = SDCPCConfig(**mapped.config)
        check_fits(config, mapped, file)
        input_size = read_input_size(metadata, file)
        if input_size is None and shipped in SHIPPED_INFO:
            input_size = SHIPPED_INFO[shipped].input_size
        classes = _stored_classes(metadata, file)
        info = WeightsInfo(checkpoint, path, shipped, "sdcpc checkpoint", config.backbone, config, classes,
                           input_size, metadata.get(CONVERTED_FROM_KEY, ""))
    else:
        backbone = _infer_backbone(mapped.tensors)
        config = _infer_config(checkpoint, backbone)
        names, palette = _foreign_names(checkpoint)
        classes = None if names is None else _class_list(names, palette, config, checkpoint)
        info = WeightsInfo(checkpoint, path, shipped, _kind(checkpoint), backbone, config, classes, None)
    _check_class_count(info)
    return info


def open_model(path_or_name: str | os.PathLike | WeightsInfo, *, class_hint: str = "") -> LoadedModel:
    """Builds and loads the model of ``path_or_name`` (see the module docstring); in eval mode on the CPU.

    ``class_hint`` is how the caller's user passes a class list (e.g. ``"--classes"``): the sentence
    names it when the file has no class names. Raises like ``inspect_weights``, and ``ValueError`` for
    weights without a decode head."""
    info = path_or_name if isinstance(path_or_name, WeightsInfo) else inspect_weights(path_or_name)
    if info.config is None:
        raise ValueError(f"{info.path} holds only an encoder ({info.label()}) without a decode head, so it cannot "
                         f"segment; fine-tune it first with sdcpc-train --init-from {info.path}")
    if info.checkpoint.mapped.config is not None:
        model = load_model(info.checkpoint)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the untrained temporal parts are the same at every load
            model = SDCPC(info.config)
        load_weights(model, info.checkpoint, strict=True)
        model.eval()
    return LoadedModel(model, info, info.describe(class_hint))


def shown_names(classes: ClassList) -> str:
    """The first class names, for a sentence: ``road, sidewalk, building, wall, fence, ...``."""
    names = classes.names
    return ", ".join(names[:SHOWN_CLASSES]) + (", ..." if len(names) > SHOWN_CLASSES else "")


def variant_of(config: SDCPCConfig) -> str:
    """The ``build_model`` variant whose backbone and temporal flag ``config`` has (its options aside)."""
    for name, entry in VARIANTS.items():
        if entry["backbone"] == config.backbone and entry.get("temporal", True) == config.temporal:
            return name
    raise ValueError(f"no model variant has backbone {config.backbone} with temporal={config.temporal}")


def model_variant(backbone: str, temporal: bool = True) -> str:
    """``sdcpc_b1`` / ``segformer_b1`` / ``sdcpc_r101`` for a backbone name."""
    return variant_of(SDCPCConfig(backbone=backbone, num_classes=1, temporal=temporal))


# ------------------------------------------------------------------------------------------- helpers
def _short_backbone(backbone: str | None) -> str:
    return (backbone or "").removeprefix("mit_").upper()


def _kind(checkpoint: Checkpoint) -> str:
    """Where foreign weights come from, for the sentences: ``Hugging Face SegFormer``, ``NVlabs MiT encoder``, ..."""
    name = checkpoint.mapped.format
    if name.startswith("Hugging Face"):
        return "Hugging Face SegFormer" if "decode head" in name else "Hugging Face MiT encoder"
    if name.startswith("NVlabs"):
        return "mmseg SegFormer" if "SegFormer" in name else "NVlabs MiT encoder"
    if name.startswith("mmseg 1.x"):
        return "mmseg 1.x MiT encoder"
    if name.startswith("torchvision"):
        return "torchvision ResNet encoder"
    return name


def _infer_backbone(tensors: Mapping[str, torch.Tensor]) -> str | None:
    shape = mit_shape(tensors)
    if shape is not None:
        return next((name for name, spec in MIT_SPECS.items() if (spec.channels, spec.depths) == shape), None)
    blocks = {m[1] for k in tensors if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    return "resnet101" if len(blocks) == 23 else None  # the only ResNet sdcpc builds


def _infer_config(checkpoint: Checkpoint, backbone: str | None) -> SDCPCConfig | None:
    """The config of foreign weights with a decode head: their backbone, decoder width and class count."""
    mapped, file = checkpoint.mapped, checkpoint.file
    classifier = mapped.tensors.get("decode_head.classifier.weight")
    fuse = mapped.tensors.get("decode_head.linear_fuse.weight")
    if classifier is None or fuse is None:
        return None
    if backbone is None:
        shape = mit_shape(mapped.tensors)
        found = mit_name(*shape) if shape else "an encoder of unknown layout"
        raise ValueError(f"{file}: its encoder is {found}, which is none of MiT-B0..B5 "
                         f"({', '.join(MIT_SPECS)}) that sdcpc builds")
    num_classes, width = int(classifier.shape[0]), int(fuse.shape[0])
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{file}: its classifier predicts {num_classes} classes; at most {MAX_CLASSES} are supported")
    temporal = mapped.config is not None or not mapped.format.startswith("SD-CPC") or any(
        k.startswith("ssea.") for k in mapped.tensors)
    try:
        config = model_config(model_variant(backbone, temporal), num_classes, embed_dim=width)
    except ValueError as error:
        raise ValueError(f"{file}: its decode head ({width} wide, {num_classes} classes) fits no sdcpc model "
                         f"({error})") from None
    if mapped.format.startswith("SD-CPC"):  # a bare state dict of ours: the other options must be the defaults
        check_fits(config, mapped, file)
    return config


def _stored_classes(metadata: Mapping[str, str], file: Path) -> ClassList | None:
    text = metadata.get("classes")
    return None if text is None else ClassList.from_json(text, f"{file} (metadata 'classes')")


def _foreign_names(checkpoint: Checkpoint) -> tuple[list[str] | None, object]:
    """Class names (and a palette, when the file has one) of a Hugging Face folder or an mmseg checkpoint."""
    if checkpoint.hf_config is not None:
        return _hf_names(checkpoint.hf_config, checkpoint.folder / "config.json"), None
    meta = checkpoint.meta
    if meta is None:
        return None, None
    dataset_meta = meta.get("dataset_meta")
    source = dataset_meta if isinstance(dataset_meta, Mapping) and "classes" in dataset_meta else meta
    names = source.get("classes", source.get("CLASSES"))
    if names is None:
        return None, None
    where = f"{checkpoint.file} (meta {'dataset_meta.classes' if source is not meta else 'CLASSES'})"
    if not isinstance(names, Sequence) or isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where} must be a list of class names, got {type(names).__name__}")
    return list(names), source.get("palette", source.get("PALETTE"))


def _hf_names(config: Mapping, file: Path) -> list[str] | None:
    labels = config.get("id2label")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise ValueError(f"{file}: id2label must map class ids to names, got {type(labels).__name__}")
    try:
        ids = sorted((int(k), v) for k, v in labels.items())
    except (TypeError, ValueError):
        raise ValueError(f"{file}: id2label keys must be class ids 0..N-1, got {', '.join(map(str, labels))}") \
            from None
    if [i for i, _ in ids] != list(range(len(ids))) or not all(isinstance(v, str) and v for _, v in ids):
        raise ValueError(f"{file}: id2label must name every class id 0..{len(ids) - 1} once with a non-empty name")
    names = [v for _, v in ids]
    return None if all(_HF_DEFAULT_LABEL.match(n) for n in names) else names


def _class_list(names: list[str], palette, config: SDCPCConfig | None, checkpoint: Checkpoint) -> ClassList:
    """A class list for ``names``: a shipped list when the names are one (its colours), else the file's palette
    or distinct colours; repeated names get their id appended."""
    if config is not None and len(names) != config.num_classes:
        raise ValueError(f"{checkpoint.folder or checkpoint.file} names {len(names)} classes but its classifier "
                         f"predicts {config.num_classes}")
    for shipped in shipped_class_lists():
        known = ClassList.shipped(shipped)
        if known.names == names:
            return known
    colors = [info.color for info in ClassList.generic(len(names)).classes]
    if isinstance(palette, Sequence) and len(palette) == len(names) and all(
            isinstance(c, Sequence) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette):
        colors = [tuple(c) for c in palette]
    seen: set[str] = set()
    unique = []
    for i, name in enumerate(names):
        unique.append(name if name not in seen else f"{name}_{i}")
        seen.add(unique[-1])
    ignore_id = 255 if len(names) <= 255 else 65535
    return ClassList(tuple(ClassInfo(i, n, colors[i]) for i, n in enumerate(unique)), ignore_id)


def _check_class_count(info: WeightsInfo) -> None:
    if info.classes is not None and info.config is not None and len(info.classes) != info.config.num_classes:
        raise ValueError(f"{info.checkpoint.file}: its class list has {len(info.classes)} classes but its model "
                         f"predicts {info.config.num_classes}")


__all__ = ["CONVERTED_FROM_KEY", "LoadedModel", "WeightsInfo", "inspect_weights", "model_variant", "open_model",
           "shown_names", "variant_of"]
