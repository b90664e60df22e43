"""The temporal upgrade of a per-frame SegFormer: ``model.freeze``, ``optim.part_lr_mult`` and the shipped
``config/train/temporal_upgrade_*.yaml`` recipes, the synthetic one run end to end on a tiny synthetic set."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("cv2")

from sdcpc_core.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, write_vspw
from sdcpc_core.models import build_model
from sdcpc_core.train.config import MODEL_PARTS, ConfigError, config_from_dict, load_config
from sdcpc_core.train.logs import read_log
from sdcpc_core.train.optim import freeze_parts, parameter_groups
from sdcpc_core.train.trainer import DistEnv, Trainer
from sdcpc_core.weights import save_weights

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("temporal_upgrade_synthetic", "temporal_upgrade_vspw_b1", "temporal_upgrade_cityscapes_b1")
STATIC = ("backbone.", "decode_head.")


def test_model_parts_are_the_models_top_level_modules():
    model = build_model("sdcpc_b0", 3, coarse_tokens=4, window=3)
    assert {name for name, _ in model.named_children()} == {*MODEL_PARTS, "prototypes"}
    assert not list(model.prototypes.parameters())  # buffers only: updated by the trainer, not the optimiser


def test_shipped_recipes_freeze_the_segformer_and_state_their_gpu_hours():
    for name in RECIPES:
        config = load_config(REPO / "config" / "train" / f"{name}.yaml")
        assert config.model.freeze == ("backbone", "decode_head") and config.model.variant.startswith("sdcpc_b")
        header = (REPO / "config" / "train" / f"{name}.yaml").read_text().split("\nmodel:")[0]
        if name != "temporal_upgrade_synthetic":
            assert "GPU-hours" in header and "at most" in header and "25 clips/s" in header
    synthetic = load_config(REPO / "config" / "train" / "temporal_upgrade_synthetic.yaml")
    full = load_config(REPO / "config" / "train" / "synthetic_b0.yaml")
    assert synthetic.model.variant == full.model.variant == "sdcpc_b0"
    # a third of the full run's time, at the step costs its header states as measured
    header = (REPO / "config" / "train" / "temporal_upgrade_synthetic.yaml").read_text().split("\nmodel:")[0]
    upgrade_step, full_step = map(float, re.search(r"([\d.]+) s a step here against ([\d.]+) s", header.replace(
        "\n#", "")).groups())
    assert synthetic.schedule.iterations * upgrade_step <= full.schedule.iterations * full_step / 3
    assert synthetic.model.init_from == "out/train/segformer_b0/final.safetensors"


@pytest.mark.parametrize("sections, message", [
    ({"model": {"variant": "segformer_b0", "freeze": ["dssa"]}}, "names 'dssa', which is not a part of the per-frame"),
    ({"model": {"freeze": ["encoder"]}}, "names 'encoder', which is not a part of the SD-CPC variant sdcpc_b1"),
    ({"model": {"freeze": list(MODEL_PARTS)}}, "freezes every part of sdcpc_b1"),
    ({"model": {"freeze": ["backbone", "backbone"]}}, "names a part twice"),
    ({"optim": {"part_lr_mult": {"backbone": -1}}}, r"optim.part_lr_mult.backbone must be a number > 0, got -1"),
    ({"model": {"freeze": ["backbone"]}, "optim": {"part_lr_mult": {"backbone": 0.1}}},
     "sets a rate for backbone, which model.freeze freezes"),
])
def test_freeze_and_part_rates_are_checked_at_load_time(sections, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(sections)


def test_part_rates_and_frozen_parts_in_the_optimiser_groups():
    model = build_model("sdcpc_b0", 3, coarse_tokens=4, window=3)
    frozen = freeze_parts(model, ["decode_head"])
    assert frozen == [model.decode_head] and not model.decode_head.training and model.backbone.training
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 10.0, 0.01, {"backbone": 0.1, "dssa": 2.0})}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay", "dssa", "dssa_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["dssa"]["lr"] == pytest.approx(2e-4)
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups.values() for p in g["params"]]
    assert not any(n.startswith("decode_head.") for n in grouped)  # frozen: in no group
    assert all(n.startswith("dssa.") for g in ("dssa", "dssa_no_decay") for n in
               (names[id(p)] for p in groups[g]["params"]))
    assert len(grouped) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="cannot freeze 'neck': the model has no such part"):
        freeze_parts(model, ["neck"])


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig(height=64, width=128, num_frames=12, p_drop=0.0)
    write_vspw(root, videos={"train": [0, 1], "val": [1000]}, config=config, progress=False)
    return root


def test_temporal_upgrade_recipe_end_to_end(synthetic_set, tmp_path):
    """The shipped CPU recipe, shortened to 3 steps on a tiny set: from a SegFormer-B0 checkpoint, only SD-CPC's
    own parts change; every encoder and head tensor (batch-norm statistics included) stays bit-identical."""
    torch.manual_seed(5)
    segformer = build_model("segformer_b0", len(SYNTHETIC_CLASSES))
    with torch.no_grad():  # statistics unlike the initial ones: a batch-norm update would show
        segformer.decode_head.bn.running_mean.normal_()
        segformer.decode_head.bn.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "segformer_b0" / "final.safetensors"
    save_weights(segformer, weights, metadata={"classes": SYNTHETIC_CLASSES.to_json()})
    config = load_config(REPO / "config" / "train" / "temporal_upgrade_synthetic.yaml", [
        f"data.root={synthetic_set}", "data.crop_size=[64, 64]", "data.base_scale=[128, 64]", "data.batch_size=2",
        "data.num_workers=0", "schedule.iterations=3", "schedule.warmup_iters=1", f"model.init_from={weights}",
        f"runtime.out_dir={tmp_path / 'run'}", "runtime.log_every=1", "val.max_videos=1", "val.short_side=64"])
    trainer = Trainer(config, env=DistEnv(), progress=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    source = segformer.state_dict()
    assert all(torch.equal(before[k], source[k]) for k in source)  # the SegFormer, loaded as it is
    result = trainer.fit()
    trainer.close()
    after = trainer.model.state_dict()

    assert result.step == 3 and all(math.isfinite(v) for v in result.losses.values())
    static = [k for k in after if k.startswith(STATIC)]
    assert len(static) == len(source) and all(torch.equal(after[k], before[k]) for k in static), [
        k for k in static if not torch.equal(after[k], before[k])]
    changed = {k.split(".")[0] for k in after if not k.startswith(STATIC) and not torch.equal(after[k], before[k])}
    assert changed == {"ssea", "dssa", "temporal_classifier", "projector", "prototypes"}
    assert trainer.model.ssea.gamma.abs().sum() > 0 and trainer.model.dssa.gamma.abs().sum() > 0  # left zero
    assert not any(p.requires_grad for part in ("backbone", "decode_head")
                   for p in getattr(trainer.model, part).parameters())

    records = read_log(tmp_path / "run" / "log.jsonl")
    start = next(r for r in records if r.get("event") == "start")
    trained = sum(p.numel() for n, p in trainer.model.named_parameters() if not n.startswith(STATIC))
    assert start["frozen"] == ["backbone", "decode_head"] and start["trained_parameters"] == trained
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in records if r["kind"] == "train")
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and {"mIoU", "mVC8", "mVC8_correct"} <= set(val[0])
    assert (tmp_path / "run" / "final.safetensors").is_file()
