"""Tests of clip sampling (sdcpc_core.data.clips) and clip-consistent transforms."""

import numpy as np
import pytest
import torch

from sdcpc_core.data import ClipSampler, reference_indices

cv2 = pytest.importorskip('cv2')
from sdcpc_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipEvalTransform, ClipTrainTransform, rescale_size  # noqa: E402

# ----------------------------------------------------------------------------- clip indices

def test_reference_indices_clamp_at_start():
    assert reference_indices(20) == [11, 14, 17]
    assert reference_indices(4) == [0, 0, 1]
    assert reference_indices(0) == [0, 0, 0]
    assert reference_indices(9) == [0, 3, 6]
    assert reference_indices(5, offsets=(2,)) == [3]


def test_reference_indices_reverse_clamps_at_end():
    assert reference_indices(3, num_frames=10, reverse=True) == [9, 9, 6]
    with pytest.raises(ValueError, match='num_frames'):
        reference_indices(3, reverse=True)
    with pytest.raises(ValueError, match='outside'):
        reference_indices(10, num_frames=10)


def test_sampler_is_deterministic_and_targets_last():
    s = ClipSampler([30, 12, 50], p_start=0.2, p_reverse=0.3)
    a = s.sample_many(np.random.default_rng(5), 50)
    b = s.sample_many(np.random.default_rng(5), 50)
    assert a == b
    for c in a:
        assert c.frames[-1] == c.target
        assert list(c.frames[:-1]) == reference_indices(c.target, (9, 6, 3), s.video_lengths[c.video],
                                                        reverse=c.reversed)
    assert any(c.reversed for c in a) and not all(c.reversed for c in a)


def test_sampler_start_probability():
    lengths = [200] * 5
    n = 4000
    rng = np.random.default_rng(0)
    plain = ClipSampler(lengths, p_start=0.0).sample_many(rng, n)
    boosted = ClipSampler(lengths, p_start=0.5).sample_many(rng, n)
    frac_plain = np.mean([c.target < 9 for c in plain])
    frac_boost = np.mean([c.target < 9 for c in boosted])
    # plain: 9/200 = 0.045; boosted: 0.5 + 0.5 * 0.045 = 0.52
    assert abs(frac_plain - 0.045) < 0.02
    assert abs(frac_boost - 0.5225) < 0.04
    # start draws really produce clamped / duplicated references
    assert any(len(set(c.frames)) < len(c.frames) for c in boosted)
    assert not any(c.reversed for c in boosted)


def test_sampler_labelled_targets_and_video_weights():
    s = ClipSampler([30, 30], labelled=[[19], [5, 19, 25]], p_start=0.0)
    assert len(s) == 4
    clips = s.sample_many(np.random.default_rng(1), 2000)
    assert {(c.video, c.target) for c in clips} == {(0, 19), (1, 5), (1, 19), (1, 25)}
    assert abs(np.mean([c.video == 1 for c in clips]) - 0.75) < 0.04
    with pytest.raises(ValueError, match='p_start'):
        ClipSampler([10], p_start=1.5)
    with pytest.raises(ValueError, match='labelled'):
        ClipSampler([10], labelled=[[10]])


# ----------------------------------------------------------------------------- transforms

def _clip(h=32, w=48, t=4, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[:, w // 2:] = 3
    label[: h // 4] = 255
    return [frame.copy() for _ in range(t)], label


def test_same_parameters_for_every_frame():
    frames, label = _clip()
    tf = ClipTrainTransform(crop_size=(24, 24), base_scale=(48, 32), cat_max_ratio=0.75)
    for seed in range(6):
        out = tf(frames, [label] * 4, np.random.default_rng(seed))
        imgs = out['images']
        assert imgs.shape == (4, 3, 24, 24) and imgs.dtype == torch.float32
        assert out['label'].shape == (24, 24) and out['label'].dtype == torch.int64
        for i in range(1, 4):
            assert torch.equal(imgs[0], imgs[i])
            assert torch.equal(out['labels'][i], out['label'])


def test_deterministic_given_generator():
    frames, label = _clip()
    tf = ClipTrainTransform(crop_size=(24, 24), base_scale=(48, 32))
    a = tf(frames, label, np.random.default_rng(3))
    b = tf(frames, label, np.random.default_rng(3))
    assert torch.equal(a['images'], b['images']) and torch.equal(a['label'], b['label'])
    assert 'labels' not in a


def test_labels_keep_input_values_or_ignore():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([2, 7, 9, 255], np.uint8), size=(32, 48))
    frames = [rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8) for _ in range(2)]
    tf = ClipTrainTransform(crop_size=(40, 40), base_scale=(48, 32), ratio_range=(0.5, 2.0))
    for seed in range(8):
        out = tf(frames, label, np.random.default_rng(seed))
        assert set(np.unique(out['label'].numpy())) <= {2, 7, 9, 255}
    # a crop larger than the resized image is padded with 255 (labels) and 0 (images)
    small = ClipTrainTransform(crop_size=(40, 40), base_scale=(24, 16), ratio_range=(1.0, 1.0),
                               photometric=False, flip_prob=0.0)
    out = small(frames, label, np.random.default_rng(0))
    assert (out['label'][16:] == 255).all() and (out['label'][:, 24:] == 255).all()
    assert (out['images'][:, :, 16:] == 0).all()


def test_cat_max_ratio_respected_when_possible():
    # one class covers most of the image, a small column of another on the right
    label = np.zeros((32, 48), np.uint8)
    label[:, 40:] = 1
    frames = [np.zeros((32, 48, 3), np.uint8)]
    tf = ClipTrainTransform(crop_size=(16, 16), base_scale=(48, 32), ratio_range=(1.0, 1.0),
                            cat_max_ratio=0.75, photometric=False, flip_prob=0.0)
    loose = ClipTrainTransform(crop_size=(16, 16), base_scale=(48, 32), ratio_range=(1.0, 1.0),
                               cat_max_ratio=1.0, photometric=False, flip_prob=0.0)
    ok_strict = ok_loose = 0
    for seed in range(40):
        lab = tf(frames, label, np.random.default_rng(seed))['label'].numpy()
        ok_strict += (lab == 0).mean() < 0.75
        lab = loose(frames, label, np.random.default_rng(seed))['label'].numpy()
        ok_loose += (lab == 0).mean() < 0.75
    # only crops with x >= 29 qualify (4 of 33 positions): one random crop rarely does (~12 %),
    # the best of 10 tries usually does (~72 %); seeded, so the counts are fixed (30 and 6)
    assert ok_strict >= 20 and ok_loose <= 12


def test_flip_flips_images_and_labels():
    h, w = 32, 48
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2] = 200
    label = np.zeros((h, w), np.uint8)
    label[:, : w // 2] = 5
    flip = ClipTrainTransform(crop_size=(h, w), base_scale=(w, h), ratio_range=(1.0, 1.0),
                              cat_max_ratio=1.0, flip_prob=1.0, photometric=False)
    keep = ClipTrainTransform(crop_size=(h, w), base_scale=(w, h), ratio_range=(1.0, 1.0),
                              cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    a = flip([frame, frame], [None, label], np.random.default_rng(0))
    b = keep([frame, frame], [None, label], np.random.default_rng(0))
    assert torch.equal(a['images'], torch.flip(b['images'], dims=[-1]))
    assert torch.equal(a['label'], torch.flip(b['label'], dims=[-1]))
    assert a['label'][0, -1] == 5 and b['label'][0, 0] == 5
    assert (a['labels'][0] == 255).all()  # frame without a label


def test_normalisation_and_photometric_range():
    frame = np.full((32, 48, 3), 128, np.uint8)
    tf = ClipTrainTransform(crop_size=(32, 48), base_scale=(48, 32), ratio_range=(1.0, 1.0),
                            cat_max_ratio=1.0, flip_prob=0.0, photometric=False)
    out = tf([frame], np.zeros((32, 48), np.uint8), np.random.default_rng(0))
    expected = (128 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out['images'][0, :, 0, 0].numpy(), expected, rtol=1e-5)
    photo = ClipTrainTransform(crop_size=(32, 48), base_scale=(48, 32), ratio_range=(1.0, 1.0),
                               cat_max_ratio=1.0, flip_prob=0.0)
    changed = 0
    for seed in range(10):
        img = photo([frame], np.zeros((32, 48), np.uint8), np.random.default_rng(seed))['images']
        changed += not torch.allclose(img, out['images'])
    assert changed >= 5


def test_rescale_size_and_eval_transform():
    assert rescale_size(480, 640, (853, 480)) == (480, 640)
    assert rescale_size(480, 960, (853, 480)) == (427, 853)
    ev = ClipEvalTransform(short_side=40, size_divisor=32)
    out = ev([np.zeros((32, 48, 3), np.uint8)] * 2)
    assert out['valid_hw'] == (40, 60)
    assert out['images'].shape == (2, 3, 64, 64)
