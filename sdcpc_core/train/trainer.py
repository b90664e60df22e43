"""The SD-CPC trainer: one process, or one of N under ``torchrun`` (DistributedDataParallel).

One optimiser step (``Trainer.fit`` runs them; ``backward`` and ``optimizer_step`` are its halves):

1. every global RNG (torch, numpy, python) is seeded from ``(seed, rank, step)``, so dropout and
   stochastic depth depend only on the step: a resumed run repeats them exactly;
2. ``optim.accumulation`` micro-batches of ``data.batch_size / (processes x accumulation)`` clips
   each (see ``sdcpc_core.train.data``); the forward is ``SDCPC.forward_clip`` under autocast;
3. loss = ``static_weight`` x CE(static logits, every labelled frame) + ``temporal_weight`` x
   CE(temporal logits, target) + ``mcp_weight`` x MCP-CL. Each term is a sum over pixels divided by
   the pixel count of the *global* batch (all processes, all micro-batches, one ``all_reduce`` of
   three counts), so the gradient is the same however the batch is split: N processes equal one
   process accumulating N micro-batches, up to float summation order;
4. the loss values are reduced over processes and checked: NaN or inf stops the run
   (:class:`TrainingDiverged`) before the optimiser step, so nothing of that step is saved;
5. AdamW step (gradient clipping and the fp16 gradient scaler when configured), poly/warm-up
   schedule step, and the MCP-CL prototype update from the target pixels (1/8) whose temporal
   prediction was right (``ClassPrototypes.update`` all-reduces across processes).

Around the steps: logging (``log.jsonl``, TensorBoard), checkpoints (``checkpoints/iter_*``), and
validation every ``val.every`` iterations and at the end, on rank 0 only. Process 0 writes every
file; the others only read.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..atomic_files import lock_folder, remove_stale_staging
from ..classes import ClassList
from ..models import build_model
from ..models.layers import ceil_div
from ..models.sdcpc import SIZE_MULTIPLE
from ..weights import CLASS_KEYS, load_weights, save_weights
from ..weights.resolve import inspect_weights, model_variant, shown_names
from .checkpointing import (
    STATE_FILE,
    atomic_write_text,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import TrainConfig
from .data import ClipStream, build_loader, build_transform, open_reader, resolve_class_list
from .logs import LOG_FILE, PLOT_FILE, RunLog, plot_training
from .losses import IGNORE_INDEX, TERMS, clip_loss_counts, clip_loss_sums, correct_pixels
from .optim import PolyWarmupLR, build_optimizer, freeze_parts, set_frozen_eval

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = "final.safetensors"
CONFIG_FILE = "config.yaml"
VAL_DIR = "val"
VAL_OVERLAYS = 4  # ground truth | prediction images in each validation report
# Validation runs on process 0 while the others wait in a barrier: the collective timeout must cover it.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=3)
STATE_VERSION = 1
TERM_NAMES = {"static_ce": "static cross-entropy", "temporal_ce": "temporal cross-entropy", "mcp": "MCP-CL"}


class SetupError(ValueError):
    """A run that cannot start as configured (one sentence, for the user)."""


def _encoder_name(backbone: str | None) -> str:
    """``MiT-B1`` / ``ResNet-101`` / a phrase for an encoder sdcpc does not build."""
    if backbone is None:
        return "an unsupported"
    return "ResNet-101" if backbone == "resnet101" else f"MiT-{backbone.removeprefix('mit_').upper()}"


def _with_article(label: str) -> str:
    if label.startswith("the "):
        return label
    return ("an " if label[:1].lower() in "aeiou" or label.startswith(("sdcpc", "mmseg", "NVlabs")) else "a ") + label


def _classes_phrase(count: int, classes: ClassList | None) -> str:
    """``19 classes (road, sidewalk, ...)``, or ``19 classes`` without names."""
    return f"{count} classes" if classes is None else f"{count} classes ({shown_names(classes)})"


class TrainingDiverged(RuntimeError):  # noqa: N818 - public name (in __all__, caught by the train tool)
    """A loss became NaN or inf; the message names the iteration, the term and the last good checkpoint."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class TrainResult:
    """What ``Trainer.fit`` did (seconds and clips count this call's steps only)."""

    step: int
    iterations: int
    losses: dict[str, float] = field(default_factory=dict)  # last step's loss terms
    metrics: dict[str, float | None] = field(default_factory=dict)  # last validation scores (percent)
    seconds: float = 0.0
    data_seconds: float = 0.0  # time spent waiting for the data loader
    clips: int = 0
    unreadable_images: int = 0
    final_weights: Path | None = None

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0

    @property
    def data_fraction(self) -> float:
        return self.data_seconds / self.seconds if self.seconds else 0.0


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seeds torch (CPU and CUDA), numpy and python's global RNGs from ``(seed, rank, step)``."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


class Trainer:
    """Builds the model, data, optimiser and run folder of ``config``; ``fit()`` trains.

    Args:
        config: the training configuration.
        resume: continue from ``<out_dir>/checkpoints/latest`` when there is one (a new run otherwise).
        init_from: weights to start from (overrides ``model.init_from``; ignored when resuming).
        env: the process's rank and world size (default: from the ``torchrun`` environment).
        progress: show progress bars (process 0 only).
    """

    _lock = None  # the run folder's FolderLock (process 0, from _write_run_folder on)

    def __init__(self, config: TrainConfig, *, resume: bool = False, init_from: str | None = None,
                 env: DistEnv | None = None, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.env = env or DistEnv.from_env()
        self.out_dir = Path(config.runtime.out_dir)
        self.micro_batch = config.micro_batch(self.env.world_size)
        self.device = _resolve_device(config.runtime.device, self.env)
        self.precision = _resolve_precision(config.runtime.precision, self.device)
        if config.runtime.threads:
            torch.set_num_threads(config.runtime.threads)
        self.classes: ClassList = resolve_class_list(config.data)
        self.reader = open_reader(config.data, config.data.split, all_labels=True)
        validates = config.val.every > 0 or config.val.at_end
        self.val_reader = open_reader(config.data, config.val.split) if validates and self.env.is_main else None
        sync_bn = config.runtime.sync_bn and self.env.world_size > 1
        if sync_bn and self.device.type != "cuda":
            raise SetupError(f"runtime.sync_bn needs CUDA devices: torch {torch.__version__}'s SyncBatchNorm runs on "
                             f"GPUs only; set runtime.sync_bn false to train on the CPU")
        _init_distributed(self.env, self.device)

        torch.manual_seed(config.runtime.seed)  # the same initial weights on every process
        self.model = build_model(config.model.variant, len(self.classes), **config.model.options)
        self.step = 0
        self.last_lr = 0.0
        self.next_sample = 0  # index of the next sample of the clip stream (sdcpc_core.train.data)
        self.unreadable_images = 0
        checkpoint = self._resume_point(resume)
        if checkpoint is None:
            self._initialise(init_from if init_from is not None else config.model.init_from)
        else:
            resumed_state = load_checkpoint(checkpoint, self.model)
        self._write_run_folder()  # only now: a refused --init-from or checkpoint leaves nothing behind
        if sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.frozen = freeze_parts(self.model, config.model.freeze)  # model.freeze: kept exactly as loaded
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = PolyWarmupLR(self.optimizer, config.schedule, config.optim.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == torch.float16)
        if checkpoint is not None:
            self._restore(checkpoint, resumed_state)
        self.ddp = None
        if self.env.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.log = RunLog(self.out_dir, self.step if checkpoint is not None else None) if self.env.is_main else None
        if self.log is not None:
            self.log.write({"kind": "event", "iter": self.step, "event": "resume" if checkpoint else "start",
                            "processes": self.env.world_size, "device": str(self.device),
                            "precision": str(self.precision).removeprefix("torch."),
                            "micro_batch": self.micro_batch, "frozen": list(config.model.freeze),
                            "trained_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad)})
        self._warned_unreadable = False
        self._pending_pixels: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._metrics: dict[str, float | None] = {}

    # ------------------------------------------------------------------------------ set-up
    def _resume_point(self, resume: bool) -> Path | None:
        """Checks the run folder against ``resume`` (writing nothing); returns the checkpoint to resume."""
        for path in (self.out_dir, *self.out_dir.parents):
            if path.exists():
                if not path.is_dir():
                    raise SetupError(f"the run folder {self.out_dir} (runtime.out_dir or --out) cannot be made: {path} "
                                     f"is a file, not a folder; choose another folder")
                break
        existing = list_checkpoints(self.out_dir)
        checkpoint = latest_checkpoint(self.out_dir) if resume else None
        if not resume and existing:
            raise SetupError(f"{self.out_dir} already holds a run (checkpoints up to iteration {existing[-1][0]}); "
                             f"pass --resume to continue it, or set runtime.out_dir to a new folder")
        if resume and checkpoint is None:
            logger.info("no checkpoint in %s: starting a new run", self.out_dir)
        return checkpoint

    def _write_run_folder(self) -> None:
        """Locks the run folder (a second run on it is refused), clears what killed runs left behind and
        writes ``config.yaml`` (process 0)."""
        if self.env.is_main:
            self._lock = lock_folder(self.out_dir, "sdcpc-train", option="--out (runtime.out_dir)")
            remove_stale_temporaries(self.out_dir)
            remove_stale_staging(self.out_dir, (FINAL_WEIGHTS, CONFIG_FILE, LOG_FILE, PLOT_FILE), self._lock.acquired)
            atomic_write_text(self.out_dir / CONFIG_FILE, yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    def _initialise(self, init_from: str) -> None:
        """Loads ``init_from`` (a shipped name or any weights ``sdcpc_core.weights.resolve`` reads).

        Its encoder must be the model's: otherwise one sentence names both and the variant to set. A
        decode head of another width, a classifier of another class count and temporal parts of other
        shapes are re-initialised, each with a warning that names both sides."""
        if not init_from:
            return
        info = inspect_weights(init_from)
        where, config = f"--init-from {init_from}", self.model.config
        if info.backbone != config.backbone:
            fix = (f"pass --set model.variant={model_variant(info.backbone, config.temporal)}" if info.backbone
                   else "give weights of one of the encoders sdcpc builds")
            raise SetupError(f"{where} is {_with_article(info.label())} ({_encoder_name(info.backbone)} encoder) but "
                             f"model.variant {self.config.model.variant} has a {_encoder_name(config.backbone)} "
                             f"encoder; {fix}")
        ignore_classifier = False
        source = info.config
        if source is not None and source.embed_dim != config.embed_dim:
            logger.warning(f"{where}: its decode head is {source.embed_dim} wide but the model's is {config.embed_dim} "
                           f"(model.options.embed_dim): the decode head is re-initialised; set model.options "
                           f"{{embed_dim: {source.embed_dim}}} to keep it")
        elif source is not None and source.num_classes != len(self.classes):
            ignore_classifier = True
            logger.warning(f"{where}: its classifier predicts {_classes_phrase(source.num_classes, info.classes)} but "
                           f"the training data has {_classes_phrase(len(self.classes), self.classes)}: the classifier "
                           f"is re-initialised")
        elif info.classes is not None and info.classes.names != self.classes.names:
            logger.warning(f"{where}: its classes ({shown_names(info.classes)}) are not the training data's "
                           f"({shown_names(self.classes)}): its classifier rows are kept in order")
        report = load_weights(self.model, info.checkpoint, strict=False, ignore_classifier=ignore_classifier)
        absent = [k for k in report.missing if k.startswith("backbone.")]
        clashes = [m for m in report.mismatched if m.startswith("backbone.")]
        if absent or clashes:
            problem = (f"has other shapes ({clashes[0]}, {len(clashes)} in all)" if clashes
                       else f"lacks {len(absent)} of its tensors (e.g. {absent[0]})")
            raise SetupError(f"{where} ({report.source_format}) does not fit the {self.config.model.variant} encoder: "
                             f"it {problem}; give weights of the same backbone")
        others = [m for m in report.mismatched if not m.startswith(("backbone.", "decode_head.", *CLASS_KEYS))]
        if others:
            logger.warning(f"{where}: {len(others)} tensor(s) of other shapes are re-initialised (e.g. {others[0]})")
        logger.info("initialised from %s%s: %s", info.label(), "" if info.shipped else f" at {info.path}", report)

    def _restore(self, folder: Path, state: dict) -> None:
        """The optimiser, schedule and counters of ``state`` (``load_checkpoint``), the weights being loaded."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise SetupError(f"cannot resume from {folder}: its {STATE_FILE} does not fit this run's optimiser "
                             f"({type(error).__name__}: {str(error)[:200]}); was the configuration changed?") from None
        self.step = int(state["step"])
        self.next_sample = int(state["next_sample"])
        self.unreadable_images = int(state["unreadable_images"])
        logger.info("resumed from %s (iteration %d)", folder, self.step)

    # ------------------------------------------------------------------------------ one step
    @property
    def _forward_module(self) -> torch.nn.Module:
        return self.ddp if self.ddp is not None else self.model

    def _autocast(self):
        enabled = self.precision != torch.float32
        return torch.autocast(self.device.type, dtype=self.precision, enabled=enabled)

    def micro_batches(self):
        """This process's micro-batches from ``next_sample`` on, grouped per optimiser step (lists of
        ``optim.accumulation`` dicts from ``collate_clips``), with the seconds spent waiting for them."""
        cfg = self.config
        remaining = cfg.schedule.iterations - self.step
        stream = ClipStream(self.reader, self.reader.make_sampler(cfg.data.p_start, cfg.data.p_reverse),
                            build_transform(cfg.data), cfg.runtime.seed,
                            self.next_sample + remaining * cfg.data.batch_size)
        loader = build_loader(stream, self.micro_batch, self.env.world_size, self.env.rank, self.next_sample,
                              cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                group = [next(iterator) for _ in range(cfg.optim.accumulation)]
            except StopIteration:
                return
            yield group, time.perf_counter() - start

    def backward(self, group: list[dict]) -> dict[str, float]:
        """Forward and backward of one step's micro-batches; gradients are left in ``.grad`` (averaged over
        processes). Returns the step's loss terms and ``loss``, reduced over processes."""
        cfg, model = self.config, self.model
        set_frozen_eval(self.frozen)  # model.train() (fit, after validation) switched them back
        self._note_unreadable(group)
        temporal = model.is_temporal
        valid = model.prototypes.initialized.clone() if temporal else None
        embed_size = tuple(ceil_div(s, 8) for s in cfg.data.crop_size) if temporal else None
        counts = sum(clip_loss_counts(b["labels"], valid, embed_size) for b in group)
        counts = self._all_reduce(counts.to(self.device))
        scale = (self.env.world_size / counts.clamp(min=1)).float()
        weights = torch.tensor([cfg.loss.static_weight, cfg.loss.temporal_weight,
                                cfg.loss.mcp_weight if temporal else 0.0], device=self.device)
        totals = torch.zeros(len(TERMS), device=self.device)
        self._pending_pixels = []
        for i, batch in enumerate(group):
            images = batch["images"].to(self.device, non_blocking=True)
            labels = batch["labels"].to(self.device, non_blocking=True)
            self._check_labels(labels)
            last = i == len(group) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with self._autocast():
                    out = self._forward_module(images)
                prototypes = model.prototypes.prototypes if temporal else None
                sums = clip_loss_sums(out.static_logits, out.temporal_logits, out.embeddings, labels, prototypes,
                                      valid, cfg.loss.mcp_temperature)
                terms = torch.stack([sums[name] for name in TERMS]) * scale
                self.scaler.scale((terms * weights).sum()).backward()
            totals += terms.detach() / self.env.world_size
            if temporal:
                self._pending_pixels.append(correct_pixels(out.temporal_logits, out.embeddings, labels[:, -1]))
        values = dict(zip(TERMS, self._all_reduce(totals).tolist()))
        values["loss"] = float(sum(w * values[name] for w, name in zip(weights.tolist(), TERMS)))
        return values

    def optimizer_step(self) -> None:
        """Optimiser, scheduler and prototype update after ``backward``; advances ``step``."""
        if self.config.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        first = self.optimizer.param_groups[0]
        self.last_lr = first["lr"] / first["lr_mult"]  # the base rate this step used (each group: times its factor)
        self.scheduler.step()
        if self.model.is_temporal:
            pixels, labels = zip(*self._pending_pixels)
            self.model.prototypes.update(torch.cat(pixels), torch.cat(labels))
        self._pending_pixels = []
        self.step += 1
        self.next_sample += self.config.data.batch_size

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.env.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def _check_labels(self, labels: torch.Tensor) -> None:
        labelled = labels[labels != IGNORE_INDEX]
        if labelled.numel() and int(labelled.max()) >= len(self.classes):
            raise SetupError(f"the training labels hold class id {int(labelled.max())} but the class list "
                             f"({self.classes.dataset or 'data.classes'}) has {len(self.classes)} classes "
                             f"(0..{len(self.classes) - 1}); set data.classes to the data set's class list")

    def _note_unreadable(self, group: list[dict]) -> None:
        paths = [p for batch in group for p in batch["unreadable"]]
        if paths and not self._warned_unreadable:
            warnings.warn(f"skipped a clip with the unreadable image {paths[0]} (another clip was drawn in its "
                          f"place); further ones are skipped silently and counted in log.jsonl (unreadable_images)",
                          RuntimeWarning, stacklevel=3)
            self._warned_unreadable = True
        self.unreadable_images += len(paths)

    def _check_finite(self, losses: dict[str, float]) -> None:
        bad = [name for name in TERMS if not math.isfinite(losses[name])]
        if not bad:
            return
        iteration = self.step + 1
        saved = list_checkpoints(self.out_dir)
        kept = (f"the last good checkpoint is {saved[-1][1]} (iteration {saved[-1][0]})" if saved
                else "no checkpoint had been written yet")
        named = [f"the {TERM_NAMES[name]} loss ({losses[name]})" for name in bad]
        terms = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        verb = "is" if len(bad) == 1 else "are"
        message = (f"training stopped at iteration {iteration}: {terms} {verb} not finite; {kept}. Lower optim.lr, set "
                   f"optim.grad_clip, or use runtime.precision fp32 / bf16")
        if self.log is not None:
            self.log.write({"kind": "event", "iter": iteration, "event": "diverged",
                            **{name: str(losses[name]) for name in TERMS}})
            plot_training(self.log.path, self.out_dir / PLOT_FILE)
        raise TrainingDiverged(message)

    # ------------------------------------------------------------------------------ the loop
    def fit(self, until: int | None = None) -> TrainResult:
        """Trains up to ``schedule.iterations`` (or ``until``), with logging, checkpoints and validation."""
        cfg = self.config
        end = cfg.schedule.iterations if until is None else min(until, cfg.schedule.iterations)
        result = TrainResult(self.step, cfg.schedule.iterations)
        self.model.train()
        window: dict[str, float] = {}  # sums since the last log record (step times exclude checkpoints, validation)
        window_steps, window_seconds, window_data = 0, 0.0, 0.0
        if self.step == cfg.schedule.iterations and not (self.out_dir / FINAL_WEIGHTS).is_file():
            self._finish()  # resumed from the last checkpoint of a run stopped before it finished
        bar = _progress(self.step, cfg.schedule.iterations, self.env.is_main and self.progress)
        batches = self.micro_batches()
        try:
            if self.step < end:
                for group, waited in batches:
                    seed_step(cfg.runtime.seed, self.env.rank, self.step)
                    started = time.perf_counter() - waited
                    losses = self.backward(group)
                    self._check_finite(losses)
                    self.optimizer_step()
                    elapsed = time.perf_counter() - started
                    result.seconds += elapsed
                    result.data_seconds += waited
                    result.clips += cfg.data.batch_size
                    result.losses = losses
                    window_steps += 1
                    window_seconds += elapsed
                    window_data += waited
                    for key, value in losses.items():
                        window[key] = window.get(key, 0.0) + value
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", clips_s=f"{cfg.data.batch_size / elapsed:.2f}")
                    if self.step % cfg.runtime.log_every == 0 or self.step == end:
                        self._log_train(window, window_steps, window_seconds, window_data)
                        window, window_steps, window_seconds, window_data = {}, 0, 0.0, 0.0
                    self._after_step(final=self.step == cfg.schedule.iterations)
                    if self.step >= end:
                        break
        finally:
            batches.close()
            bar.close()
        result.step = self.step
        result.metrics = dict(self._metrics)
        result.unreadable_images = self.unreadable_images
        if (self.out_dir / FINAL_WEIGHTS).is_file() and self.step == cfg.schedule.iterations:
            result.final_weights = self.out_dir / FINAL_WEIGHTS
        return result

    def _log_train(self, window: dict[str, float], steps: int, seconds: float, data_seconds: float) -> None:
        if self.log is None:
            return
        record = {"kind": "train", "iter": self.step, "lr": self.last_lr,
                  **{key: value / steps for key, value in window.items()},
                  "clips_per_s": steps * self.config.data.batch_size / seconds,
                  "data_fraction": data_seconds / seconds, "unreadable_images": self.unreadable_images}
        self.log.write(record)

    def _after_step(self, final: bool) -> None:
        cfg = self.config
        if self.step % cfg.runtime.checkpoint_every == 0 or final:
            self.save()
        if cfg.val.every and self.step % cfg.val.every == 0 and not final:
            self.validate()
        if final:
            self._finish()

    def _finish(self) -> None:
        if self.config.val.at_end:
            self.validate()
        if self.env.is_main:
            save_weights(self.model, self.out_dir / FINAL_WEIGHTS, metadata=self._metadata())
            self.log.write({"kind": "event", "iter": self.step, "event": "done", "weights": FINAL_WEIGHTS})
            plot_training(self.log.path, self.out_dir / PLOT_FILE)

    def _metadata(self) -> dict:
        """The class list, the iteration and the recommended input size: ``data.base_scale`` (the scale ratio
        1.0 of the training resize) as height (short side) x width, rounded up to multiples of 32."""
        short, long = sorted(self.config.data.base_scale)
        size = [ceil_div(short, SIZE_MULTIPLE) * SIZE_MULTIPLE, ceil_div(long, SIZE_MULTIPLE) * SIZE_MULTIPLE]
        return {"classes": self.classes.to_json(), "iteration": str(self.step), "input_size": size}

    def save(self) -> Path | None:
        """Writes ``checkpoints/iter_<step>`` (process 0; the others wait for it)."""
        folder = None
        if self.env.is_main:
            state = {"version": STATE_VERSION, "step": self.step, "next_sample": self.next_sample,
                     "unreadable_images": self.unreadable_images, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
            folder = save_checkpoint(self.out_dir, self.step, self.model, state, self._metadata(),
                                     self.config.runtime.keep_checkpoints)
            self.log.write({"kind": "event", "iter": self.step, "event": "checkpoint", "path": str(folder)})
            plot_training(self.log.path, self.out_dir / PLOT_FILE)
        if self.env.world_size > 1:
            dist.barrier()
        return folder

    def validate(self) -> dict[str, float | None]:
        """Evaluates the model on ``val.split`` (process 0; the others wait): the report goes to
        ``val/iter_<step>/``, the scores (percent, None where undefined) to the log. Returns them."""
        metrics: dict[str, float | None] = {}
        if self.env.is_main:
            from ..eval.evaluator import evaluate
            from ..eval.report import write_report

            val = self.config.val
            report = evaluate(self.model, self.val_reader, self.classes, mode=val.mode,
                              consistency_mode=val.consistency_mode, short_side=val.short_side, device=self.device,
                              max_videos=val.max_videos or None, progress=self.progress, num_overlays=VAL_OVERLAYS)
            summary = report.summary()
            metrics = {"mIoU": summary["mIoU"], **summary["consistency"], "pixel_accuracy": summary["pixel_accuracy"]}
            folder = write_report(report, self.out_dir / VAL_DIR / checkpoint_name(self.step), overwrite=True)
            self.log.write({"kind": "val", "iter": self.step, **metrics, "mode": val.mode,
                            "consistency_mode": val.consistency_mode, "report": str(folder)})
            logger.info("validation at iteration %d (%s): %s", self.step, val.mode, report.summary_line())
            self._metrics = metrics
        if self.env.world_size > 1:
            dist.barrier()
        return metrics

    def close(self) -> None:
        """Closes the log, unlocks the run folder and leaves the process group."""
        if self.log is not None:
            self.log.close()
        if self._lock is not None:
            self._lock.release()
        if self.env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------- set-up steps
def _resolve_device(name: str, env: DistEnv) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("runtime.device is cuda but torch sees no CUDA device; use auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def _resolve_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise SetupError("runtime.precision fp16 needs a CUDA device (none is used); use fp32 or bf16 on the CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _init_distributed(env: DistEnv, device: torch.device) -> None:
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size, timeout=PROCESS_GROUP_TIMEOUT)


def _progress(initial: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="it", dynamic_ncols=True, desc="train")


__all__ = ["DistEnv", "SetupError", "TrainResult", "Trainer", "TrainingDiverged", "seed_step"]
