"""The streaming demo on a synthetic sequence."""

from __future__ import annotations

import re

import pytest

from sdcpc_core.demo import main, synthetic_frames


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
    assert re.search(r"^self-check: frame 5 streamed vs forward_clip on frames \[0, 0, 2, 5\]: "
                     r"labels agree on 100.00% of pixels -> OK$", out, flags=re.M)


def test_demo_rejects_bad_size(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "64"])
    assert exit_info.value.code == 2
    assert "argument --size: size must be HEIGHTxWIDTH" in capsys.readouterr().err


def test_synthetic_frames_move():
    frames = synthetic_frames(3, 64, 128, seed=0)
    assert frames.shape == (3, 3, 64, 128) and 0.0 <= frames.min() and frames.max() <= 1.0
    assert (frames[0] - frames[2]).abs().amax(dim=0).gt(0.2).any()
