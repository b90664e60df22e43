"""Tests of the dataset evaluator (clip and streaming modes) and the ``sdcpc-eval`` command."""

import copy
import json
import math

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from sdcpc_core.classes import ClassList  # noqa: E402
from sdcpc_core.data.datasets import VSPWDataset  # noqa: E402
from sdcpc_core.eval.evaluator import evaluate  # noqa: E402
from sdcpc_core.eval.metrics import ConfusionMatrix, video_consistency  # noqa: E402
from sdcpc_core.models import build_model  # noqa: E402
from sdcpc_core.tools.evaluate import main  # noqa: E402
from sdcpc_core.weights import save_weights  # noqa: E402

H, W = 60, 90  # frame size; short side 50 -> network input 50x75, padded to 64x96 by the model
SHORT_SIDE = 50
NUM_CLASSES = 5
VIDEOS = {"long": 18, "short": 6}  # "long" has more than 16 frames: it has windows in the VSPW mVC mode
UNLABELLED = ("short", 2)  # a frame with no mask: not scored, still streamed


def _write_vspw(root) -> None:
    """Two videos: a moving square (VSPW label 3) and a fixed block (2) on a background (1), top rows 0 (ignore)."""
    rng = np.random.default_rng(0)
    for video, count in VIDEOS.items():
        for k in range(count):
            image = rng.integers(80, 110, (H, W, 3), dtype=np.uint8)
            label = np.ones((H, W), np.uint8)
            x = 5 + 3 * k
            image[20:40, x:x + 20] = (200, 40, 40)
            label[20:40, x:x + 20] = 3
            image[45:, :30] = (40, 200, 40)
            label[45:, :30] = 2
            label[:5] = 0
            folder = root / "data" / video
            (folder / "origin").mkdir(parents=True, exist_ok=True)
            (folder / "mask").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / "origin" / f"{k:08d}.jpg"), image[..., ::-1])
            if (video, k) != UNLABELLED:
                assert cv2.imwrite(str(folder / "mask" / f"{k:08d}.png"), label)
    (root / "val.txt").write_text("long\nshort\n")


@pytest.fixture(scope="module")
def vspw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vspw")
    _write_vspw(root)
    return root


@pytest.fixture(scope="module")
def dataset(vspw_root):
    return VSPWDataset(str(vspw_root), "val")


def _run(model, dataset, **options):
    """``evaluate`` plus the (video, index, label, prediction) of every scored frame, in order."""
    seen = []
    report = evaluate(model, dataset, ClassList.generic(NUM_CLASSES), short_side=SHORT_SIDE, progress=False,
                      on_frame=lambda record, label, pred: seen.append((record["video"], record["index"], label, pred)),
                      **options)
    return report, seen


def _independent_scores(seen, consistency_mode):
    """mIoU and mVC8 / mVC16 recomputed from the frames given to ``on_frame``."""
    confusion = ConfusionMatrix(NUM_CLASSES)
    videos = {}
    for video, _, label, pred in seen:
        confusion.update(label, pred)
        videos.setdefault(video, ([], []))
        videos[video][0].append(label)
        videos[video][1].append(pred)
    gt = [np.stack(v[0]) for v in videos.values()]
    pred = [np.stack(v[1]) for v in videos.values()]
    scores = {f"mVC{n}": video_consistency(gt, pred, n, consistency_mode) for n in (8, 16)}
    scores.update({f"mVC{n}_correct": video_consistency(gt, pred, n, consistency_mode, correct=True) for n in (8, 16)})
    return confusion, scores


def test_clip_and_streaming_modes_predict_the_same_and_scores_match(tiny_temporal_model, dataset):
    clip, clip_seen = _run(tiny_temporal_model, dataset, mode="clip", consistency_mode="vspw", num_overlays=3)
    stream, stream_seen = _run(tiny_temporal_model, dataset, mode="streaming", consistency_mode="corrected")

    expected_frames = [(v, k) for v, n in VIDEOS.items() for k in range(n) if (v, k) != UNLABELLED]
    assert [(v, k) for v, k, _, _ in clip_seen] == expected_frames
    assert [(v, k) for v, k, _, _ in stream_seen] == expected_frames
    for (_, _, label, clip_pred), (_, _, _, stream_pred) in zip(clip_seen, stream_seen):
        assert clip_pred.shape == label.shape == (H, W)
        np.testing.assert_array_equal(clip_pred, stream_pred)
    assert len(np.unique(np.stack([p for *_, p in clip_seen]))) > 1  # the test model does not predict one class

    for report, seen, mode in ((clip, clip_seen, "vspw"), (stream, stream_seen, "corrected")):
        confusion, consistency = _independent_scores(seen, mode)
        np.testing.assert_array_equal(report.confusion.matrix, confusion.matrix)
        assert report.summary()["mIoU"] == pytest.approx(100 * confusion.miou())
        assert report.consistency == pytest.approx(consistency)
        assert report.consistency_mode == mode and f"({mode})" in report.summary_line()
        assert [r["video"] for r in report.frames] == [v for v, *_ in seen]
        first = ConfusionMatrix(NUM_CLASSES)
        first.update(seen[0][2], seen[0][3])
        assert report.frames[0]["accuracy"] == pytest.approx(first.pixel_accuracy())
        assert math.isnan(report.frames[0]["consistency"]) and not math.isnan(report.frames[1]["consistency"])

    assert clip.info["frames_scored"] == stream.info["frames_scored"] == len(expected_frames)
    assert clip.info["frames_processed"] == 4 * len(expected_frames)  # references + target per clip
    assert stream.info["frames_processed"] == sum(VIDEOS.values())  # every frame once, the unlabelled one too
    period = 1_000_000_000 // 30
    assert [r["stamp_ns"] for r in stream.frames] == [r["index"] * period for r in stream.frames]
    assert all(r["stamp_ns"] is None for r in clip.frames)
    assert set(stream.latency_ms) == {"preprocess", "encode", "temporal", "postprocess", "total"}
    assert all(len(v) == sum(VIDEOS.values()) for v in stream.latency_ms.values())
    assert len(clip.overlays) == 3 and stream.overlays == []
    first_overlay = clip.overlays[0]  # the first scored frame: ground truth, prediction and image of that frame
    assert first_overlay.caption == "long frame 0" and first_overlay.image.shape == (H, W, 3)
    np.testing.assert_array_equal(first_overlay.labels, clip_seen[0][2])
    np.testing.assert_array_equal(first_overlay.prediction, clip_seen[0][3])


def test_constant_model_scores_follow_the_label_statistics(dataset):
    """A per-frame model that predicts class 0 everywhere: IoU_0 = n_0 / N, the others 0, and every
    pixel's prediction is constant (mVC 100 %); the model is evaluated in eval mode and given back
    in training mode with no gradient."""
    torch.manual_seed(0)
    model = build_model("segformer_b0", NUM_CLASSES, embed_dim=32)
    with torch.no_grad():
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))
    model.train()
    modes = []
    reports = {}
    for mode in ("clip", "streaming"):
        reports[mode] = evaluate(model, dataset, ClassList.generic(NUM_CLASSES), mode=mode, short_side=SHORT_SIDE,
                                 consistency_mode="corrected", progress=False, max_videos=1,
                                 on_frame=lambda *_: modes.append(model.training))
    assert model.training and modes and not any(modes)
    assert all(p.grad is None for p in model.parameters())

    labels = np.stack([dataset.clip(0, t).label for t in dataset.labelled[0]])
    valid = labels != 255
    counts = np.bincount(labels[valid], minlength=NUM_CLASSES)
    expected_iou = np.where(counts > 0, 0.0, np.nan)
    expected_iou[0] = counts[0] / valid.sum()
    for report in reports.values():
        assert [r["video"] for r in report.frames] == ["long"] * VIDEOS["long"]
        np.testing.assert_allclose(report.confusion.iou(), expected_iou)
        assert report.summary()["mIoU"] == pytest.approx(100 * np.nanmean(expected_iou))
        assert report.consistency == pytest.approx({
            "mVC8": 1.0, "mVC16": 1.0,  # predictions never change: stable everywhere
            **{f"mVC{n}_correct": video_consistency([labels], [np.zeros_like(labels)], n, "corrected", correct=True)
               for n in (8, 16)}})
        assert 0 < report.consistency["mVC8_correct"] < 1  # ... but right only where the ground truth is class 0
        assert all(r["consistency"] == 1.0 for r in report.frames[1:])
        assert report.frames[0]["accuracy"] == pytest.approx(counts[0] / valid.sum())
        assert "per-frame" in report.info["model"]
    assert reports["clip"].info["frames_processed"] == VIDEOS["long"]  # a per-frame model reads the target only


def test_evaluate_rejects_bad_arguments(tiny_temporal_model, dataset):
    classes = ClassList.generic(NUM_CLASSES)
    with pytest.raises(ValueError, match="mode must be one of clip, streaming"):
        evaluate(tiny_temporal_model, dataset, classes, mode="video")
    with pytest.raises(ValueError, match="consistency_mode must be one of vspw, corrected"):
        evaluate(tiny_temporal_model, dataset, classes, consistency_mode="strict")
    with pytest.raises(ValueError, match="predicts 5 classes but the class list has 3"):
        evaluate(tiny_temporal_model, dataset, ClassList.generic(3))
    with pytest.raises(ValueError, match="short_side must be an integer >= 32"):
        evaluate(tiny_temporal_model, dataset, classes, short_side=16)


# -------------------------------------------------------------------------------------- sdcpc-eval
@pytest.fixture(scope="module")
def checkpoint(tiny_temporal_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    classes = ClassList.generic(NUM_CLASSES)
    save_weights(tiny_temporal_model, path, metadata={"classes": classes.to_json()})
    return path


def test_cli_writes_the_report(checkpoint, vspw_root, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--streaming", "--short-side", str(SHORT_SIDE),
            "--consistency-mode", "corrected", "--max-videos", "1", "--overlays", "2", "--out", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("mIoU ") and "(corrected)" in lines[0] and lines[-1] == f"wrote {out}"
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "per_class_iou.png", "per_frame.png",
                                                "latency.png", "overlays.png"}
    summary = json.loads((out / "report.json").read_text())
    assert summary["title"] == "tiny on vspw val (streaming)"
    assert summary["consistency_mode"] == "corrected" and summary["frames_scored"] == VIDEOS["long"]
    assert summary["info"]["classes"] == "checkpoint" and summary["info"]["mode"] == "streaming"
    assert list(summary["per_class_iou"]) == ClassList.generic(NUM_CLASSES).names
    assert "corrected" in (out / "report.md").read_text()

    assert main(argv) == 2  # the folder exists now
    assert capsys.readouterr().err.strip() == f"sdcpc-eval: error: output folder {out} already exists; pass " \
                                              "--overwrite to replace it"


def test_cli_switch_off_is_a_test_time_ablation(tiny_temporal_model, checkpoint, vspw_root, dataset, tmp_path, capsys):
    """``--switch-off dssa`` scores exactly what the model gives with the DSSA residual zeroed."""
    from sdcpc_core.models.sdcpc import ALIGNMENTS
    from sdcpc_core.tools.evaluate import ALIGNMENTS as TOOL_ALIGNMENTS

    assert TOOL_ALIGNMENTS == ALIGNMENTS
    out = tmp_path / "no_dssa"
    assert main(["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--streaming", "--short-side",
                 str(SHORT_SIDE), "--overlays", "0", "--switch-off", "dssa", "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["info"]["switched_off"] == ["dssa"] and summary["title"].endswith("dssa switched off")

    model = copy.deepcopy(tiny_temporal_model)
    model.switch_off("dssa")
    assert torch.count_nonzero(tiny_temporal_model.dssa.gamma) > 0  # the fixture's branch is on
    expected = evaluate(model, dataset, ClassList.generic(NUM_CLASSES), mode="streaming", short_side=SHORT_SIDE,
                        num_overlays=0, progress=False).summary()
    assert summary["mIoU"] == expected["mIoU"] and summary["consistency"] == expected["consistency"]
    frame = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        current = model.encode_frame(frame)
        assert torch.equal(model.temporal_step(current, [current]), current.logits)  # DSSA adds nothing

    assert main(["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--switch-off", "ssea_and_dssa",
                 "--out", str(tmp_path / "x")]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing_checkpoint", "checkpoint not found"),
    ("wrong_layout", "VSPW split list not found"),
    ("class_count", "has 19 classes but the checkpoint predicts 5"),
    ("bad_device", "--device must be a torch device"),
])
def test_cli_user_errors_are_one_sentence(case, expected, checkpoint, vspw_root, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--out", str(tmp_path / "out")]
    if case == "missing_checkpoint":
        argv[1] = str(tmp_path / "absent.safetensors")
    elif case == "wrong_layout":
        argv[3] = str(tmp_path)
    elif case == "class_count":
        argv += ["--classes", "cityscapes"]
    else:
        argv += ["--device", "gpu0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdcpc-eval: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_smoothing_implies_streaming_and_names_itself(checkpoint, vspw_root, tmp_path, capsys):
    out = tmp_path / "ema"
    assert main(["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--short-side", str(SHORT_SIDE),
                 "--max-videos", "1", "--overlays", "0", "--smoothing", "EMA:0.5", "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert summary["title"] == "tiny + ema:0.5 on vspw val (streaming)"
    assert summary["info"]["mode"] == "streaming" and summary["info"]["smoothing"] == "ema:0.5"
    assert set(summary["consistency"]) == {"mVC8", "mVC16", "mVC8_correct", "mVC16_correct"}
    assert "mVC8_correct" in capsys.readouterr().out

    assert main(["--checkpoint", str(checkpoint), "--data", str(vspw_root), "--smoothing", "ema:2",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "argument --smoothing: smoothing 'ema:2' is not valid: the EMA factor must be a number in (0, 1]" in err
    assert "\n" not in err and not (tmp_path / "bad").exists()
