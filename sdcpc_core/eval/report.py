"""Evaluation reports: one result type for every evaluation path, written as JSON, Markdown and PNG plots.

``EvaluationReport`` holds what an evaluation measured (confusion matrix, video consistency, per-frame
scores, optional per-stage latency) and free key/values describing the run. The dataset evaluator
(``sdcpc_core.eval.evaluator``), the trainer's final validation and the rosbag evaluation all produce
one, and ``write_report`` turns it into a report folder::

    report.json         summary (mIoU, per-class IoU, mVC and its correct-only variant, mode, latency
                        percentiles, info), per-frame records and the confusion matrix
    report.md           the same as tables, naming the video-consistency mode, with the plots
    per_class_iou.png   IoU per class (bars)
    per_frame.png       accuracy and frame-to-frame consistency over time, one curve per video
    latency.png         histogram per stage (only when latencies were measured)
    overlays.png        per frame (``OverlayFrame``): ground truth | prediction | errors, titled, with a
                        legend of the class colours; plain images in rows of their own (only when
                        some are given)

IoU, accuracy and consistency are reported in percent; latency in milliseconds. Values that could
not be measured (a class absent from the ground truth, mVC without a window that fits) are NaN in
Python and ``null`` in JSON.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_files import replace_path, staging_folder
from ..classes import ClassList
from .metrics import VC_MODES, ConfusionMatrix

__all__ = ["EvaluationReport", "OverlayFrame", "write_report", "overlay", "error_map", "LATENCY_PERCENTILES",
           "VC_MODE_DESCRIPTIONS", "CONSISTENCY_DEFINITION"]

LATENCY_PERCENTILES = (50, 90, 95, 99)

VC_MODE_DESCRIPTIONS = {
    "vspw": "public VSPW script: videos of more than 16 frames, last window dropped, ignore pixels not masked",
    "corrected": "every window of every video of at least n frames, ignore pixels masked",
}

CONSISTENCY_DEFINITION = ("mVCn: share of the pixels whose ground truth stays the same over n frames whose "
                          "prediction stays the same too; mVCn_correct: share of those pixels whose prediction is "
                          "correct in all n frames (only stability that is right counts; <= mVCn)")

_OVERLAY_PANEL_HEIGHT = 2.2  # overlays.png: inches per image row
_OVERLAY_MAX_WIDTH = 640  # overlay frames wider than this are kept subsampled (every k-th pixel)
_ERROR_COLORS = {"wrong": (230, 30, 30), "not labelled (ignore)": (90, 140, 230)}  # error map colours
_ERROR_DIM = 0.6  # brightness of the grey image under correct pixels in the error map


def _percent(value: float) -> float:
    """A fraction in percent; NaN stays NaN."""
    return 100.0 * float(value)


def _json_value(value):
    """``value`` with NaN / infinite floats as None and numpy scalars / arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_value(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _fmt(value: float | None, digits: int = 1) -> str:
    """A number for tables and the summary line; ``n/a`` for NaN / None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _cell(value) -> str:
    """A Markdown table cell: pipes escaped, line breaks removed."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


# ------------------------------------------------------------------------------------------ report
@dataclass
class EvaluationReport:
    """What one evaluation measured; see the module docstring for the files ``write_report`` makes.

    ``consistency`` maps names (``mVC8``, ``mVC16``) to fractions in [0, 1] (NaN when no window fits);
    ``frames`` holds one record per scored frame: ``video``, ``index``, ``stamp_ns`` (or None),
    ``accuracy`` and ``miou`` (fractions for that frame alone, NaN when it has no labelled pixel) and
    optional extra keys (``consistency``: agreement with the previous scored frame, plotted when
    present); ``latency_ms`` maps stage names to per-frame milliseconds; ``overlays`` are
    ``OverlayFrame`` s (or plain ``(H, W, 3)`` uint8 images) drawn into ``overlays.png``.
    """

    title: str
    classes: ClassList
    confusion: ConfusionMatrix
    consistency: dict[str, float]
    consistency_mode: str
    frames: list[dict]
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    overlays: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.consistency_mode not in VC_MODES:
            raise ValueError(f"consistency_mode must be one of {', '.join(VC_MODES)}, got {self.consistency_mode!r}")
        if self.confusion.num_classes != len(self.classes):
            raise ValueError(f"the confusion matrix has {self.confusion.num_classes} classes but the class list "
                             f"has {len(self.classes)}")

    def latency_summary(self) -> dict[str, dict[str, float]]:
        """Per stage: ``p50``, ``p90``, ``p95``, ``p99``, ``mean`` (ms) and ``count``; empty stages are left out."""
        out = {}
        for stage, values in self.latency_ms.items():
            samples = np.asarray(values, dtype=np.float64)
            if samples.size == 0:
                continue
            row = {f"p{q}": float(v) for q, v in zip(LATENCY_PERCENTILES, np.percentile(samples, LATENCY_PERCENTILES))}
            out[stage] = {**row, "mean": float(samples.mean()), "count": int(samples.size)}
        return out

    def summary(self) -> dict:
        """The JSON-able summary: scores in percent (None where undefined), latency percentiles in ms, info."""
        iou = self.confusion.iou()
        return _json_value({
            "title": self.title,
            "mIoU": _percent(self.confusion.miou()),
            "pixel_accuracy": _percent(self.confusion.pixel_accuracy()),
            "per_class_iou": {name: _percent(v) for name, v in zip(self.classes.names, iou)},
            "consistency": {name: _percent(v) for name, v in self.consistency.items()},
            "consistency_mode": self.consistency_mode,
            "consistency_mode_description": VC_MODE_DESCRIPTIONS[self.consistency_mode],
            "consistency_definition": CONSISTENCY_DEFINITION,
            "frames_scored": len(self.frames),
            "classes": {"dataset": self.classes.dataset, "count": len(self.classes),
                        "present_in_ground_truth": int(np.count_nonzero(~np.isnan(iou)))},
            "latency_ms": self.latency_summary(),
            "units": "IoU, accuracy and consistency in percent; latency in milliseconds",
            "info": self.info,
        })

    def absent_classes(self) -> list[str]:
        """Names of the classes without a ground-truth pixel in the evaluated frames (left out of mIoU)."""
        present = self.confusion.matrix.sum(axis=1) > 0
        return [name for name, here in zip(self.classes.names, present) if not here]

    def weakest_classes(self, count: int = 3) -> list[tuple[str, float]]:
        """Up to ``count`` classes present in the ground truth with the lowest IoU, as ``(name, IoU %)``, lowest
        first."""
        iou = self.confusion.iou()
        order = [i for i in np.argsort(np.nan_to_num(iou, nan=np.inf), kind="stable") if not np.isnan(iou[i])]
        return [(self.classes.names[i], _percent(iou[i])) for i in order[:count]]

    def summary_line(self) -> str:
        """One line, e.g. ``mIoU 61.2  mVC8 88.1  mVC16 84.0  mVC8_correct 58.0  mVC16_correct 55.1 (vspw)
        acc 90.3  frames 120  total p50 31.0 ms``."""
        parts = [f"mIoU {_fmt(_percent(self.confusion.miou()))}"]
        parts += [f"{name} {_fmt(_percent(v))}" for name, v in self.consistency.items()]
        parts[-1] += f" ({self.consistency_mode})"
        parts += [f"acc {_fmt(_percent(self.confusion.pixel_accuracy()))}", f"frames {len(self.frames)}"]
        latency = self.latency_summary()
        if latency:
            stage = "total" if "total" in latency else next(iter(latency))
            parts.append(f"{stage} p50 {_fmt(latency[stage]['p50'])} ms")
        return "  ".join(parts)

    # ------------------------------------------------------------------------------ markdown
    def markdown(self, images: Sequence[str] = ()) -> str:
        """The Markdown report; ``images`` are file names of plots placed next to it."""
        summary = self.summary()
        lines = [f"# {self.title}", "", f"`{self.summary_line()}`", "", "## Summary", ""]
        rows = [("mIoU (%)", _fmt(summary["mIoU"])), ("pixel accuracy (%)", _fmt(summary["pixel_accuracy"]))]
        rows += [(f"{name} (%)", _fmt(v)) for name, v in summary["consistency"].items()]
        present = summary["classes"]["present_in_ground_truth"]
        rows += [("video-consistency mode", f"{self.consistency_mode} ({summary['consistency_mode_description']})"),
                 ("video-consistency measures", CONSISTENCY_DEFINITION),
                 ("frames scored", summary["frames_scored"]),
                 ("classes in the ground truth", f"{present} of {len(self.classes)}")]
        lines += _table(("metric", "value"), rows)
        lines += ["", "## Per-class IoU", ""]
        gt_pixels = self.confusion.matrix.sum(axis=1)
        lines += _table(("id", "class", "IoU (%)", "ground-truth pixels"),
                        [(info.id, info.name, _fmt(summary["per_class_iou"][info.name]) if gt_pixels[info.id] else
                          "not in ground truth", int(gt_pixels[info.id])) for info in self.classes.classes])
        latency = summary["latency_ms"]
        if latency:
            lines += ["", "## Latency (ms)", ""]
            lines += _table(("stage", *(f"p{q}" for q in LATENCY_PERCENTILES), "mean", "frames"),
                            [(stage, *(_fmt(row[f"p{q}"], 2) for q in LATENCY_PERCENTILES), _fmt(row["mean"], 2),
                              row["count"]) for stage, row in latency.items()])
        if self.info:
            lines += ["", "## Run", ""]
            lines += _table(("key", "value"), [(k, v) for k, v in summary["info"].items()])
        if images:
            lines += ["", "## Plots", ""]
            lines += [f"![{Path(name).stem.replace('_', ' ')}]({name})" for name in images]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    """A matplotlib Figure drawn with the Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _plot_per_class_iou(report: EvaluationReport, path: Path) -> None:
    iou = 100.0 * report.confusion.iou()
    count = len(report.classes)
    figure = _figure(8.0, max(2.5, 0.22 * count + 1.2))
    axes = figure.add_subplot()
    positions = np.arange(count)
    colors = np.asarray([c.color for c in report.classes.classes], dtype=np.float64) / 255.0
    axes.barh(positions, np.nan_to_num(iou), color=colors, edgecolor="black", linewidth=0.4)
    labels = [name if not np.isnan(v) else f"{name} (absent)" for name, v in zip(report.classes.names, iou)]
    axes.set_yticks(positions, labels, fontsize=7 if count > 40 else 9)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("IoU (%)")
    miou = _percent(report.confusion.miou())
    if not np.isnan(miou):
        axes.axvline(miou, color="grey", linestyle="--", linewidth=1, label=f"mIoU {miou:.1f}")
        axes.legend(loc="lower right")
    axes.set_title(f"Per-class IoU: {report.title}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def _plot_per_frame(report: EvaluationReport, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    videos: dict[str, list[dict]] = {}
    for record in report.frames:
        videos.setdefault(str(record["video"]), []).append(record)
    series = [("accuracy", "pixel accuracy (%)")]
    if any("consistency" in record for record in report.frames):
        series.append(("consistency", "consistency with previous frame (%)"))
    figure = _figure(10.0, 3.0 * len(series) + 0.6)
    legend = len(videos) <= 10
    for row, (key, label) in enumerate(series):
        axes = figure.add_subplot(len(series), 1, row + 1)
        for name, records in videos.items():
            index = [r["index"] for r in records]
            values = [_percent(r.get(key, math.nan)) for r in records]
            axes.plot(index, values, marker="." if len(index) < 50 else None, linewidth=1,
                      alpha=1.0 if legend else 0.5, label=name)
        axes.set_ylabel(label)
        axes.set_ylim(-2, 102)
        axes.grid(alpha=0.3)
        if legend and videos:
            axes.legend(fontsize=7, loc="lower left")
    axes.set_xlabel("frame index in the video")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"Per frame: {report.title}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def _plot_latency(report: EvaluationReport, path: Path) -> None:
    stages = {k: np.asarray(v, dtype=np.float64) for k, v in report.latency_ms.items() if len(v)}
    figure = _figure(4.0 * min(len(stages), 3), 3.0 * math.ceil(len(stages) / 3))
    for i, (stage, samples) in enumerate(stages.items()):
        axes = figure.add_subplot(math.ceil(len(stages) / 3), min(len(stages), 3), i + 1)
        axes.hist(samples, bins=min(50, max(5, samples.size // 5)), color="tab:blue", alpha=0.8)
        p50, p99 = np.percentile(samples, (50, 99))
        axes.axvline(p50, color="black", linestyle="--", linewidth=1, label=f"p50 {p50:.2f}")
        axes.axvline(p99, color="tab:red", linestyle=":", linewidth=1, label=f"p99 {p99:.2f}")
        axes.set_title(stage, fontsize=10)
        axes.set_xlabel("ms")
        axes.legend(fontsize=7)
    figure.suptitle(f"Latency: {report.title}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


@dataclass(frozen=True)
class OverlayFrame:
    """One frame drawn into ``overlays.png`` as ground truth | prediction | errors.

    ``image``: ``(H, W, 3)`` uint8 RGB; ``labels`` (ground truth, ignore allowed) and ``prediction``:
    ``(H, W)`` class ids; ``caption`` names the frame (e.g. ``video 3, frame 12``). ``create`` keeps
    frames wider than 640 pixels subsampled, so a report holds little memory whatever the camera.
    """

    image: np.ndarray
    labels: np.ndarray
    prediction: np.ndarray
    caption: str = ""

    def __post_init__(self) -> None:
        image, labels, prediction = (np.asarray(a) for a in (self.image, self.labels, self.prediction))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an overlay frame needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        if labels.shape != image.shape[:2] or prediction.shape != image.shape[:2]:
            raise ValueError(f"an overlay frame needs labels and prediction of the image size {image.shape[:2]}, got "
                             f"{labels.shape} and {prediction.shape}")

    @classmethod
    def create(cls, image: np.ndarray, labels: np.ndarray, prediction: np.ndarray, caption: str = "") -> OverlayFrame:
        """A frame with its own copies of the arrays, subsampled to at most 640 pixels wide."""
        step = max(1, -(-np.shape(image)[1] // _OVERLAY_MAX_WIDTH))
        return cls(*(np.array(np.asarray(a)[::step, ::step]) for a in (image, labels, prediction)), caption)


def error_map(frame: OverlayFrame, classes: ClassList) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image in dimmed grey where the prediction is right, red where it is wrong,
    blue where the ground truth has no class (ignore)."""
    grey = frame.image.astype(np.float32).mean(axis=2, keepdims=True) * _ERROR_DIM
    out = np.repeat(np.rint(grey), 3, axis=2).astype(np.uint8)
    labelled = (frame.labels >= 0) & (frame.labels < len(classes))
    out[labelled & (frame.labels != frame.prediction)] = _ERROR_COLORS["wrong"]
    out[~labelled] = _ERROR_COLORS["not labelled (ignore)"]
    return out


def _plot_overlays(items: Sequence, classes: ClassList, path: Path) -> None:
    """One row per item: an ``OverlayFrame`` as three titled panels, a plain image across the row; below, a
    legend of the colours of the classes in the frames and of the error map."""
    from matplotlib.gridspec import GridSpec
    from matplotlib.patches import Patch

    shapes = [np.shape(item.image if isinstance(item, OverlayFrame) else item) for item in items]
    aspect = max(shape[1] / shape[0] for shape in shapes)
    frames = [item for item in items if isinstance(item, OverlayFrame)]
    columns = 3 if frames else 1
    shown = sorted({int(v) for f in frames for v in np.union1d(f.labels, f.prediction) if 0 <= v < len(classes)})
    handles = [Patch(facecolor=np.asarray(classes.classes[i].color) / 255.0, edgecolor="black", linewidth=0.4,
                     label=classes.names[i]) for i in shown]
    unlabelled = any(np.any((f.labels < 0) | (f.labels >= len(classes))) for f in frames)
    if frames:
        handles += [Patch(facecolor=np.asarray(color) / 255.0, edgecolor="black", linewidth=0.4,
                          label=f"error map: {name}") for name, color in _ERROR_COLORS.items()
                    if name == "wrong" or unlabelled]
    legend_columns = max(1, min(len(handles), int(columns * 1.6 * aspect)))
    legend_height = 0.25 * math.ceil(len(handles) / legend_columns) + 0.15 if handles else 0.0
    panel, title = _OVERLAY_PANEL_HEIGHT, 0.3  # inches: image height, title line above each row
    width = panel * aspect * columns * 1.03
    height = (panel + title) * len(items) + legend_height
    figure = _figure(width, height)
    grid = GridSpec(len(items), columns, figure=figure, left=0.005, right=0.995, top=1 - title / height,
                    bottom=legend_height / height, hspace=title / panel, wspace=0.02)
    for row, item in enumerate(items):
        if not isinstance(item, OverlayFrame):
            axes = figure.add_subplot(grid[row, :])
            axes.imshow(item)
            axes.set_axis_off()
            continue
        valid = (item.labels >= 0) & (item.labels < len(classes))
        wrong = float(np.mean(item.labels[valid] != item.prediction[valid])) if valid.any() else math.nan
        prefix = f"{item.caption}: " if item.caption else ""
        panels = ((overlay(item.image, item.labels, classes), f"{prefix}ground truth"),
                  (overlay(item.image, item.prediction, classes), "prediction"),
                  (error_map(item, classes), f"errors ({_fmt(100.0 * wrong)} % of labelled pixels wrong)"))
        for column, (picture, title) in enumerate(panels):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(picture, interpolation="nearest")
            axes.set_title(title, fontsize=9)
            axes.set_axis_off()
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=8, frameon=False,
                      bbox_to_anchor=(0.5, 0.0))
    figure.savefig(path)


def overlay(image: np.ndarray, labels: np.ndarray, classes: ClassList, alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB blend ``(1 - alpha) image + alpha colorize(labels)``.

    ``labels`` are ``(H, W)`` class ids; pixels whose value is not a class id (ignore) keep the image.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"overlay needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"overlay needs labels of the image size {image.shape[:2]}, got {labels.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colors = classes.colorize(labels).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
    known = (labels >= 0) & (labels < len(classes))
    out = np.where(known[..., None], np.rint(blend), image)
    return out.astype(np.uint8)


# ------------------------------------------------------------------------------------------ writing
def write_report(report: EvaluationReport, folder: str | os.PathLike, *, overwrite: bool = False,
                 overlays: Sequence[np.ndarray] = ()) -> Path:
    """Writes the report folder (see the module docstring) and returns its path.

    ``overlays`` (``OverlayFrame`` s or ``(H, W, 3)`` uint8 images) are drawn after ``report.overlays``.
    Everything is written into a temporary sibling
    folder that is renamed to ``folder`` at the end, so a failed run leaves no partial report. An
    existing ``folder`` raises ``FileExistsError`` unless ``overwrite``; it is then replaced.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"report folder {folder} already exists; pass overwrite=True (--overwrite) to replace it")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"report path {folder} exists and is not a folder")
    images = [*report.overlays, *overlays]
    for i, image in enumerate(images):
        if isinstance(image, OverlayFrame):
            continue
        if np.asarray(image).ndim != 3 or np.asarray(image).shape[2] != 3 or np.asarray(image).dtype != np.uint8:
            raise ValueError(f"overlay image {i} must be an OverlayFrame or (H, W, 3) uint8, got {np.shape(image)}")
    staging = staging_folder(folder)  # mode 0777 & ~umask, as the published folder must have
    try:
        plots = ["per_class_iou.png", "per_frame.png"]
        _plot_per_class_iou(report, staging / plots[0])
        _plot_per_frame(report, staging / plots[1])
        if report.latency_summary():
            plots.append("latency.png")
            _plot_latency(report, staging / "latency.png")
        if images:
            plots.append("overlays.png")
            _plot_overlays(images, report.classes, staging / "overlays.png")
        document = {**report.summary(), "confusion_matrix": report.confusion.matrix.tolist(),
                    "class_names": report.classes.names, "frames": _json_value(report.frames)}
        (staging / "report.json").write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (staging / "report.md").write_text(report.markdown(plots), encoding="utf-8")
        replace_path(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
