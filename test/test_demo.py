"""The streaming demo on a synthetic sequence."""

from __future__ import annotations

import re

import pytest
import torch

from sdcpc_core.demo import FRAME_PERIOD_NS, FrameBuffer, main, synthetic_frames
from sdcpc_core.models.sdcpc import FrameCache


def test_demo_runs_and_self_check_passes(capsys):
    # One thread: with more threads than free cores (other processes busy) OpenMP barriers stall.
    assert main(["--frames", "6", "--size", "64x128", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out
    assert len(re.findall(r"^frame +\d+ ", out, flags=re.M)) == 6
    assert re.search(r"^frame +0 +refs \[0, 0, 0\]", out, flags=re.M)
    assert re.search(r"^summary: 6 frames; encode ms mean [\d.]+ median [\d.]+; temporal ms mean [\d.]+ "
                     r"median [\d.]+; temporal cost [\d.]+% of the static branch; peak buffer 6 frames$",
                     out, flags=re.M)
    check = re.search(r"^self-check: frame 5 streamed vs forward_clip on frames \[0, 0, 2, 5\]: "
                      r"max abs diff (\S+) -> OK$", out, flags=re.M)
    assert check and float(check.group(1)) < 1e-5


def test_demo_rejects_bad_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "64"])
    assert exit_info.value.code == 2
    assert "argument --size: size must be HEIGHTxWIDTH" in capsys.readouterr().err


def test_frame_buffer_references_and_horizon():
    buffer = FrameBuffer(10 * FRAME_PERIOD_NS)
    cache = FrameCache(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1))
    seen = {}
    for index in range(30):
        stamp = index * FRAME_PERIOD_NS
        buffer.add(stamp, cache)
        assert buffer.entries[stamp].logits is None  # cached without logits
        seen[index] = [s // FRAME_PERIOD_NS for s in buffer.references(stamp)]
        assert len(buffer) <= 11
    assert seen[0] == [0, 0, 0]  # cold start: the current frame, duplicated
    assert seen[4] == [0, 0, 1]
    assert seen[20] == [11, 14, 17]
    # A dropped frame: the nearest available one is used.
    del buffer.entries[26 * FRAME_PERIOD_NS]
    assert [s // FRAME_PERIOD_NS for s in buffer.references(29 * FRAME_PERIOD_NS)] == [20, 23, 25]


def test_synthetic_frames_move():
    frames = synthetic_frames(3, 64, 128, seed=0)
    assert frames.shape == (3, 3, 64, 128) and 0.0 <= frames.min() and frames.max() <= 1.0
    assert (frames[0] - frames[2]).abs().amax(dim=0).gt(0.2).any()
