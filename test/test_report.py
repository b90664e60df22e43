"""Tests of the evaluation report (summary, Markdown, JSON, plots, atomic folder writing) and overlays."""

import json
import math

import numpy as np
import pytest

from sdcpc_core.classes import ClassList
from sdcpc_core.eval.metrics import ConfusionMatrix
from sdcpc_core.eval.report import EvaluationReport, overlay, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report(latency=None, mode="vspw") -> EvaluationReport:
    """3 classes; gt [0 0 1 1 255 ...], pred [0 1 1 1 2 ...]: IoU_0 = 1/2, IoU_1 = 2/3, class 2 absent."""
    classes = ClassList.generic(3)
    confusion = ConfusionMatrix(3)
    confusion.update(np.array([0, 0, 1, 1, 255]), np.array([0, 1, 1, 1, 2]))
    frames = [{"video": v, "index": i, "stamp_ns": None, "accuracy": 0.5 + 0.1 * i, "miou": 0.4,
               "consistency": math.nan if i == 0 else 0.9} for v in ("a", "b") for i in range(3)]
    return EvaluationReport(title="tiny on toy val (clip)", classes=classes, confusion=confusion,
                            consistency={"mVC8": 0.875, "mVC16": math.nan}, consistency_mode=mode, frames=frames,
                            latency_ms=latency or {}, info={"checkpoint": "tiny", "frames_dropped": 0})


def test_summary_values_and_line():
    latency = {"encode": [float(v) for v in range(1, 101)], "total": [10.0] * 100, "temporal": []}
    report = _report(latency)
    summary = report.summary()
    assert summary["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert summary["pixel_accuracy"] == pytest.approx(75.0)
    assert summary["per_class_iou"] == {"class_0": pytest.approx(50.0), "class_1": pytest.approx(200 / 3),
                                        "class_2": None}
    assert summary["consistency"] == {"mVC8": 87.5, "mVC16": None}
    assert summary["consistency_mode"] == "vspw" and summary["frames_scored"] == 6
    assert set(summary["latency_ms"]) == {"encode", "total"}  # stages without samples are left out
    encode = summary["latency_ms"]["encode"]
    assert encode["p50"] == pytest.approx(50.5) and encode["p99"] == pytest.approx(99.01)
    assert encode["mean"] == pytest.approx(50.5) and encode["count"] == 100
    assert summary["info"] == {"checkpoint": "tiny", "frames_dropped": 0}
    json.dumps(summary, allow_nan=False)  # JSON-able, no NaN
    assert report.summary_line() == "mIoU 58.3  mVC8 87.5  mVC16 n/a (vspw)  acc 75.0  frames 6  total p50 10.0 ms"


def test_invalid_reports_are_refused():
    with pytest.raises(ValueError, match="consistency_mode must be one of vspw, corrected"):
        _report(mode="strict")
    with pytest.raises(ValueError, match="confusion matrix has 4 classes but the class list has 3"):
        EvaluationReport("t", ClassList.generic(3), ConfusionMatrix(4), {}, "vspw", [])


def test_write_report_files(tmp_path):
    report = _report({"encode": [1.0, 2.0, 3.0]}, mode="corrected")
    image = np.full((8, 12, 3), 200, np.uint8)
    folder = write_report(report, tmp_path / "r", overlays=[image, image])
    assert folder == tmp_path / "r"
    names = {p.name for p in folder.iterdir()}
    assert names == {"report.json", "report.md", "per_class_iou.png", "per_frame.png", "latency.png", "overlays.png"}
    for name in names - {"report.json", "report.md"}:
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    document = json.loads((folder / "report.json").read_text())
    assert document["consistency_mode"] == "corrected" and document["consistency"]["mVC16"] is None
    assert document["confusion_matrix"] == report.confusion.matrix.tolist()
    assert document["frames"][0]["consistency"] is None and document["frames"][1]["consistency"] == 0.9
    markdown = (folder / "report.md").read_text()
    assert "| video-consistency mode | corrected (" in markdown
    assert "| 2 | class_2 | not in ground truth | 0 |" in markdown
    assert "| encode | 2.00 |" in markdown and "| checkpoint | tiny |" in markdown
    assert "![overlays](overlays.png)" in markdown

    bare = write_report(_report(), tmp_path / "bare")  # no latency, no overlays: no such plots
    assert {p.name for p in bare.iterdir()} == {"report.json", "report.md", "per_class_iou.png", "per_frame.png"}
    assert "## Latency" not in (bare / "report.md").read_text()


def test_write_report_refuses_or_replaces_an_existing_folder(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        write_report(_report(), folder)
    assert (folder / "old.txt").exists()
    write_report(_report(), folder, overwrite=True)
    assert not (folder / "old.txt").exists() and (folder / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging or retired folder left


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="overlay image 0 must be"):
        write_report(_report(), tmp_path / "r", overlays=[np.zeros((4, 4), np.uint8)])
    report = _report()
    report.frames[0]["accuracy"] = object()  # a plot cannot draw this: the write fails midway
    with pytest.raises(TypeError):
        write_report(report, tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_overlay_blends_classes_and_keeps_ignored_pixels():
    classes = ClassList.generic(2)
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[0, 1, 255], [1, 0, 0]], np.uint8)
    out = overlay(image, labels, classes, alpha=0.25)
    color = np.asarray(classes.classes[1].color, np.float64)
    np.testing.assert_array_equal(out[0, 1], np.rint(0.75 * 100 + 0.25 * color).astype(np.uint8))
    np.testing.assert_array_equal(out[0, 2], image[0, 2])  # ignore keeps the image
    assert out.dtype == np.uint8 and out.shape == image.shape
    with pytest.raises(ValueError, match="labels of the image size"):
        overlay(image, labels[:1], classes)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB image"):
        overlay(image[..., 0], labels, classes)


def test_error_map_marks_wrong_and_unlabelled_pixels():
    from sdcpc_core.eval.report import OverlayFrame, error_map

    classes = ClassList.generic(3)
    image = np.full((2, 3, 3), 100, np.uint8)
    labels, prediction = np.array([[0, 1, 255], [2, 2, 0]], np.uint8), np.array([[0, 2, 1], [2, 0, 0]], np.uint8)
    frame = OverlayFrame(image, labels, prediction)
    out = error_map(frame, classes)
    wrong, ignore = (230, 30, 30), (90, 140, 230)
    assert [tuple(out[0, 1]), tuple(out[1, 1])] == [wrong, wrong]  # 1 -> 2 and 2 -> 0
    assert tuple(out[0, 2]) == ignore  # no class in the ground truth, whatever the prediction
    assert tuple(out[0, 0]) == tuple(out[1, 0]) == tuple(out[1, 2]) == (60, 60, 60)  # right: the image, dimmed grey
    with pytest.raises(ValueError, match="labels and prediction of the image size"):
        OverlayFrame(image, frame.labels[:1], frame.prediction)


def test_overlay_frames_are_subsampled_and_drawn_with_titles_and_a_legend(tmp_path):
    from sdcpc_core.eval.report import OverlayFrame

    rng = np.random.default_rng(0)
    wide = OverlayFrame.create(rng.integers(0, 255, (400, 1300, 3), dtype=np.uint8), np.zeros((400, 1300), np.uint8),
                               np.ones((400, 1300), np.uint8), "video a frame 3")
    assert wide.image.shape == (134, 434, 3) and wide.labels.shape == wide.prediction.shape == (134, 434)  # every 3rd
    small = OverlayFrame.create(np.full((40, 80, 3), 90, np.uint8), np.zeros((40, 80), np.uint8),
                                np.zeros((40, 80), np.uint8))
    report = _report()
    report.overlays = [wide, small]
    folder = write_report(report, tmp_path / "r", overlays=[np.full((20, 60, 3), 30, np.uint8)])  # a plain image too
    assert (folder / "overlays.png").read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    drawn = imread(folder / "overlays.png")
    assert drawn.shape[1] > drawn.shape[0] > 400  # three panels per frame, three rows and the legend


def test_absent_and_weakest_classes():
    report = _report()  # IoU: class_0 50, class_1 66.7, class_2 absent from the ground truth
    assert report.absent_classes() == ["class_2"]
    assert report.weakest_classes(1) == [("class_0", pytest.approx(50.0))]
    assert [name for name, _ in report.weakest_classes(5)] == ["class_0", "class_1"]
    assert "mVCn_correct" in report.summary()["consistency_definition"]
