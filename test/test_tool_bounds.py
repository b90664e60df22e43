"""Command-line values beyond what a machine can do are one sentence and exit status 2, with nothing written.

Regression cases of a fault-injection run: ``sdcpc-synth --train-seeds 0-99999999999`` (MemoryError),
``--size 100000x100000`` (left ``OUT/data/`` behind), ``sdcpc-eval --short-side 100000`` (an OpenCV
allocation failure).
"""
from __future__ import annotations

import pytest
from test_synthetic import run_cli


def run_synth(argv, capsys) -> tuple[int, str]:
    status, _, err = run_cli(argv, capsys)
    return status, err.strip()


@pytest.mark.parametrize("seeds", ["0-99999999999", "0-100000", "0-60000,70000-130000"])
def test_synth_bounds_the_number_of_videos(seeds, tmp_path, capsys):
    status, err = run_synth([tmp_path / "o", "--train-seeds", seeds], capsys)
    assert status == 2 and "\n" not in err and "at most 100000 videos are written in one run" in err
    assert not (tmp_path / "o").exists()


def test_synth_bounds_the_total_over_splits(tmp_path, capsys):
    status, err = run_synth([tmp_path / "o", "--train-seeds", "0-59999", "--val-seeds", "60000-119999"], capsys)
    assert status == 2 and "120000 videos in all; at most 100000" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["100000x100000", "240x8193"])
def test_synth_bounds_the_frame_size_and_writes_nothing(size, tmp_path, capsys):
    status, err = run_synth([tmp_path / "o", "--train-seeds", "0", "--size", size], capsys)
    assert status == 2 and "\n" not in err and "must be an integer in 16..4096" in err
    assert not (tmp_path / "o").exists()


def test_synth_bounds_sizes_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "synth.yaml"
    config.write_text("height: 100000\nwidth: 480\n")
    status, err = run_synth([tmp_path / "o", "--train-seeds", "0", "--config", config], capsys)
    assert status == 2 and "SyntheticConfig.height must be an integer in 16..4096" in err
    assert not (tmp_path / "o").exists()


def test_eval_short_side_is_bounded(tmp_path, capsys):
    from sdcpc_core.tools import evaluate

    status = evaluate.main(["--checkpoint", "sdcpc_b0_synthetic", "--data", str(tmp_path), "--short-side", "100000"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == "sdcpc-eval: error: argument --short-side: must be an integer in 32..4320, got " \
                                  "'100000'"
