"""bench/temporal_evidence.py: the per-corruption breakdown finds the right frames and scores them apart."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, SyntheticDrive, video_name, write_vspw
from sdcpc_core.models import build_model
from sdcpc_core.weights import save_weights

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("temporal_evidence", REPO / "bench" / "temporal_evidence.py")
evidence = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evidence)

SEED = 1000
CONFIG = SyntheticConfig(height=64, width=128, num_frames=30, p_noise=0.1, p_flicker=0.1, p_occlusion=0.1,
                         p_blur=0.1, p_drop=0.05)


@pytest.fixture(scope="module")
def corrupted_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corrupted")
    write_vspw(root, videos={"val": [SEED]}, config=CONFIG, progress=False)
    return root


def test_lookup_rebuilds_the_drive_events(corrupted_set):
    """Every written frame gets the kinds its drive put on it (drops are gaps, so file stems skip)."""
    lookup = evidence.CorruptionLookup(corrupted_set)
    drive = SyntheticDrive(CONFIG, SEED)
    frames = sorted((corrupted_set / "data" / video_name(SEED) / "origin").iterdir())
    assert len(frames) < CONFIG.num_frames  # some frames were dropped, so stems and positions differ
    seen = set()
    for path in frames:
        kinds = lookup.kinds(video_name(SEED), str(path))
        assert kinds == tuple(k for k in drive.corruptions(int(path.stem)) if k != "drop")
        seen.update(kinds)
    assert seen == {"noise", "blur", "flicker", "occlusion"}


def test_frame_groups():
    assert evidence.frame_groups((), [(), (), ()]) == ["clean"]
    assert evidence.frame_groups((), [(), ("flicker",), ()]) == ["after"]
    assert evidence.frame_groups(("noise", "blur"), [("noise",)]) == ["corrupted", "noise", "blur"]


def test_breakdown_table_end_to_end(corrupted_set, tmp_path, capsys):
    """Both variants get every breakdown measure; the gate is measured where a DSSA exists and only there."""
    torch.manual_seed(0)
    paths = {}
    for variant in ("segformer_b0", "sdcpc_b0"):
        model = build_model(variant, len(SYNTHETIC_CLASSES))
        if variant == "sdcpc_b0":
            with torch.no_grad():  # a constant gate, sigmoid(1), whatever the frames
                model.dssa.gate.conv.weight.zero_()
                model.dssa.gate.conv.bias.fill_(1.0)
        paths[variant] = tmp_path / variant / "final.safetensors"
        save_weights(model, paths[variant], metadata={"classes": SYNTHETIC_CLASSES.to_json()})
    out = tmp_path / "scores.json"
    assert evidence.main(["--data", str(corrupted_set), "--short-side", "64", "--smoothing", "none", "ema:0.5",
                          *[f"--model={v}={path}" for v, path in paths.items()], "--by-corruption",
                          "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "By corruption events" in printed and "mIoU_corrupted" in printed and "gate_after" in printed
    results = json.loads(out.read_text())["results"]
    for variant, path in paths.items():
        scores = results[variant][str(path)]
        for smoothing in ("none", "ema:0.5"):
            assert set(evidence.CORRUPTION_METRICS) <= set(scores[smoothing])
            assert all(0 <= scores[smoothing][m] <= 100 for m in evidence.CORRUPTION_METRICS
                       if not math.isnan(scores[smoothing][m]))
            assert not any(math.isnan(scores[smoothing][f"mIoU_{g}"]) for g in ("corrupted", "clean"))
    gates = [results["sdcpc_b0"][str(paths["sdcpc_b0"])]["none"][f"gate_{g}"] for g in evidence.FRAME_GROUPS]
    assert all(math.isnan(results["segformer_b0"][str(paths["segformer_b0"])]["none"][f"gate_{g}"])
               for g in evidence.FRAME_GROUPS)
    assert all(g == pytest.approx(100 / (1 + math.exp(-1.0)), abs=1e-3) for g in gates)  # sigmoid(bias)


def test_breakdown_needs_a_synthetic_record(corrupted_set, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("val.txt", "classes.yaml", "data"):
        (plain / name).symlink_to(corrupted_set / name)
    with pytest.raises(SystemExit):
        evidence.main(["--data", str(plain), "--model", "x=*.safetensors", "--by-corruption"])
    assert "--by-corruption needs a set written by sdcpc-synth" in capsys.readouterr().err


def test_mean_and_spread():
    assert evidence.mean_and_spread([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert all(math.isnan(x) for x in evidence.mean_and_spread([math.nan, math.nan]))
    mean, spread = evidence.mean_and_spread([4.0])
    assert mean == 4.0 and math.isnan(spread)
