"""Training configuration: typed sections loaded from YAML, validated at load time.

A file holds up to seven sections (``model``, ``data``, ``optim``, ``schedule``, ``loss``, ``val``,
``runtime``); every field has a default, so a file names only what differs::

    model: {variant: sdcpc_b1}
    data: {dataset: vspw, root: data/VSPW_480p}
    schedule: {iterations: 160000}

``load_config(path, overrides)`` reads the file, applies ``--set`` style overrides
(``"optim.lr=1e-4"``, the value read as YAML), refuses unknown sections and keys, converts and
checks every value and raises ``ConfigError`` naming the field (``data.crop_size``) and what it
accepts. Relative paths (``data.root``, ``model.init_from``, ``runtime.out_dir``) are taken from the
working directory. ``TrainConfig.to_dict()`` is the resolved configuration a run writes to its
output folder.

Batch sizes: ``data.batch_size`` is the *global* batch, the clips of one optimiser step over all
processes and accumulated micro-batches. Each process loads ``batch_size / (processes x
optim.accumulation)`` clips per micro-batch, so one file gives the same optimisation on one GPU
(with accumulation) as on eight.
"""
from __future__ import annotations

import contextlib
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..eval.evaluator import EVAL_MODES
from ..eval.metrics import VC_MODES
from ..models import model_config
from ..models.sdcpc import SIZE_MULTIPLE
from ..options import check_names

DATASETS = ("vspw", "cityscapes", "camvid")
# The model's trainable parts (its top-level modules; ``prototypes`` holds buffers only); the last four
# exist in SD-CPC variants only.
MODEL_PARTS = ("backbone", "decode_head", "ssea", "dssa", "temporal_classifier", "projector")
TEMPORAL_PARTS = MODEL_PARTS[2:]
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What a machine can do: beyond these a run crashes (a segfault in OpenMP, the OOM killer, an overflow)
# instead of training, so they are refused at load time.
MAX_SIDE = 8192  # crop and resize sides in pixels
MAX_SHORT_SIDE = 4320  # validation input short side (an 8K frame's)
MAX_ITERATIONS = 10**9
MAX_BATCH = 65536
MAX_WORKERS = 64  # loader processes per training process
MAX_WORKERS_PER_CPU = 4


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ModelSection:
    """What is trained."""

    variant: str = "sdcpc_b1"  # build_model variant: sdcpc_b0..b5, sdcpc_r101, segformer_b0..b5
    options: dict = field(default_factory=dict)  # SDCPCConfig overrides, e.g. {window: 9, drop_path_rate: 0.0}
    init_from: str = ""  # weights to start from (HF SegFormer folder, NVlabs/mmseg .pth, ours); "" = random
    freeze: tuple[str, ...] = ()  # parts kept as loaded (no gradient, eval-mode BN / dropout): backbone, decode_head..


@dataclass(frozen=True)
class DataSection:
    """Training data, clip sampling and augmentation (sdcpc_core.data)."""

    dataset: str = "vspw"  # reader: vspw | cityscapes | camvid
    root: str = "data/VSPW_480p"  # dataset root folder
    split: str = "train"  # training split
    classes: str = ""  # class list: a shipped name or a YAML path; "" = <root>/classes.yaml, else the dataset's
    offsets: tuple[int, ...] = (9, 6, 3)  # reference frames before the target (clip = t-9, t-6, t-3, t)
    batch_size: int = 8  # clips per optimiser step over all processes and accumulated micro-batches
    crop_size: tuple[int, int] = (480, 480)  # training crop (height, width)
    base_scale: tuple[int, int] = (853, 480)  # (long, short) side the random resize ratio multiplies
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random resize ratio range
    cat_max_ratio: float = 0.75  # largest share one class may have in a crop (1.0: no check)
    flip_prob: float = 0.5  # horizontal flip probability
    photometric: bool = True  # photometric distortion (same draw for every frame of a clip)
    p_start: float = 0.1  # share of clips whose target lies in the first frames (duplicated references)
    p_reverse: float = 0.0  # share of time-reversed clips
    num_workers: int = 4  # data-loading processes per training process (0: load in the training process)


@dataclass(frozen=True)
class OptimSection:
    """AdamW with per-group learning rates."""

    lr: float = 6e-5  # base learning rate (the backbone's)
    head_lr_mult: float = 10.0  # learning-rate factor of everything outside the backbone
    part_lr_mult: dict = field(default_factory=dict)  # factor per model part, replacing the above: {backbone: 0.1}
    weight_decay: float = 0.01  # AdamW weight decay (none on norm layers and position embeddings)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 0.0  # maximum global gradient norm (0: no clipping)
    accumulation: int = 1  # micro-batches accumulated per optimiser step in each process


@dataclass(frozen=True)
class ScheduleSection:
    """Poly learning-rate decay with a linear warm-up."""

    iterations: int = 160000  # optimiser steps of the whole run
    warmup_iters: int = 1500  # steps of linear warm-up
    warmup_ratio: float = 1e-6  # learning-rate factor at step 0 of the warm-up
    power: float = 1.0  # poly exponent
    min_lr: float = 0.0  # learning rate the poly decay ends at (times each group's factor)


@dataclass(frozen=True)
class LossSection:
    """Weights of the loss terms."""

    static_weight: float = 0.5  # cross-entropy of the per-frame (static) logits, every labelled frame
    temporal_weight: float = 1.0  # cross-entropy of the target's temporal logits
    mcp_weight: float = 0.1  # MCP-CL contrastive loss (temporal models only)
    mcp_temperature: float = 0.1  # MCP-CL temperature


@dataclass(frozen=True)
class ValSection:
    """Validation with sdcpc_core.eval (mIoU, mVC8, mVC16) on the ``split`` of the training data set."""

    every: int = 0  # validate every N iterations (0: only at the end, if at_end)
    at_end: bool = True  # validate the final model
    split: str = "val"  # split of data.root to validate on
    max_videos: int = 0  # validate on the first N videos only (0: all)
    mode: str = "clip"  # clip (every labelled frame from its own clip) | streaming (each frame encoded once)
    short_side: int = 480  # network input short side in pixels (padded to a multiple of 32)
    consistency_mode: str = "vspw"  # mVC definition: vspw (the public script) | corrected


@dataclass(frozen=True)
class RuntimeSection:
    """Devices, precision, logging and checkpoints."""

    out_dir: str = ""  # run folder ("" = out/train/<config file name>)
    seed: int = 0  # seed of the initialisation, the clip stream and dropout
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # autocast: auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | fp32 | bf16 | fp16
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    threads: int = 0  # torch CPU threads of each process (0: torch's default)
    log_every: int = 50  # iterations between log records (log.jsonl, TensorBoard)
    checkpoint_every: int = 2000  # iterations between checkpoints
    keep_checkpoints: int = 3  # checkpoints kept (the newest)


SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataSection, "optim": OptimSection, "schedule": ScheduleSection,
    "loss": LossSection, "val": ValSection, "runtime": RuntimeSection,
}


@dataclass(frozen=True)
class TrainConfig:
    """A whole training configuration (see the module docstring)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    val: ValSection = field(default_factory=ValSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        """Plain YAML-ready structure (tuples as lists)."""
        return _plain(asdict(self))

    def micro_batch(self, world_size: int) -> int:
        """Clips per micro-batch of each of ``world_size`` processes; ``ConfigError`` when it does not divide."""
        per_step = world_size * self.optim.accumulation
        if self.data.batch_size % per_step:
            raise ConfigError(
                f"config field data.batch_size ({self.data.batch_size}) must be a multiple of processes "
                f"({world_size}) x optim.accumulation ({self.optim.accumulation}) = {per_step}")
        return self.data.batch_size // per_step


# ------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Reads a YAML file, applies ``section.key=value`` overrides and validates everything.

    ``runtime.out_dir`` left empty becomes ``out/train/<file name without .yaml>``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({error})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)})")
    data = apply_overrides(data, overrides)
    data.setdefault("runtime", {})
    if isinstance(data["runtime"], dict) and not data["runtime"].get("out_dir"):
        data["runtime"]["out_dir"] = str(Path("out") / "train" / path.stem)
    return config_from_dict(data, str(path))


def apply_overrides(data: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``data`` with ``"section.key=value"`` overrides applied (values read as YAML)."""
    merged = {name: dict(section) if isinstance(section, dict) else section for name, section in data.items()}
    for text in overrides:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        section, name = parts
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config section {section} must be a mapping, got {target!r}")
        target[name] = parsed
    return merged


def config_from_dict(data: Mapping, source: str = "config") -> TrainConfig:
    """Builds and validates a ``TrainConfig`` from the YAML structure; ``ConfigError`` on any problem."""
    check_names(data, SECTIONS, "section", context=f"{source}: ", error=ConfigError)
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name} must be a mapping of keys, got {values!r}")
        check_names(values, [f.name for f in fields(cls)], "key", valid_label=f"valid keys of {name}",
                    context=f"{source}: ", error=ConfigError, show=lambda key, name=name: f"{name}.{key}")
        hints = typing.get_type_hints(cls)
        sections[name] = cls(**{k: _convert(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return TrainConfig(**sections)


def _convert(value: Any, kind: Any, name: str) -> Any:
    """``value`` as the annotated type ``kind`` (str, int, float, bool, dict, tuple[...])."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config field {name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, name) for v, a in zip(value, args))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field {name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field {name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 6e-5 (no dot) as a string
            with contextlib.suppress(ValueError):  # not a number: refused below, with the field's name
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field {name} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"config field {name} must be a string, got {value!r}")
        return value
    if kind is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config field type {kind!r} of {name}")


# ---------------------------------------------------------------------------------------- validation
def _validate(config: TrainConfig) -> None:
    m, d, o, s, lo, v, r = (config.model, config.data, config.optim, config.schedule, config.loss, config.val,
                            config.runtime)
    cpus = os.cpu_count() or 1
    max_workers = min(MAX_WORKERS, MAX_WORKERS_PER_CPU * cpus)
    checks = [
        ("data.dataset", d.dataset in DATASETS, f"one of {', '.join(DATASETS)}"),
        ("data.root", bool(d.root), "a folder"),
        ("data.split", bool(d.split), "a split name (e.g. train)"),
        ("data.offsets", len(d.offsets) >= 1 and all(x >= 0 for x in d.offsets), "a non-empty list of integers >= 0"),
        ("data.batch_size", 1 <= d.batch_size <= MAX_BATCH, f"an integer in 1..{MAX_BATCH}"),
        ("data.crop_size", min(d.crop_size) >= SIZE_MULTIPLE and max(d.crop_size) <= MAX_SIDE,
         f"two integers in {SIZE_MULTIPLE}..{MAX_SIDE}"),
        ("data.base_scale", min(d.base_scale) >= 1 and max(d.base_scale) <= MAX_SIDE, f"two integers in 1..{MAX_SIDE}"),
        ("data.ratio_range", 0 < d.ratio_range[0] <= d.ratio_range[1], "two numbers 0 < low <= high"),
        ("data.cat_max_ratio", 0 < d.cat_max_ratio <= 1, "in (0, 1]"),
        ("data.flip_prob", 0 <= d.flip_prob <= 1, "in [0, 1]"),
        ("data.p_start", 0 <= d.p_start <= 1, "in [0, 1]"),
        ("data.p_reverse", 0 <= d.p_reverse <= 1, "in [0, 1]"),
        ("data.num_workers", 0 <= d.num_workers <= max_workers,
         f"an integer in 0..{max_workers} (at most {MAX_WORKERS_PER_CPU} per CPU of this machine, and "
         f"{MAX_WORKERS})"),
        ("optim.lr", o.lr > 0 and math.isfinite(o.lr), "a number > 0"),
        ("optim.head_lr_mult", o.head_lr_mult > 0, "a number > 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "a number >= 0"),
        ("optim.betas", all(0 <= b < 1 for b in o.betas), "two numbers in [0, 1)"),
        ("optim.eps", o.eps > 0, "a number > 0"),
        ("optim.grad_clip", o.grad_clip >= 0, "a number >= 0 (0: off)"),
        ("optim.accumulation", o.accumulation >= 1, "an integer >= 1"),
        ("schedule.iterations", 1 <= s.iterations <= MAX_ITERATIONS, f"an integer in 1..{MAX_ITERATIONS:.0e}"),
        ("schedule.warmup_iters", 0 <= s.warmup_iters <= s.iterations, "an integer in 0..schedule.iterations"),
        ("schedule.warmup_ratio", 0 < s.warmup_ratio <= 1, "in (0, 1]"),
        ("schedule.power", s.power >= 0, "a number >= 0"),
        ("schedule.min_lr", 0 <= s.min_lr <= o.lr, "a number in [0, optim.lr]"),
        ("loss.static_weight", lo.static_weight >= 0, "a number >= 0"),
        ("loss.temporal_weight", lo.temporal_weight >= 0, "a number >= 0"),
        ("loss.mcp_weight", lo.mcp_weight >= 0, "a number >= 0"),
        ("loss.mcp_temperature", lo.mcp_temperature > 0, "a number > 0"),
        ("val.every", v.every >= 0, "an integer >= 0 (0: only at the end)"),
        ("val.split", bool(v.split) or not (v.every or v.at_end), "a split name (e.g. val)"),
        ("val.max_videos", v.max_videos >= 0, "an integer >= 0 (0: all)"),
        ("val.mode", v.mode in EVAL_MODES, f"one of {', '.join(EVAL_MODES)}"),
        ("val.short_side", SIZE_MULTIPLE <= v.short_side <= MAX_SHORT_SIDE,
         f"an integer in {SIZE_MULTIPLE}..{MAX_SHORT_SIDE}"),
        ("val.consistency_mode", v.consistency_mode in VC_MODES, f"one of {', '.join(VC_MODES)}"),
        ("runtime.device", r.device in DEVICES, f"one of {', '.join(DEVICES)}"),
        ("runtime.precision", r.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("runtime.threads", 0 <= r.threads <= cpus, f"an integer in 0..{cpus} (this machine's CPU count; 0: "
                                                    f"torch's default)"),
        ("runtime.log_every", r.log_every >= 1, "an integer >= 1"),
        ("runtime.checkpoint_every", r.checkpoint_every >= 1, "an integer >= 1"),
        ("runtime.keep_checkpoints", r.keep_checkpoints >= 1, "an integer >= 1"),
    ]
    for name, ok, accepted in checks:
        if not ok:
            section, key = name.split(".")
            raise ConfigError(f"config field {name} must be {accepted}, got {getattr(getattr(config, section), key)!r}")
    if lo.static_weight + lo.temporal_weight + lo.mcp_weight == 0:
        raise ConfigError("config fields loss.static_weight, loss.temporal_weight and loss.mcp_weight are all 0; "
                          "at least one must be > 0")
    if r.precision == "fp16" and r.device == "cpu":
        raise ConfigError("config field runtime.precision fp16 needs runtime.device cuda (or auto); use fp32 or bf16 "
                          "on the CPU")
    try:  # the model options are checked by the model's own config (num_classes comes from the class list)
        temporal = model_config(m.variant, 1, **m.options).temporal
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config field model.variant / model.options: {error}") from None
    _check_parts(m, o, temporal)


def _check_parts(m: ModelSection, o: OptimSection, temporal: bool) -> None:
    """``model.freeze`` and ``optim.part_lr_mult`` name parts the variant has, and leave something to train."""
    parts = MODEL_PARTS if temporal else MODEL_PARTS[:2]
    kind = "SD-CPC" if temporal else "per-frame"
    for field_name, names in (("model.freeze", m.freeze), ("optim.part_lr_mult", list(o.part_lr_mult))):
        for name in names:
            if name not in parts:
                raise ConfigError(f"config field {field_name} names {name!r}, which is not a part of the {kind} "
                                  f"variant {m.variant}; its parts: {', '.join(parts)}")
    if len(set(m.freeze)) != len(m.freeze):
        raise ConfigError(f"config field model.freeze names a part twice: {list(m.freeze)!r}")
    if set(parts) <= set(m.freeze):
        raise ConfigError(f"config field model.freeze freezes every part of {m.variant} ({', '.join(parts)}); "
                          "leave at least one to train")
    for name, value in o.part_lr_mult.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"config field optim.part_lr_mult.{name} must be a number > 0, got {value!r}")
        if name in m.freeze:
            raise ConfigError(f"config field optim.part_lr_mult sets a rate for {name}, which model.freeze freezes; "
                              "drop one of the two")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["ConfigError", "DATASETS", "MODEL_PARTS", "TEMPORAL_PARTS", "DataSection", "LossSection", "ModelSection",
           "OptimSection", "RuntimeSection", "SECTIONS", "ScheduleSection", "TrainConfig", "ValSection",
           "apply_overrides", "config_from_dict", "load_config"]
