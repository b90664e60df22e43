"""The optional consistency term: the temporal prediction against the clip's mean static prediction, on
pixels whose label stays the same over the clip."""
from __future__ import annotations

import pytest
import torch

from sdcpc_core.train.config import ConfigError
from sdcpc_core.train.losses import IGNORE_INDEX, clip_loss_counts, clip_loss_sums, consistency_loss, stable_pixels
from test_train import tiny_config


def _labels() -> torch.Tensor:
    """(1, 3, 2, 2): pixel (0, 0) stable, (0, 1) changes class, (1, 0) unlabelled in one frame, (1, 1) stable."""
    return torch.tensor([[[[1, 0], [2, 3]], [[1, 1], [IGNORE_INDEX, 3]], [[1, 0], [2, 3]]]])


def test_stable_pixels_are_labelled_and_unchanged_in_every_frame():
    assert stable_pixels(_labels(), (2, 2)).tolist() == [[[True, False], [False, True]]]
    # at half the resolution, nearest-neighbour labels: the top-left pixel of each frame
    assert stable_pixels(_labels(), (1, 1)).tolist() == [[[True]]]


def test_loss_is_the_kl_from_the_mean_static_prediction_on_stable_pixels():
    torch.manual_seed(0)
    static = torch.randn(1, 3, 4, 2, 2)
    temporal = torch.randn(1, 4, 2, 2, requires_grad=True)
    labels = _labels()
    target = static.softmax(dim=2).mean(dim=1)
    kl = (target * (target.log() - temporal.log_softmax(dim=1))).sum(dim=1)[0]
    expected = (kl[0, 0] + kl[1, 1]) / 2
    loss = consistency_loss(static, temporal, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert consistency_loss(static, temporal, labels, reduction="sum").item() == pytest.approx(2 * expected.item(),
                                                                                             rel=1e-6)
    loss.backward()
    assert temporal.grad[0, :, 0, 1].abs().sum() == 0 and temporal.grad[0, :, 1, 0].abs().sum() == 0
    assert temporal.grad[0, :, 0, 0].abs().sum() > 0


def test_loss_is_zero_at_the_target_and_leaves_the_static_logits_alone():
    static = torch.randn(2, 4, 5, 3, 3, requires_grad=True)
    labels = torch.zeros(2, 4, 3, 3, dtype=torch.long)
    at_target = static.detach().softmax(dim=2).mean(dim=1).log()
    assert consistency_loss(static, at_target, labels).item() == pytest.approx(0.0, abs=1e-6)
    consistency_loss(static, torch.randn(2, 5, 3, 3, requires_grad=True), labels).backward()
    assert static.grad is None  # the target is fixed: no gradient flows into the per-frame branch


def test_clip_sums_and_counts_for_temporal_and_per_frame_models():
    static = torch.randn(1, 3, 4, 2, 2)
    temporal = torch.randn(1, 4, 2, 2)
    labels = _labels()
    sums = clip_loss_sums(static, temporal, torch.randn(1, 8, 1, 1), labels, torch.randn(4, 2, 8),
                          torch.zeros(4, 2, dtype=torch.bool), 0.1)
    assert sums["consistency"].item() == pytest.approx(consistency_loss(static, temporal, labels, "sum").item())
    per_frame = clip_loss_sums(static, temporal, None, labels, None, None, 0.1)
    assert per_frame["consistency"].item() == 0.0
    counts = clip_loss_counts(labels, torch.zeros(4, 2, dtype=torch.bool), (1, 1), (2, 2))
    assert counts.tolist() == [11.0, 4.0, 0.0, 2.0]
    assert clip_loss_counts(labels, None, None).tolist() == [11.0, 4.0, 0.0, 0.0]


def test_negative_weight_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"loss\.consistency_weight must be a number >= 0"):
        tiny_config(tmp_path, tmp_path / "run", loss={"consistency_weight": -1.0})
