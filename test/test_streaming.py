"""StreamingSegmenter and ReferenceCache: parity with forward_clip, reference selection, resets, inputs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdcpc_core.models import build_model
from sdcpc_core.runtime import (
    ReferenceCache,
    SegmentationResult,
    StreamingConfig,
    StreamingSegmenter,
    available_backends,
    create_backend,
)
from sdcpc_core.runtime.image import to_rgb
from sdcpc_core.weights import save_weights
from sdcpc_core.weights.shipped import shipped_checkpoints

NET = (64, 96)  # network input (height, width)
CAMERA = (96, 128)  # letterboxed into NET: image area 64 x 85, 11 padded columns
CLASSES = 5
PERIOD_NS = round(1e9 / 30)
OFFSETS = (9, 6, 3)


def _model(num_classes: int = CLASSES, variant: str = "sdcpc_b0", seed: int = 0):
    """A tiny model whose temporal part changes the output (zero-initialised scales set at random)."""
    torch.manual_seed(seed)
    model = build_model(variant, num_classes, coarse_tokens=4)
    if model.is_temporal:
        with torch.no_grad():
            for parameter in model.zero_initialised_scales():
                parameter.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _images(count: int, size=CAMERA, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def _dummy_cache(value: float = 0.0):
    from sdcpc_core.models import FrameCache

    t = torch.full((1, 1), value)
    return FrameCache(t, t, t, t, t)


# ------------------------------------------------------------------------------ parity with training
def test_streaming_equals_forward_clip(model):
    seg = StreamingSegmenter(model, input_size=NET, output_resolution="network")
    images = _images(14)
    inputs = [seg.preprocess(image) for image in images]
    area = (16, 22)  # ceil(64 / 4) x ceil(85 / 4)
    temporal_changed = 0.0
    for index, image in enumerate(images):
        result = seg.step(image, index * PERIOD_NS, "camera")
        refs = [stamp // PERIOD_NS for stamp in result.references]
        # training's cold start: reference index max(t - offset, 0); the frame itself when it is the first
        assert refs == [max(index - o, 0) for o in OFFSETS]
        with torch.no_grad():
            clip = model.forward_clip(torch.stack([inputs[i] for i in (*refs, index)], dim=1))
        logits = clip.temporal_logits[0, :, : area[0], : area[1]]
        assert result.labels.shape == area and result.labels.dtype == np.uint8
        np.testing.assert_array_equal(result.labels, logits.argmax(0).numpy())
        np.testing.assert_allclose(result.confidence, logits.softmax(0).amax(0).numpy(), rtol=1e-5, atol=1e-6)
        temporal_changed = max(temporal_changed, (clip.temporal_logits - clip.static_logits[:, -1]).abs().max().item())
    assert temporal_changed > 1e-2, "the temporal branch must change the logits for this test to mean anything"
    assert len(seg.buffered_stamps) == 10  # t-9 .. t at the nominal rate


# --------------------------------------------------------------------------------- reference cache
def _brute_nearest(history: list[int], target: int) -> int:
    return min(history, key=lambda s: (abs(s - target), s))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_with_drops_and_jitter_matches_full_history(seed):
    """Eviction never removes a frame that the nearest-stamp rule would still pick."""
    rng = random.Random(seed)
    cache = ReferenceCache(OFFSETS, 1 / 30, max_entries=64)
    history: list[int] = []
    for index in range(200):
        if rng.random() < 0.3:
            continue  # dropped frame
        stamp = index * PERIOD_NS + rng.randint(-8_000_000, 8_000_000)
        if history and stamp <= history[-1]:
            continue
        expected = [_brute_nearest(history, stamp - o * PERIOD_NS) for o in OFFSETS] if history else [stamp] * 3
        assert cache.select_stamps(stamp) == expected
        cache.add(stamp, _dummy_cache())
        history.append(stamp)
        # only the oldest entry may lie beyond the farthest reference time
        assert all(s > stamp - cache.span_ns for s in cache.stamps[1:])


def test_selection_picks_nearest_after_drops():
    cache = ReferenceCache(OFFSETS, 1 / 30)
    for frame in (0, 1, 2, 4, 7, 8, 10, 12, 13):
        cache.add(frame * PERIOD_NS, _dummy_cache(frame))
    assert [s // PERIOD_NS for s in cache.stamps] == [4, 7, 8, 10, 12, 13]  # 0..2 can never be picked again
    # frame 15 asks for 6 (-> 7, nearer than 4), 9 (8 and 10 tie -> the older 8), 12
    assert [s // PERIOD_NS for s in cache.select_stamps(15 * PERIOD_NS)] == [7, 8, 12]
    assert [e.features.item() for e in cache.select(15 * PERIOD_NS)] == [7.0, 8.0, 12.0]


def test_cold_start_duplicates():
    cache = ReferenceCache(OFFSETS, 1 / 30)
    current = _dummy_cache(-1.0)
    assert cache.select_stamps(5) == [5, 5, 5]
    assert [e.features.item() for e in cache.select(5, current)] == [-1.0] * 3
    assert all(e.logits is None for e in cache.select(5, current))
    for index in range(12):
        stamp = index * PERIOD_NS
        if index:
            assert [s // PERIOD_NS for s in cache.select_stamps(stamp)] == [max(index - o, 0) for o in OFFSETS]
        cache.add(stamp, _dummy_cache(index))
    with pytest.raises(ValueError, match="increasing stamps"):
        cache.add(3 * PERIOD_NS, _dummy_cache())


def test_memory_bound_at_1khz():
    cache = ReferenceCache(OFFSETS, 1 / 30)
    assert cache.max_entries == max(OFFSETS) + 2
    for index in range(500):
        stamp = index * 1_000_000  # 1 kHz
        cache.add(stamp, _dummy_cache(index))
        assert len(cache) <= cache.max_entries
    # thinned, not truncated: the far reference (t - 300 ms) is still within about one period
    now = 500 * 1_000_000
    for target, chosen in zip((now - o * PERIOD_NS for o in OFFSETS), cache.select_stamps(now)):
        assert abs(chosen - target) <= PERIOD_NS


def test_segmenter_buffer_bound_at_1khz(model):
    seg = StreamingSegmenter(model, input_size=NET, max_entries=4)
    image = _images(1)[0]
    for index in range(12):
        seg.step(image, index * 1_000_000, "camera")
        assert len(seg.buffered_stamps) <= 4


# ------------------------------------------------------------------------------------------ resets
def test_reset_rules(model):
    seg = StreamingSegmenter(model, input_size=NET, max_gap_s=0.5)
    image, small = _images(1)[0], _images(1, size=(80, 120))[0]

    def step(img, frame, frame_id="cam"):
        return seg.step(img, frame * PERIOD_NS, frame_id)

    first = step(image, 0)
    assert not first.reset and first.reset_reason is None
    step(image, 1)
    cases = [  # (camera image, frame index, frame_id, expected reason)
        (image, 1, "cam", "time stamp repeated"),
        (image, 0, "cam", "time stamp went backwards"),
        (image, 30, "cam", "exceeds max_gap_s 0.5 s"),  # 29 periods after frame 1: 0.97 s
        (small, 33, "cam", "image size changed from 96x128 to 80x120"),
        (small, 36, "other_cam", "frame_id changed from 'cam' to 'other_cam'"),
    ]
    for img, frame, frame_id, reason in cases:
        result = step(img, frame, frame_id)
        assert result.reset and reason in result.reset_reason, result.reset_reason
        assert result.references == [result.stamp_ns] * 3  # no history: the frame itself
        assert seg.buffered_stamps == [result.stamp_ns]  # cleared, then this frame was processed and cached
        assert result.labels.shape == img.shape[:2] == result.confidence.shape
        after = step(img, frame + 1, frame_id)
        assert not after.reset and after.reset_reason is None
        assert after.references == [result.stamp_ns] * 3
    seg.reset("lifecycle deactivated")
    result = seg.step(image, 100 * PERIOD_NS, "cam")
    assert result.reset and result.reset_reason == "lifecycle deactivated"


# --------------------------------------------------------------------------------------- encodings
def test_encodings(model):
    seg = StreamingSegmenter(model, input_size=NET)
    rgb = _images(1)[0]
    alpha = np.random.default_rng(3).integers(0, 256, (*CAMERA, 1), dtype=np.uint8)
    expected = seg.preprocess(rgb)
    np.testing.assert_array_equal(to_rgb(rgb[:, :, ::-1].copy(), "bgr8"), rgb)
    assert torch.equal(seg.preprocess(rgb[:, :, ::-1].copy(), "bgr8"), expected)
    assert torch.equal(seg.preprocess(np.concatenate([rgb, alpha], axis=2), "rgba8"), expected)
    assert torch.equal(seg.preprocess(np.concatenate([rgb[:, :, ::-1], alpha], axis=2), "bgra8"), expected)
    assert torch.equal(seg.preprocess(rgb[:, ::-1]), seg.preprocess(np.ascontiguousarray(rgb[:, ::-1])))
    grey = rgb[:, :, 1]
    grey3 = np.repeat(grey[:, :, None], 3, axis=2)
    assert torch.equal(seg.preprocess(grey, "mono8"), seg.preprocess(grey3))
    assert torch.equal(seg.preprocess(grey[:, :, None], "mono8"), seg.preprocess(grey3))
    # a full step: bgr8 of the swapped image gives the labels of rgb8
    a = StreamingSegmenter(model, input_size=NET).step(rgb, 0, "cam")
    b = StreamingSegmenter(model, input_size=NET, encoding="bgr8").step(rgb[:, :, ::-1], 0, "cam")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_letterbox_layout(model):
    seg = StreamingSegmenter(model, input_size=NET)
    image = seg.preprocess(_images(1)[0])
    assert image.shape == (1, 3, *NET) and image.dtype == torch.float32
    assert torch.count_nonzero(image[..., 85:]) == 0 and torch.count_nonzero(image[..., 84]) > 0
    stretched = StreamingSegmenter(model, input_size=NET, resize_mode="stretch").preprocess(_images(1)[0])
    assert torch.count_nonzero(stretched[..., 85:]) > 0
    # the ImageNet normalisation of a constant image
    grey = StreamingSegmenter(model, input_size=NET).preprocess(np.full((*NET, 3), 128, np.uint8))
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    torch.testing.assert_close(grey[0, :, 0, 0], (128 / 255 - mean) / std)


# -------------------------------------------------------------------------------------- resolution
def _first_frame_logits(seg: StreamingSegmenter, image: np.ndarray) -> torch.Tensor:
    current = seg.backend.encode(seg.preprocess(image))
    return seg.backend.temporal(current, [current.without_logits()] * 3)


def test_output_resolutions(model):
    image = _images(1, size=NET)[0]  # camera size = network input: the 1/4 logits map 4x4 pixels each
    camera = StreamingSegmenter(model, input_size=NET, resize_mode="stretch")
    network = StreamingSegmenter(model, input_size=NET, resize_mode="stretch", output_resolution="network")
    bilinear = StreamingSegmenter(model, input_size=NET, resize_mode="stretch", upsample_logits=True)
    logits = _first_frame_logits(camera, image)
    r_cam, r_net, r_bil = (s.step(image, 0, "cam") for s in (camera, network, bilinear))
    assert r_net.labels.shape == (16, 24) and r_cam.labels.shape == NET == r_bil.labels.shape
    assert r_cam.confidence.dtype == np.float32 and r_cam.labels.dtype == np.uint8
    np.testing.assert_array_equal(r_net.labels, logits[0].argmax(0).numpy())
    np.testing.assert_array_equal(r_cam.labels, r_net.labels.repeat(4, axis=0).repeat(4, axis=1))
    np.testing.assert_array_equal(r_cam.confidence, r_net.confidence.repeat(4, axis=0).repeat(4, axis=1))
    up = F.interpolate(logits, size=NET, mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(r_bil.labels, up.argmax(0).numpy())
    np.testing.assert_allclose(r_bil.confidence, up.softmax(0).amax(0).numpy(), rtol=1e-4, atol=1e-5)
    assert r_bil.confidence.min() > 0.0 and r_bil.confidence.max() <= 1.0
    assert r_cam.references == [0, 0, 0]
    assert set(r_cam.timings_ms) == {"preprocess", "encode", "temporal", "postprocess", "total"}


def test_camera_resolution_letterboxed(model):
    seg = StreamingSegmenter(model, input_size=NET)
    result = seg.step(_images(1)[0], 0, "cam")
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == CAMERA and result.confidence.shape == CAMERA
    net = StreamingSegmenter(model, input_size=NET, output_resolution="network").step(_images(1)[0], 0, "cam")
    # camera pixel (y, x) -> network (y, x) * 64/96 -> logits / 4
    rows = np.minimum(((np.arange(CAMERA[0]) + 0.5) * 64 / 96 / 4).astype(int), 15)
    cols = np.minimum(((np.arange(CAMERA[1]) + 0.5) * 85 / 128 / 4).astype(int), 21)
    np.testing.assert_array_equal(result.labels, net.labels[rows][:, cols])


def test_uint16_labels_with_300_classes():
    model = _model(300)
    seg = StreamingSegmenter(model, input_size=NET, output_resolution="network")
    image = _images(1)[0]
    logits = _first_frame_logits(seg, image)
    result = seg.step(image, 0, "cam")
    assert result.labels.dtype == np.uint16
    np.testing.assert_array_equal(result.labels, logits[0, :, :16, :22].argmax(0).numpy())


def test_per_frame_model_has_no_references():
    model = _model(variant="segformer_b0")
    seg = StreamingSegmenter(model, input_size=NET)
    result = seg.step(_images(1)[0], 0, "cam")
    assert result.references == [] and result.labels.shape == CAMERA and len(seg.buffered_stamps) == 0


# -------------------------------------------------------------------------------------- bad inputs
BAD_INPUTS = [
    (lambda img: img.astype(np.float32), {}, "uint8 image"),
    (lambda img: np.concatenate([img, img[:, :, :1]], axis=2), {}, "encoding rgb8 needs an image of shape H x W x 3"),
    (lambda img: img[:, :, 0], {}, "H x W x 3, got shape (96, 128)"),
    (lambda img: img[:, :, :3], {"encoding": "bgra8"}, "H x W x 4"),
    (lambda img: img[:0], {}, "empty"),
    (lambda img: img[:, :0], {}, "empty"),
    (lambda img: img, {"encoding": "yuv422"}, "unknown image encoding 'yuv422'; accepted encodings: rgb8, bgr8"),
    (lambda img: img.tolist(), {}, "numpy array"),
    (lambda img: img, {"stamp_ns": 1.5}, "stamp_ns must be an integer"),
    (lambda img: img, {"frame_id": 3}, "frame_id must be a string"),
]


def test_bad_inputs_raise_and_keep_the_buffer(model):
    seg = StreamingSegmenter(model, input_size=NET)
    image = _images(1)[0]
    for index in range(2):
        seg.step(image, index * PERIOD_NS, "cam")
    before = seg.buffered_stamps
    for make, kwargs, message in BAD_INPUTS:
        call = {"stamp_ns": 2 * PERIOD_NS, "frame_id": "cam", **kwargs}
        with pytest.raises(ValueError) as error:
            seg.step(make(image), **call)
        assert message in str(error.value)
        assert "\n" not in str(error.value)
        assert seg.buffered_stamps == before
    result = seg.step(image, 2 * PERIOD_NS, "cam")
    assert not result.reset and result.references == [0, 0, 0]
    assert seg.buffered_stamps == [*before, 2 * PERIOD_NS]


def test_config_validation():
    cases = [
        ({"input_size": (16, 96)}, "StreamingConfig.input_size"),
        ({"reference_offsets": ()}, "StreamingConfig.reference_offsets"),
        ({"reference_offsets": (3, 3)}, "distinct"),
        ({"frame_period_s": 0}, "StreamingConfig.frame_period_s"),
        ({"max_gap_s": -1.0}, "StreamingConfig.max_gap_s"),
        ({"output_resolution": "full"}, "one of camera, network"),
        ({"resize_mode": "crop"}, "one of letterbox, stretch"),
        ({"max_entries": 0}, "StreamingConfig.max_entries"),
        ({"output_resolution": "network", "upsample_logits": True}, "upsample_logits"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            StreamingConfig(**kwargs)
    config = StreamingConfig(input_size=[480, 864], reference_offsets=[3, 9, 6])
    assert config.input_size == (480, 864) and config.reference_offsets == (9, 6, 3) and config.entries_limit == 11
    with pytest.raises(ValueError, match="unknown streaming option"):
        StreamingSegmenter(_model(), input_size=NET, max_gap=1.0)


# ------------------------------------------------------------------------------- construction
def test_from_checkpoint(tmp_path, model):
    path = tmp_path / "tiny.safetensors"
    save_weights(model, path)
    loaded = StreamingSegmenter.from_checkpoint(path, input_size=NET, output_resolution="network")
    direct = StreamingSegmenter(model, input_size=NET, output_resolution="network")
    image = _images(1)[0]
    np.testing.assert_array_equal(loaded.step(image, 0, "cam").labels, direct.step(image, 0, "cam").labels)
    assert loaded.config.input_size == NET
    with pytest.raises(FileNotFoundError):
        StreamingSegmenter.from_checkpoint(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.safetensors"):
        StreamingSegmenter.from_checkpoint(corrupt)


def test_from_checkpoint_unknown_name():
    with pytest.raises(ValueError) as error:
        StreamingSegmenter.from_checkpoint("sdcpc_b9_imaginary")
    message = str(error.value)
    assert "'sdcpc_b9_imaginary'" in message and "path" in message
    names = shipped_checkpoints()
    assert (f"shipped names: {', '.join(names)}" if names else "no shipped checkpoints are installed") in message


def test_unknown_backend_lists_backends(model):
    with pytest.raises(ValueError) as error:
        create_backend("nope", model, NET)
    assert "'nope'" in str(error.value) and "eager" in str(error.value) and "compile" in str(error.value)
    with pytest.raises(ValueError, match="known backends"):
        StreamingSegmenter(model, input_size=NET, backend="nope")
    assert {"eager", "compile"} <= set(available_backends())
