"""Tests of sdcpc_core.eval.metrics: confusion matrix / mIoU and video consistency."""

import math
import warnings

import numpy as np
import pytest
import torch

from sdcpc_core.eval import ConfusionMatrix, video_consistency

# ----------------------------------------------------------------------------- confusion matrix

def _small_case():
    gt = np.array([[0, 0, 1], [1, 255, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    return gt, pred


def test_iou_hand_computed_with_ignore_and_absent_class():
    gt, pred = _small_case()
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    # evaluated pixels (ignore skipped): gt [0,0,1,1,0], pred [0,1,1,2,0]
    expected = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=np.int64)
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.matrix.dtype == np.int64
    iou = cm.iou()
    assert iou[0] == pytest.approx(2 / 3)
    assert iou[1] == pytest.approx(1 / 3)
    assert math.isnan(iou[2])  # no ground-truth pixel of class 2: left out of the mean
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_update_accepts_torch_and_accumulates():
    gt, pred = _small_case()
    a = ConfusionMatrix(3)
    a.update(torch.from_numpy(gt.astype(np.int64)), torch.from_numpy(pred.astype(np.int64)))
    a.update(gt, pred)
    b = ConfusionMatrix(3)
    b.update(gt, pred)
    np.testing.assert_array_equal(a.matrix, 2 * b.matrix)


def test_merge_equals_joint_update():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 4, size=(5, 7)) for _ in range(2)]
    preds = [rng.integers(0, 4, size=(5, 7)) for _ in range(2)]
    joint = ConfusionMatrix(4)
    parts = [ConfusionMatrix(4), ConfusionMatrix(4)]
    for g, p, part in zip(gts, preds, parts):
        joint.update(g, p)
        part.update(g, p)
    merged = parts[0].merge(parts[1])
    np.testing.assert_array_equal(merged.matrix, joint.matrix)
    with pytest.raises(ValueError, match='merge'):
        parts[0].merge(np.zeros((3, 3)))


def test_invalid_values_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match='prediction value 3'):
        cm.update(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match='ground truth value 7'):
        cm.update(np.array([0, 7]), np.array([0, 1]))
    with pytest.raises(ValueError, match='same shape'):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    # a prediction outside the range is fine where the ground truth is ignored
    cm.update(np.array([255, 1]), np.array([200, 1]))
    assert cm.matrix.sum() == 1


def test_miou_matches_boolean_mask_computation():
    rng = np.random.default_rng(1)
    k = 6
    gt = rng.integers(0, k - 1, size=(4, 9, 11))  # class k-1 never in the ground truth
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, k, size=gt.shape)
    cm = ConfusionMatrix(k)
    for g, p in zip(gt, pred):
        cm.update(g, p)
    valid = gt != 255
    ious = []
    for c in range(k):
        g_c = (gt == c) & valid
        p_c = (pred == c) & valid
        if not g_c.any():
            continue
        ious.append((g_c & p_c).sum() / (g_c | p_c).sum())
    assert math.isnan(cm.iou()[k - 1])
    assert cm.miou() == pytest.approx(float(np.mean(ious)))
    assert cm.pixel_accuracy() == pytest.approx(((gt == pred) & valid).sum() / valid.sum())


def test_empty_matrix_gives_nan():
    cm = ConfusionMatrix(2)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


# ----------------------------------------------------------------------------- video consistency

def _long_video():
    """17 frames, 1x3 pixels: A (gt 0, pred 0, constant), B (gt ignore, pred changes at the last
    frame), C (gt 1, pred changes at the last frame)."""
    t = 17
    gt = np.zeros((t, 1, 3), dtype=np.uint8)
    gt[:, 0, 1] = 255
    gt[:, 0, 2] = 1
    pred = np.zeros_like(gt)
    pred[:, 0, 1] = 1
    pred[:, 0, 2] = 1
    pred[16, 0, 1] = 2
    pred[16, 0, 2] = 2
    return gt, pred


def _short_video():
    """10 frames, 1x2 pixels, gt constant 0; pixel 1's prediction changes from frame 5 on."""
    gt = np.zeros((10, 1, 2), dtype=np.uint8)
    pred = np.zeros_like(gt)
    pred[5:, 0, 1] = 3
    return gt, pred


def test_vc_modes_differ_as_documented():
    g1, p1 = _long_video()
    g2, p2 = _short_video()
    # vspw: short video skipped; windows start 0..8 (range(17 - 8)) so frame 16 is never seen;
    # the ignore pixel counts: every window has 3/3 consistent pixels.
    assert video_consistency([g1, g2], [p1, p2], n=8, mode='vspw') == pytest.approx(1.0)
    # corrected: long video windows 0..9, ignore pixel excluded (den 2); windows 0..8 give 2/2,
    # window 9 (frames 9..16) gives 1/2. Short video: windows 0..2, each 1/2.
    expected = (9 * 1.0 + 0.5 + 3 * 0.5) / 13
    assert video_consistency([g1, g2], [p1, p2], n=8, mode='corrected') == pytest.approx(expected)


def test_vc_vspw_counts_ignore_pixels():
    g, p = _long_video()
    p = p.copy()
    p[3, 0, 1] = 7  # the ignore pixel's prediction flickers at frame 3
    # vspw: windows starting 0..3 contain frame 3 -> 2/3; windows 4..8 -> 3/3
    assert video_consistency([g], [p], n=8, mode='vspw') == pytest.approx((4 * 2 / 3 + 5) / 9)
    # corrected ignores that pixel: windows 0..8 -> 1, window 9 -> 1/2
    assert video_consistency([g], [p], n=8, mode='corrected') == pytest.approx(9.5 / 10)


def _vc_reference(gts, preds, n, min_len_exclusive, drop_last, mask_ignore):
    """Independent formulation: iterative AND against the window's first frame, nanmean."""
    ratios = []
    for g, p in zip(gts, preds):
        if len(g) <= min_len_exclusive:
            continue
        last = len(g) - n if drop_last else len(g) - n + 1
        for i in range(last):
            gc = np.ones(g.shape[1:], bool)
            pc = np.ones(g.shape[1:], bool)
            for j in range(1, n):
                gc = np.logical_and(gc, g[i] == g[i + j])
                pc = np.logical_and(pc, p[i] == p[i + j])
            if mask_ignore:
                for j in range(n):
                    gc = np.logical_and(gc, g[i + j] != 255)
            with np.errstate(invalid='ignore', divide='ignore'):
                ratios.append((gc & pc).sum() / gc.sum())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return float(np.nanmean(ratios))


@pytest.mark.parametrize('n', [2, 3])
def test_vc_matches_independent_formulation_on_random_videos(n):
    rng = np.random.default_rng(2)
    gts, preds = [], []
    for length in (18, 20, 6):
        g = rng.integers(0, 2, size=(1, 4, 5)).repeat(length, axis=0)
        flip = rng.random(g.shape) < 0.08
        g = np.where(flip, rng.integers(0, 3, size=g.shape), g)
        g[rng.random(g.shape) < 0.05] = 255
        p = np.where(rng.random(g.shape) < 0.1, rng.integers(0, 3, size=g.shape), np.clip(g, 0, 2))
        gts.append(g.astype(np.uint8))
        preds.append(p.astype(np.uint8))
    got_v = video_consistency(gts, preds, n=n, mode='vspw')
    assert got_v == pytest.approx(_vc_reference(gts, preds, n, 16, True, False))
    got_c = video_consistency([torch.from_numpy(g) for g in gts], preds, n=n, mode='corrected')
    assert got_c == pytest.approx(_vc_reference(gts, preds, n, 0, False, True))
    assert 0.0 <= got_v <= 1.0 and 0.0 <= got_c <= 1.0


def test_vc_errors():
    g, p = _short_video()
    with pytest.raises(ValueError, match=r"unknown video consistency mode 'foo'.*vspw.*corrected"):
        video_consistency([g], [p], mode='foo')
    with pytest.raises(ValueError, match='no window'):
        video_consistency([g], [p], n=8, mode='vspw')  # 10 frames <= 16
    with pytest.raises(ValueError, match='no window'):
        video_consistency([g], [p], n=11, mode='corrected')
    with pytest.raises(ValueError, match='same shape'):
        video_consistency([g], [p[:, :, :1]], n=2, mode='corrected')


# ------------------------------------------------------------------- correctness-aware consistency

def _three_frames():
    """3 frames of 1x4 pixels a, b, c, d. Ground truth 0 everywhere except d = 1 from frame 1 on.
    Predictions: a right throughout; b wrong and stable (1); c 1, 0, 0; d 0, 1, 1."""
    gt = np.array([[[0, 0, 0, 0]], [[0, 0, 0, 1]], [[0, 0, 0, 1]]], dtype=np.uint8)
    pred = np.array([[[0, 1, 1, 0]], [[0, 1, 0, 1]], [[0, 1, 0, 1]]], dtype=np.uint8)
    return gt, pred


def test_correct_consistency_hand_computed():
    gt, pred = _three_frames()
    # window (0, 1): gt stable at a, b, c (den 3); prediction stable at a, b (2/3); correct at a only (1/3).
    # window (1, 2): gt stable everywhere (den 4); prediction stable everywhere (4/4); correct at a, c, d (3/4).
    assert video_consistency([gt], [pred], n=2, mode='corrected') == pytest.approx((2 / 3 + 1) / 2)
    assert video_consistency([gt], [pred], n=2, mode='corrected', correct=True) == pytest.approx((1 / 3 + 3 / 4) / 2)
    # a model that always answers 1 is perfectly stable (mVC 1) but right only at d in window (1, 2)
    wrong = np.ones_like(pred)
    assert video_consistency([gt], [wrong], n=2, mode='corrected') == pytest.approx(1.0)
    assert video_consistency([gt], [wrong], n=2, mode='corrected', correct=True) == pytest.approx((0 + 1 / 4) / 2)
    # the three-frame window: gt stable at a, b, c; correct in all three frames at a only
    assert video_consistency([gt], [pred], n=3, mode='corrected', correct=True) == pytest.approx(1 / 3)


def test_correct_consistency_ignore_pixels_in_both_modes():
    """18 frames (the vspw mode needs more than 16), pixel a class 0, pixel b ignore; both predicted 0.
    vspw keeps b in the denominator but it can never be correct: 1/2; corrected leaves b out: 1."""
    gt = np.zeros((18, 1, 2), dtype=np.uint8)
    gt[:, 0, 1] = 255
    pred = np.zeros_like(gt)
    assert video_consistency([gt], [pred], n=8, mode='vspw') == pytest.approx(1.0)
    assert video_consistency([gt], [pred], n=8, mode='vspw', correct=True) == pytest.approx(0.5)
    assert video_consistency([gt], [pred], n=8, mode='corrected', correct=True) == pytest.approx(1.0)
    # a wrong frame inside some windows: vspw windows start 0..9 and frame 12 lies in those starting 5..9
    pred[12, 0, 0] = 3
    assert video_consistency([gt], [pred], n=8, mode='vspw', correct=True) == pytest.approx((5 * 0.5 + 5 * 0) / 10)
    # corrected windows start 0..10; those starting 5..10 contain frame 12
    assert video_consistency([gt], [pred], n=8, mode='corrected', correct=True) == pytest.approx(5 / 11)


@pytest.mark.parametrize('mode', ['vspw', 'corrected'])
def test_consistency_scores_agree_with_video_consistency_and_correct_is_never_higher(mode):
    from sdcpc_core.eval import consistency_scores

    rng = np.random.default_rng(5)
    gts, preds = [], []
    for length in (20, 18, 9):
        g = rng.integers(0, 3, size=(1, 6, 7)).repeat(length, axis=0)
        g[rng.random(g.shape) < 0.05] = 255
        g[:, 1, 1] = 255  # an ignore pixel throughout
        p = np.where(rng.random(g.shape) < 0.15, rng.integers(0, 3, size=g.shape), np.clip(g, 0, 2))
        p[:, 0] = 3  # a row that is stable and always wrong
        gts.append(g.astype(np.uint8))
        preds.append(p.astype(np.uint8))
    scores = consistency_scores(gts, preds, (2, 8, 40), mode)
    assert list(scores) == ['mVC2', 'mVC8', 'mVC40', 'mVC2_correct', 'mVC8_correct', 'mVC40_correct']
    for n in (2, 8):
        assert scores[f'mVC{n}'] == pytest.approx(video_consistency(gts, preds, n, mode))
        assert scores[f'mVC{n}_correct'] == pytest.approx(video_consistency(gts, preds, n, mode, correct=True))
        assert 0 < scores[f'mVC{n}_correct'] < scores[f'mVC{n}'] <= 1
    assert math.isnan(scores['mVC40']) and math.isnan(scores['mVC40_correct'])  # no 40-frame window
    # a perfect prediction (the ground truth itself): 1 in the corrected mode; in the vspw mode the stable
    # ignore pixels stay in the denominator and are never correct
    perfect = consistency_scores(gts, gts, (8,), mode)
    assert perfect['mVC8'] == 1.0
    assert perfect['mVC8_correct'] == 1.0 if mode == 'corrected' else 0.9 < perfect['mVC8_correct'] < 1.0
