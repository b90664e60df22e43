"""What the offline and live bag evaluations share: topics, outputs, label matching and the report.

* ``EvalTopics.resolve``: the image, label and camera_info topics of a bag (defaults where present;
  a missing topic lists the bag's topics).
* ``EvalOutputs``: the report folder and the output bag of one evaluation, checked before any work
  and written through ``EvalOutputs.writing`` (the folder locked for the run, both built in one
  staging folder and published together only when the run succeeded).
* ``BagEvaluation``: what an evaluation returns (the report, its paths, headline counts).
* ``FrameMatcher``: pairs each camera frame's predicted class ids with the ground-truth label of the
  same header stamp, whatever order the bag stores the two topics in, and scores the pairs in
  camera order (``sdcpc_core.eval``'s scorer: one confusion matrix, per-frame accuracy / mIoU /
  consistency with the previous scored frame, mVC8 / mVC16 and their correct-only variants
  mVC8_correct / mVC16_correct, over the scored frames in order). Frames without a label are counted
  (``unlabelled``), frames without a prediction (``dropped``: the live node published no mask) too;
  neither is scored.
"""
from __future__ import annotations

import math
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcpc_core.atomic_files import lock_folder, publish_entries, remove_stale_staging, staging_folder
from sdcpc_core.classes import ClassList
from sdcpc_core.eval.evaluator import CONSISTENCY_WINDOWS, Scorer
from sdcpc_core.eval.report import EvaluationReport, OverlayFrame

from ..image_codec import ImageDecodeError, image_to_array
from .bagfiles import (
    CAMERA_INFO_TOPIC,
    CAMERA_INFO_TYPE,
    COMPRESSED_TOPIC,
    COMPRESSED_TYPE,
    IMAGE_TOPIC,
    IMAGE_TYPE,
    LABEL_TOPIC,
    BagError,
    BagReader,
    check_output,
)

__all__ = ["BagEvaluation", "EvalOutputs", "EvalTopics", "FrameMatcher", "frame_ranges", "label_array", "note",
           "overlay_indices", "summary_numbers"]


@dataclass(frozen=True)
class EvalTopics:
    """The topics one evaluation reads; ``label`` / ``camera_info`` None: not used."""

    image: str
    image_type: str  # sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage
    label: str | None
    camera_info: str | None

    @property
    def compressed(self) -> bool:
        return self.image_type == COMPRESSED_TYPE

    @classmethod
    def resolve(cls, reader: BagReader, image: str | None = None, label: str | None = None,
                camera_info: str | None = None) -> EvalTopics:
        """Topics of ``reader``'s bag: the given names (which must exist with a usable type), or, when None,
        the defaults present in the bag (``/camera/image_raw`` then ``/camera/image_raw/compressed``,
        ``/camera/labels``, ``/camera/camera_info``); an empty name switches labels / camera_info off."""
        if image is None:
            image = next((t for t in (IMAGE_TOPIC, COMPRESSED_TOPIC) if t in reader.topics), None)
            if image is None:
                raise BagError(f"bag {reader.path} has neither {IMAGE_TOPIC} nor {COMPRESSED_TOPIC}; pass "
                               f"--image-topic, one of its topics: {reader.describe_topics()}")
        image_type = reader.require_topic(image, (IMAGE_TYPE, COMPRESSED_TYPE), "image topic")
        if label is None:
            label = LABEL_TOPIC if LABEL_TOPIC in reader.topics else ""
        if label:
            reader.require_topic(label, (IMAGE_TYPE,), "label topic")
        if camera_info is None:
            camera_info = CAMERA_INFO_TOPIC if reader.topics.get(CAMERA_INFO_TOPIC, ("",))[0] == CAMERA_INFO_TYPE \
                else ""
        if camera_info:
            reader.require_topic(camera_info, (CAMERA_INFO_TYPE,), "camera_info topic")
        if label == image:
            raise BagError(f"the label topic and the image topic are both {image}; give the ground-truth topic")
        return cls(image, image_type, label or None, camera_info or None)


_STAGE = "eval"  # OUT/.eval.<pid>-<random>.tmp: where a run builds its bag and report


@dataclass(frozen=True)
class EvalOutputs:
    """Where an evaluation writes: ``folder/report/`` (``write_report``) and ``folder/semantic_mask.<ext>``."""

    report: Path
    bag: Path

    @classmethod
    def under(cls, folder: str | Path, storage: str = "mcap") -> EvalOutputs:
        folder = Path(folder)
        return cls(folder / "report", folder / f"semantic_mask.{'db3' if storage == 'sqlite3' else 'mcap'}")

    def check(self, overwrite: bool) -> None:
        """``BagError`` if an output exists and ``overwrite`` is false (checked before any work is done)."""
        check_output(self.bag, overwrite, "output bag")
        if self.report.exists() and not overwrite:
            raise BagError(f"report folder {self.report} already exists; pass --overwrite to replace it")
        if self.report.exists() and not self.report.is_dir():
            raise BagError(f"report path {self.report} exists and is not a folder; refusing to replace it")

    @contextmanager
    def writing(self, overwrite: bool, what: str = "sdcpc-bag eval") -> Iterator[EvalOutputs]:
        """Locks the output folder for the run (``FolderInUseError`` if another run has it) and yields where to
        write: the same names in a staging folder inside it. When the block ends without an exception,
        the bag and then the report are moved into place (``publish_entries``: the report, moved last,
        marks both as new; a crash never leaves a new bag beside an old report); on an exception nothing
        is published, and an output folder this run created is removed again. What killed runs left
        (staging folders, temporary and retired files) is removed first."""
        folder = self.report.parent
        if self.bag.parent != folder:
            raise ValueError(f"the report {self.report} and the bag {self.bag} must share a folder")
        lock = lock_folder(folder, what)
        try:
            self.check(overwrite)  # again under the lock: another run may have published meanwhile
            remove_stale_staging(folder, (_STAGE, self.report.name, self.bag.name), lock.acquired)
            stage = staging_folder(folder / _STAGE)
            try:
                yield EvalOutputs(stage / self.report.name, stage / self.bag.name)
                publish_entries(stage, folder, [self.bag.name, self.report.name])
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        except BaseException:
            lock.release(remove_created=True)
            raise
        lock.release()


def note(message: str) -> None:
    """Progress notes and warnings go to stderr: stdout keeps the summary line alone."""
    print(message, file=sys.stderr)


def label_array(message, topic: str) -> np.ndarray:
    """Ground-truth class ids ``(H, W)`` uint8 of a ``mono8`` label image; ``BagError`` otherwise."""
    try:
        labels, _ = image_to_array(message, ("mono8",))
    except ImageDecodeError as error:
        raise BagError(f"label topic {topic}: {error}") from None
    return labels


def overlay_indices(frames: int, count: int) -> set[int]:
    """``count`` frame indices spread evenly over ``0..frames-1``."""
    if frames <= 0 or count <= 0:
        return set()
    return set(np.linspace(0, frames - 1, min(count, frames)).round().astype(int).tolist())


def frame_ranges(indices: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``; ``"none"`` when empty."""
    if not indices:
        return "none"
    parts, start = [], indices[0]
    for previous, current in zip(indices, [*indices[1:], None]):
        if current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(parts)


@dataclass
class _Pending:
    index: int  # position of the frame among the bag's images
    stamp_ns: int
    prediction: np.ndarray | None  # None: dropped
    image: np.ndarray | None  # RGB, kept for an overlay


class FrameMatcher:
    """Pairs predictions with labels by header stamp and scores them in camera order (module docstring).

    Feed ``add_label`` and ``add_frame`` in the bag's order; labels are assumed to be stored in stamp
    order, so a frame whose stamp the label stream has passed has no label. ``finish`` scores what is
    left and returns the report. ``where`` (e.g. ``/camera/labels in bag drive.mcap``) goes into errors.
    """

    def __init__(self, classes: ClassList, video: str, consistency_mode: str, labelled: bool, where: str = "") -> None:
        self.classes = classes
        self.video = video
        self.where = f", {where}" if where else ""  # names the bag and label topic in errors
        self.labelled = labelled
        self.scorer = Scorer(classes, consistency_mode, set(), None)
        self.overlays: list[OverlayFrame] = []
        self.unlabelled: list[int] = []
        self.dropped: list[int] = []
        self.orphan_labels = 0  # labels whose stamp no image has
        self._labels: dict[int, np.ndarray] = {}
        self._latest_label = -1
        self._pending: deque[_Pending] = deque()

    def add_label(self, stamp_ns: int, labels: np.ndarray) -> None:
        self._labels[stamp_ns] = labels
        self._latest_label = max(self._latest_label, stamp_ns)
        self._flush(final=False)

    def add_frame(self, index: int, stamp_ns: int, prediction: np.ndarray | None,
                  image: np.ndarray | None = None) -> None:
        """Frame ``index`` with its predicted ids (``(H, W)``; None: no prediction) and, for an overlay, its
        RGB image."""
        self._pending.append(_Pending(index, stamp_ns, prediction, image))
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        while self._pending:
            head = self._pending[0]
            label = self._labels.pop(head.stamp_ns, None)
            if label is None and not final and self.labelled and head.stamp_ns > self._latest_label:
                return  # its label may still come
            self._pending.popleft()
            for stamp in [s for s in self._labels if s < head.stamp_ns]:
                del self._labels[stamp]
                self.orphan_labels += 1
            if head.prediction is None:
                self.dropped.append(head.index)
            elif label is None:
                self.unlabelled.append(head.index)
            else:
                self._score(head, label)

    def _score(self, frame: _Pending, label: np.ndarray) -> None:
        if label.shape != frame.prediction.shape:
            (lh, lw), (mh, mw) = label.shape, frame.prediction.shape
            raise BagError(f"frame {frame.index} (stamp {frame.stamp_ns} ns{self.where}): the label is {lh}x{lw} but "
                           f"the mask is {mh}x{mw}; the labels must have the camera image's size (output_resolution "
                           "camera)")
        try:
            self.scorer.add(self.video, frame.index, frame.stamp_ns, frame.image, label, frame.prediction)
        except ValueError as error:  # label values that are neither class ids nor ignore
            raise BagError(f"frame {frame.index} (stamp {frame.stamp_ns} ns{self.where}): {error}") from None
        if frame.image is not None:
            self.overlays.append(OverlayFrame.create(frame.image, label, frame.prediction, f"frame {frame.index}"))

    @property
    def scored(self) -> int:
        return len(self.scorer.frames)

    def finish(self, title: str, latency_ms: dict[str, list[float]], info: dict) -> EvaluationReport:
        """Scores the frames still waiting and returns the report (``info`` gets the frame counts)."""
        self._flush(final=True)
        self.orphan_labels += len(self._labels)
        self._labels.clear()
        self.scorer.end_video()
        info = {**info, "frames_scored": self.scored, "frames_without_mask": len(self.dropped),
                "frames_without_mask_list": frame_ranges(self.dropped), "frames_without_label": len(self.unlabelled),
                "frames_without_label_list": frame_ranges(self.unlabelled), "labels_without_frame": self.orphan_labels}
        if not self.labelled:
            info["note"] = "the bag has no label topic: nothing is scored (pass --label-topic)"
        if self.overlays:
            info["overlays"] = f"{len(self.overlays)} frames: ground truth | prediction | errors"
        scorer = self.scorer
        return EvaluationReport(title=title, classes=self.classes, confusion=scorer.confusion,
                                consistency=scorer.video_consistency(), consistency_mode=scorer.consistency_mode,
                                frames=scorer.frames, latency_ms=latency_ms, info=info, overlays=self.overlays)


@dataclass
class BagEvaluation:
    """The outcome of an evaluation: the report, where it went, and the headline counts."""

    report: EvaluationReport
    report_dir: Path
    output_bag: Path
    frames: int  # image messages in the bag (played ones, live)
    processed: int  # frames with a mask
    seconds: float

    def summary_line(self) -> str:
        info = self.report.info
        dropped = f", dropped {info['frames_dropped']}" if "frames_dropped" in info else ""
        return (f"{self.processed} of {self.frames} frames segmented{dropped}, {info['frames_scored']} scored: "
                f"{self.report.summary_line()}; report {self.report_dir}, masks {self.output_bag}")


def summary_numbers(report: EvaluationReport) -> dict[str, float]:
    """mIoU, mVC8, mVC16, mVC8_correct, mVC16_correct in percent (NaN when undefined) for summary lines."""
    values = {"mIoU": 100.0 * report.confusion.miou()}
    for suffix in ("", "_correct"):
        values.update({f"mVC{n}{suffix}": 100.0 * report.consistency.get(f"mVC{n}{suffix}", math.nan)
                       for n in CONSISTENCY_WINDOWS})
    return values
