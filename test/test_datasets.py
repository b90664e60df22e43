"""Tests of the dataset readers on tiny trees written in each dataset's layout."""

import os
import warnings

import numpy as np
import pytest

cv2 = pytest.importorskip('cv2')
Image = pytest.importorskip('PIL.Image')

from sdcpc_core.data.datasets import CamVidDataset, CityscapesSequenceDataset, UnreadableImageError, VSPWDataset  # noqa: E402

H, W = 32, 48


def _frame(value: int) -> np.ndarray:
    """An RGB frame whose red channel encodes ``value`` (to tell frames apart after reading)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = value
    img[..., 1] = 7
    return img


def _write_rgb(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(_frame(value), cv2.COLOR_RGB2BGR))
    assert ok


def _red(frame):
    return round(float(frame[..., 0].mean()))


def _write_label(path, arr, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode='L')
    if palette:
        im = im.convert('P')
        im.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)])
    im.save(str(path))


# ----------------------------------------------------------------------------- VSPW

def _vspw_tree(root, n_frames=12):
    label = np.zeros((H, W), np.uint8)
    label[:, 10:20] = 1
    label[:, 20:30] = 124
    label[:, 30:40] = 255
    label[:, 40:] = 57
    for video in ('vid_a', 'vid_b'):
        for k in range(n_frames):
            name = f'{k:08d}'
            _write_rgb(root / 'data' / video / 'origin' / f'{name}.jpg', 10 * k + 5)
            if not (video == 'vid_b' and k == 3):  # one frame without a mask
                _write_label(root / 'data' / video / 'mask' / f'{name}.png', label, palette=True)
    (root / 'train.txt').write_text('vid_a\nvid_b\n\n')
    (root / 'val.txt').write_text('vid_b\n')
    return label


def test_vspw_clips_and_label_mapping(tmp_path):
    _vspw_tree(tmp_path)
    ds = VSPWDataset(str(tmp_path), 'train')
    assert ds.video_names == ['vid_a', 'vid_b'] and ds.video_lengths == [12, 12]
    assert len(ds) == 12 + 11
    assert 3 not in ds.labelled[1]
    clip = ds[4]  # vid_a, target 4 -> references 0, 0, 1
    assert clip.meta['video'] == 'vid_a' and clip.meta['frame_indices'] == [0, 0, 1, 4]
    reds = [_red(f) for f in clip.frames]  # JPEG: within a few levels of the written value
    assert all(abs(r - e) <= 3 for r, e in zip(reds, [5, 5, 15, 45])), reds
    assert clip.frames[0].shape == (H, W, 3) and clip.frames[0].dtype == np.uint8
    lab = clip.label
    assert lab.dtype == np.uint8 and lab.shape == (H, W)
    assert (lab[:, :10] == 255).all()   # 0 -> ignore
    assert (lab[:, 10:20] == 0).all()   # 1 -> 0
    assert (lab[:, 20:30] == 123).all()  # 124 -> 123
    assert (lab[:, 30:40] == 255).all()  # 255 -> ignore
    assert (lab[:, 40:] == 56).all()
    c = ds.clip(1, 11)
    assert c.meta['frame_indices'] == [2, 5, 8, 11] and c.meta['video'] == 'vid_b'


def test_vspw_all_labels_and_sampler(tmp_path):
    _vspw_tree(tmp_path)
    ds = VSPWDataset(str(tmp_path), 'val', all_labels=True)
    clip = ds.clip(0, 6)  # references 0, 0, 3; frame 3 has no mask
    assert clip.meta['frame_indices'] == [0, 0, 3, 6]
    assert clip.labels[2] is None and clip.labels[0] is not None
    np.testing.assert_array_equal(clip.labels[-1], clip.label)
    sampler = ds.make_sampler(p_start=0.5)
    picks = sampler.sample_many(np.random.default_rng(0), 30)
    assert all(p.target != 3 for p in picks)


def test_vspw_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='VSPW root'):
        VSPWDataset(str(tmp_path / 'nope'))
    _vspw_tree(tmp_path, n_frames=4)
    with pytest.raises(FileNotFoundError, match=r'test\.txt'):
        VSPWDataset(str(tmp_path), 'test')
    (tmp_path / 'test.txt').write_text('missing_video\n')
    with pytest.raises(FileNotFoundError, match='missing_video'):
        VSPWDataset(str(tmp_path), 'test')
    bad = tmp_path / 'data' / 'vid_a' / 'origin' / '00000002.jpg'
    bad.write_bytes(b'not a jpeg')
    ds = VSPWDataset(str(tmp_path), 'train')
    with pytest.raises(UnreadableImageError) as info:
        ds[2]
    assert info.value.path.endswith('00000002.jpg') and '00000002.jpg' in str(info.value)


# ----------------------------------------------------------------------------- Cityscapes

def _cityscapes_tree(root, split='val'):
    city, seq, labelled = 'frankfurt', '000000', 1294
    first = labelled - 19
    for k in range(30):
        f = first + k
        _write_rgb(root / 'leftImg8bit_sequence' / split / city / f'{city}_{seq}_{f:06d}_leftImg8bit.png', k)
    raw = np.zeros((H, W), np.uint8)
    raw[:, :12] = 7      # road -> 0
    raw[:, 12:24] = 26   # car -> 13
    raw[:, 24:36] = 33   # bicycle -> 18
    raw[:, 36:] = 4      # static -> ignore
    _write_label(root / 'gtFine' / split / city / f'{city}_{seq}_{labelled:06d}_gtFine_labelIds.png', raw)
    # other gtFine files must be ignored
    _write_label(root / 'gtFine' / split / city / f'{city}_{seq}_{labelled:06d}_gtFine_color.png', raw)
    return first


def test_cityscapes_clip(tmp_path):
    _cityscapes_tree(tmp_path)
    ds = CityscapesSequenceDataset(str(tmp_path), 'val')
    assert len(ds) == 1 and ds.video_lengths == [30] and ds.labelled == [[19]]
    clip = ds[0]
    assert clip.meta['frame_indices'] == [10, 13, 16, 19]
    assert [_red(f) for f in clip.frames] == [10, 13, 16, 19]
    assert clip.meta['paths'][-1].endswith('frankfurt_000000_001294_leftImg8bit.png')
    lab = clip.label
    assert (lab[:, :12] == 0).all() and (lab[:, 12:24] == 13).all()
    assert (lab[:, 24:36] == 18).all() and (lab[:, 36:] == 255).all()


def test_cityscapes_missing_reference_and_errors(tmp_path):
    first = _cityscapes_tree(tmp_path)
    os.remove(tmp_path / 'leftImg8bit_sequence' / 'val' / 'frankfurt' /
              f'frankfurt_000000_{first + 10:06d}_leftImg8bit.png')
    clip = CityscapesSequenceDataset(str(tmp_path), 'val')[0]
    assert [_red(f) for f in clip.frames] == [11, 13, 16, 19]  # nearest towards the target
    with pytest.raises(FileNotFoundError, match='train'):
        CityscapesSequenceDataset(str(tmp_path), 'train')
    with pytest.raises(FileNotFoundError, match='root'):
        CityscapesSequenceDataset(str(tmp_path / 'nope'), 'val')


# ----------------------------------------------------------------------------- CamVid

def _camvid_tree(root, with_frames):
    ann = np.zeros((H, W), np.uint8)
    ann[:, :16] = 3
    ann[:, 16:32] = 11  # void
    ann[:, 32:] = 10
    for num in (6690, 6720):
        name = f'0001TP_{num:06d}'
        _write_rgb(root / 'train' / f'{name}.png', 200 if num == 6690 else 210)
        _write_label(root / 'trainannot' / f'{name}.png', ann)
    _write_rgb(root / 'train' / 'Seq05VD_f00030.png', 220)
    _write_label(root / 'trainannot' / 'Seq05VD_f00030.png', ann)
    if with_frames:
        for num in range(6700, 6721):
            _write_rgb(root / 'frames' / '0001TP' / f'0001TP_{num:06d}.png', num - 6700)
        for num in range(20, 31):
            _write_rgb(root / 'frames' / 'Seq05VD' / f'{num:05d}.png', 100 + num)


def test_camvid_without_frames_uses_the_labelled_frame(tmp_path):
    _camvid_tree(tmp_path, with_frames=False)
    with pytest.warns(UserWarning, match='own reference'):
        ds = CamVidDataset(str(tmp_path), 'train')
    assert len(ds) == 3
    clip = ds[0]
    assert clip.meta['video'] == '0001TP_006690'
    assert [_red(f) for f in clip.frames] == [200] * 4
    lab = clip.label
    assert (lab[:, :16] == 3).all() and (lab[:, 16:32] == 255).all() and (lab[:, 32:] == 10).all()
    with pytest.raises(FileNotFoundError, match='valannot'):
        CamVidDataset(str(tmp_path), 'val')


def test_camvid_with_frames_folder(tmp_path):
    _camvid_tree(tmp_path, with_frames=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ds = CamVidDataset(str(tmp_path), 'train')
    # 0001TP_006690 is not in the frames folder: one warning about it, none about missing frames
    assert any('not in' in str(w.message) for w in caught)
    assert not any('own reference' in str(w.message) for w in caught)
    assert sorted(ds.video_names) == ['0001TP', 'Seq05VD']
    v = ds.video_names.index('0001TP')
    # frames: 6690 (labelled, from train/), 6700..6720 -> 22 positions; 6720 at position 21
    assert ds.video_lengths[v] == 22 and ds.labelled[v] == [0, 21]
    clip = ds.clip(v, 21)
    assert clip.meta['frame_indices'] == [12, 15, 18, 21]
    assert [_red(f) for f in clip.frames] == [11, 14, 17, 210]  # target read from train/
    s = ds.video_names.index('Seq05VD')
    clip = ds.clip(s, ds.labelled[s][0])
    assert [_red(f) for f in clip.frames] == [121, 124, 127, 220]
