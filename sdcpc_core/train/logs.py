"""Run log: ``log.jsonl`` (always), TensorBoard events (when ``tensorboard`` is installed), ``training.png``.

Every line of ``log.jsonl`` is one JSON object with ``kind``:

* ``train``: ``iter``, ``lr`` (base rate of the last step: ``optim.lr`` after the schedule; each parameter
  group runs at it times its factor, the backbone's is 1 unless ``optim.part_lr_mult`` says otherwise),
  ``loss`` and its terms (``static_ce``, ``temporal_ce``, ``mcp``), ``clips_per_s`` and ``data_fraction``
  (share of the time spent waiting for data), all over the steps since the previous record (their own
  time: waiting for data plus computing, not checkpoints or validation), and ``unreadable_images``
  (skipped so far);
* ``val``: ``iter`` and the validation summary (``mIoU``, ``mVC8``, ``mVC16``, ``mVC8_correct``,
  ``mVC16_correct``, ...);
* ``event``: ``iter``, ``event`` (``start``, ``resume``, ``checkpoint``, ``diverged``, ``done``) and details.

A resumed run first drops the records after the iteration it resumes from, so the log reads as one
uninterrupted run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .checkpointing import atomic_write, atomic_write_text

LOG_FILE = "log.jsonl"
PLOT_FILE = "training.png"
LOSS_KEYS = ("loss", "static_ce", "temporal_ce", "mcp")
METRIC_KEYS = ("mIoU", "mVC8", "mVC16", "mVC8_correct")


def read_log(path: Path) -> list[dict]:
    """The records of a ``log.jsonl`` (a last line cut short by a kill is left out)."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class RunLog:
    """Appends records to ``<run>/log.jsonl`` and mirrors numeric values to TensorBoard."""

    def __init__(self, run_dir: Path, resume_from: int | None) -> None:
        self.path = Path(run_dir) / LOG_FILE
        kept = [r for r in read_log(self.path) if r.get("iter", 0) <= resume_from] if resume_from is not None else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run; close() closes it)
        self._tensorboard = _tensorboard_writer(Path(run_dir) / "tensorboard")

    @property
    def has_tensorboard(self) -> bool:
        return self._tensorboard is not None

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        if self._tensorboard is not None and record.get("kind") in ("train", "val"):
            for key, value in record.items():
                if key not in ("kind", "iter") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["iter"])
            self._tensorboard.flush()

    def close(self) -> None:
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder))


def plot_training(log_path: Path, png_path: Path) -> bool:
    """Writes losses, learning rate and validation metrics against iterations as a PNG (atomically);
    False when the log has no training record yet."""
    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if val else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.0), constrained_layout=True)
    steps = [r["iter"] for r in train]
    for key in LOSS_KEYS:
        values = [r.get(key, math.nan) for r in train]
        if any(math.isfinite(v) and v > 0 for v in values):
            axes[0].plot(steps, values, label=key, linewidth=2.0 if key == "loss" else 1.0)
    axes[0].set(title="training loss", xlabel="iteration", yscale="log")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in train])
    axes[1].set(title="learning rate (base)", xlabel="iteration")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if val:
        for key in METRIC_KEYS:
            points = [(r["iter"], r[key]) for r in val if isinstance(r.get(key), (int, float))]
            if points:
                axes[2].plot(*zip(*points), marker="o", label=key)
        axes[2].set(title="validation", xlabel="iteration", ylabel="%")
        axes[2].legend()
    for axis in axes:
        axis.grid(alpha=0.3)
    try:
        atomic_write(Path(png_path), lambda path: fig.savefig(path, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


__all__ = ["LOG_FILE", "PLOT_FILE", "RunLog", "plot_training", "read_log"]
