"""Temporal smoothing baselines: the parser, EMA and window arithmetic, the streaming runtime and the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdcpc_core.eval.smoothing import TemporalSmoother, parse_smoothing

PERIOD_NS = round(1e9 / 30)


# ------------------------------------------------------------------------------------------- parser
@pytest.mark.parametrize("text, spec", [
    ("ema:0.5", "ema:0.5"), (" EMA : 0.25 ", "ema:0.25"), ("ema:1", "ema:1"),
    ("window", "window:9,6,3"), ("window:3,6", "window:6,3"), ("window:1", "window:1"),
])
def test_parse_valid_forms(text, spec):
    assert parse_smoothing(text).spec == spec
    assert parse_smoothing(parse_smoothing(text).spec).spec == spec  # the spec reads back


def test_parse_none_and_the_models_offsets():
    assert parse_smoothing("none") is None and parse_smoothing("") is None and parse_smoothing(None) is None
    assert parse_smoothing("window", reference_offsets=(4, 2)).offsets == (4, 2)


@pytest.mark.parametrize("text, message", [
    ("ema", "smoothing 'ema' needs its factor (e.g. ema:0.5)"),
    ("ema:0", "the EMA factor must be a number in (0, 1], got 0.0"),
    ("ema:1.5", "the EMA factor must be a number in (0, 1]"),
    ("ema:nan", "the EMA factor must be a number in (0, 1]"),
    ("ema:fast", "the factor is not a number"),
    ("window:3,3", "the window offsets must be distinct integers >= 1"),
    ("window:0", "the window offsets must be distinct integers >= 1"),
    ("window:2.5", "the offsets are not integers"),
    ("median", "smoothing 'median' is not known"),
    ("none:1", "smoothing 'none:1' is not known"),
])
def test_parse_errors_are_one_sentence(text, message):
    with pytest.raises(ValueError) as error:
        parse_smoothing(text)
    text_of_error = str(error.value)
    assert message in text_of_error and "accepted: none, ema:A" in text_of_error and "\n" not in text_of_error


# --------------------------------------------------------------------------------------- arithmetic
def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.random((count, 3, 2, 2))
    return list(raw / raw.sum(axis=1, keepdims=True))


def test_ema_follows_its_recursion_and_resets():
    frames = _frames(5)
    smoother = TemporalSmoother("ema", factor=0.25)
    expected = frames[0]
    for index, frame in enumerate(frames):
        expected = frame if index == 0 else 0.25 * frame + 0.75 * expected
        np.testing.assert_allclose(smoother.step(frame), expected)
    smoother.reset()
    np.testing.assert_allclose(smoother.step(frames[2]), frames[2])  # a new stream starts unsmoothed


def test_window_uses_the_reference_offsets_and_the_earliest_frame_at_the_start():
    frames = _frames(6)
    smoother = TemporalSmoother("window", offsets=(1, 3))  # sorted farthest first
    assert smoother.offsets == (3, 1)
    for t, frame in enumerate(frames):
        picked = [frames[t], frames[max(t - 3, 0)], frames[max(t - 1, 0)]]  # training's clamped indices
        np.testing.assert_allclose(smoother.step(frame), np.mean(picked, axis=0))
    smoother.reset()
    np.testing.assert_allclose(smoother.step(frames[4]), frames[4])


@pytest.mark.parametrize("spec", ["ema:0.5", "window:2,1"])
def test_torch_tensors_and_reused_input_buffers(spec):
    """The smoother keeps copies: a caller (a CUDA-graph back end) may overwrite its output buffer."""
    frames = [torch.from_numpy(f) for f in _frames(4, seed=3)]
    reference, reused = parse_smoothing(spec), parse_smoothing(spec)
    buffer = torch.empty_like(frames[0])
    for frame in frames:
        buffer.copy_(frame)
        got = reused.step(buffer)
        want = reference.step(frame.clone())
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got.sum(dim=0), torch.ones(2, 2, dtype=got.dtype))  # still distributions


# ---------------------------------------------------------------------------------------- streaming
@pytest.fixture(scope="module")
def per_frame_model():
    from sdcpc_core.models import build_model

    pytest.importorskip("cv2")  # the streaming runtime resizes with OpenCV
    torch.manual_seed(0)
    return build_model("segformer_b0", 5).eval()


def _images(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("spec", ["ema:0.5", "window:2,1"])
def test_streaming_segmenter_smooths_the_probabilities_and_resets_with_the_buffer(per_frame_model, spec):
    from sdcpc_core.runtime import StreamingSegmenter

    plain = StreamingSegmenter(per_frame_model, input_size=(64, 96), output_resolution="network")
    smoothed = StreamingSegmenter(per_frame_model, input_size=(64, 96), output_resolution="network", smoothing=spec)
    oracle = parse_smoothing(spec)
    changed = 0
    images = _images(6)
    for index, image in enumerate(images):
        stamp = (index + (30 if index >= 4 else 0)) * PERIOD_NS  # a gap of a second before frame 4: a reset
        with torch.no_grad():
            probs = per_frame_model(plain.preprocess(image)).softmax(dim=1)
        if index == 4:
            oracle.reset()
        expected = oracle.step(probs)[0, :, :16, :24]
        result = smoothed.step(image, stamp, "cam")
        assert result.reset == (index == 4)
        np.testing.assert_array_equal(result.labels, expected.argmax(0).numpy())
        np.testing.assert_allclose(result.confidence, expected.amax(0).numpy(), rtol=1e-5, atol=1e-6)
        changed += int((result.labels != plain.step(image, stamp, "cam").labels).sum())
    assert changed > 0, "smoothing must change some labels of these random frames for the test to mean anything"


def test_streaming_config_refuses_a_bad_smoothing(per_frame_model):
    from sdcpc_core.runtime import StreamingConfig

    with pytest.raises(ValueError, match=r"StreamingConfig.smoothing must be none, ema:A .* got 'ema:2'"):
        StreamingConfig(smoothing="ema:2")


def test_evaluator_smoothing_needs_streaming_and_is_named_in_the_report(per_frame_model, tmp_path):
    from sdcpc_core.classes import ClassList
    from sdcpc_core.eval.evaluator import evaluate

    dataset = _ToyDataset(_images(10, seed=4))
    classes = ClassList.generic(5)
    with pytest.raises(ValueError, match="needs mode='streaming'"):
        evaluate(per_frame_model, dataset, classes, mode="clip", short_side=64, smoothing="ema:0.5", progress=False)
    with pytest.raises(ValueError, match="smoothing 'avg' is not known"):
        evaluate(per_frame_model, dataset, classes, mode="streaming", short_side=64, smoothing="avg", progress=False)
    reports = {spec: evaluate(per_frame_model, dataset, classes, mode="streaming", short_side=64, smoothing=spec,
                              consistency_mode="corrected", progress=False) for spec in (None, "ema:0.3", "window")}
    assert reports[None].info["smoothing"] == "none" and " + " not in reports[None].title
    assert reports["ema:0.3"].info["smoothing"] == "ema:0.3"
    assert reports["ema:0.3"].title.startswith("mit_b0 + ema:0.3 on ")
    assert reports["window"].info["smoothing"] == "window:2,1"  # the data set's reference offsets
    assert " + window:2,1 on " in reports["window"].title
    # smoothing random frames makes the predictions steadier
    assert reports["ema:0.3"].consistency["mVC8"] > reports[None].consistency["mVC8"]


class _ToyDataset:
    """One video of random frames with random labels (the reader interface ``evaluate`` needs)."""

    dataset_name, split = "toy", "val"

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.video_names = ["toy"]
        self.labelled = [list(range(len(images)))]
        self.offsets = (2, 1)
        label = np.random.default_rng(0).integers(0, 5, images[0].shape[:2], dtype=np.uint8)
        self.labels = [label] * len(images)  # a still scene: every pixel's ground truth is stable

    def clip(self, video: int, target: int):
        from types import SimpleNamespace

        indices = [max(target - o, 0) for o in self.offsets] + [target]
        return SimpleNamespace(frames=[self.images[i] for i in indices], label=self.labels[target])
