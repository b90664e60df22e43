"""Training: configuration, optimiser groups and schedule, clip stream, trainer (resume, NaN stop,
unreadable images, init-from, checkpoints) and the ``sdcpc-train`` command line.

Every trainer test trains a tiny SD-CPC-B0 on a tiny VSPW-layout tree the test writes (two videos of
ten 64x96 frames, five classes in ``<root>/classes.yaml``) with 64x64 crops.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

from sdcpc_core.models import build_model  # noqa: E402
from sdcpc_core.train.checkpointing import STATE_FILE, WEIGHTS_FILE, latest_checkpoint, list_checkpoints  # noqa: E402
from sdcpc_core.train.config import ConfigError, ScheduleSection, TrainConfig, config_from_dict, load_config  # noqa: E402
from sdcpc_core.train.data import ClipStream, ClipStreamSampler, build_loader, build_transform, open_reader  # noqa: E402
from sdcpc_core.train.logs import read_log  # noqa: E402
from sdcpc_core.train.optim import lr_factor, parameter_groups  # noqa: E402
from sdcpc_core.train.trainer import DistEnv, SetupError, Trainer, TrainingDiverged  # noqa: E402
from sdcpc_core.weights import read_class_list, save_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96
NUM_CLASSES = 5
COLORS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [60, 200, 200]], np.uint8)
TINY_MODEL = {"coarse_tokens": 4, "window": 3, "embed_dim": 64, "ssea_dim": 32, "window_dim": 16, "proj_dim": 32}


def write_tree(root: Path, videos=("vid_a", "vid_b"), frames: int = 10) -> Path:
    """A VSPW-layout tree: moving boxes whose colour gives the class; masks store class + 1 (0 = ignore)."""
    rng = np.random.default_rng(0)
    for v, video in enumerate(videos):
        for k in range(frames):
            mask = np.ones((H, W), np.uint8)
            mask[: H // 5] = 4
            mask[20:48, (6 * k + 20 * v) % (W - 30):][:, :30] = 2
            mask[44:, 60:] = 3
            mask[52:, :24] = 5
            mask[0, :] = 0  # a row without label
            image = COLORS[np.maximum(mask, 1) - 1] + rng.integers(0, 25, (H, W, 3)).astype(np.uint8)
            folder = root / "data" / video
            (folder / "origin").mkdir(parents=True, exist_ok=True)
            (folder / "mask").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / "origin" / f"{k:05d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            Image.fromarray(mask, mode="L").save(folder / "mask" / f"{k:05d}.png")
    (root / "train.txt").write_text("".join(f"{v}\n" for v in videos))
    (root / "val.txt").write_text(f"{videos[-1]}\n")
    classes = [{"id": i, "name": f"class{i}", "color": COLORS[i].tolist()} for i in range(NUM_CLASSES)]
    (root / "classes.yaml").write_text(yaml.safe_dump({"dataset": "tiny", "classes": classes}))
    return root


def tiny_config(root: Path, out: Path, **sections) -> TrainConfig:
    """A config for the tiny tree; ``sections`` update the defaults below section by section."""
    data = {
        "model": {"variant": "sdcpc_b0", "options": dict(TINY_MODEL)},
        "data": {"root": str(root), "crop_size": [64, 64], "base_scale": [96, 64], "batch_size": 2,
                 "num_workers": 0, "p_start": 0.3},
        "optim": {"lr": 1e-3},
        "schedule": {"iterations": 4, "warmup_iters": 2},
        "val": {"at_end": False},
        "runtime": {"out_dir": str(out), "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data, "test config")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tiny_vspw"))


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ config
def test_config_loads_yaml_with_overrides_and_names_bad_fields(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {variant: sdcpc_b0}\noptim: {lr: 6e-5}\ndata: {batch_size: 4}\n")
    config = load_config(path, ["optim.accumulation=2", "data.crop_size=[64, 96]"])
    assert config.optim.lr == pytest.approx(6e-5)  # YAML 1.1 reads 6e-5 as a string
    assert config.optim.accumulation == 2 and config.data.crop_size == (64, 96)
    assert config.runtime.out_dir == os.path.join("out", "train", "run")
    assert config.micro_batch(2) == 1
    with pytest.raises(ConfigError, match=r"data\.batch_size \(4\) must be a multiple of processes \(3\)"):
        config.micro_batch(3)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) data\.crop"):
        load_config(path, ["data.crop=[64, 64]"])
    with pytest.raises(ConfigError, match=r"unknown section\(s\) trainer"):
        config_from_dict({"trainer": {}})
    with pytest.raises(ConfigError,
                       match=r"config field data\.crop_size must be two integers in 32..8192, got \(16, 16\)"):
        load_config(path, ["data.crop_size=[16, 16]"])
    with pytest.raises(ConfigError, match=r"config field runtime\.precision must be one of auto"):
        load_config(path, ["runtime.precision=fp8"])
    with pytest.raises(ConfigError, match=r"config field optim\.accumulation must be an integer, got 1\.5"):
        load_config(path, ["optim.accumulation=1.5"])
    with pytest.raises(ConfigError, match=r"model\.options.*window"):
        load_config(path, ["model.options={window: 4}"])
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(path, ["lr=1"])


def test_shipped_configs_validate_and_follow_the_protocol():
    configs = {p.stem: load_config(p) for p in sorted((REPO / "config" / "train").glob("*.yaml"))}
    assert {"vspw_b1", "vspw_b5", "cityscapes_r101", "camvid_r101", "synthetic_b0"} <= set(configs)
    for name in ("vspw_b1", "vspw_b5"):  # spec section 2
        c = configs[name]
        assert (c.data.dataset, c.data.crop_size, c.data.base_scale, c.data.ratio_range) == (
            "vspw", (480, 480), (853, 480), (0.5, 2.0))
        assert (c.optim.lr, c.optim.head_lr_mult, c.optim.weight_decay) == (6e-5, 10.0, 0.01)
        assert (c.schedule.iterations, c.schedule.warmup_iters, c.schedule.power, c.data.batch_size) == (
            160000, 1500, 1.0, 8)
        assert (c.loss.static_weight, c.loss.temporal_weight, c.loss.mcp_weight) == (0.5, 1.0, 0.1)
    assert configs["cityscapes_r101"].model.variant == configs["camvid_r101"].model.variant == "sdcpc_r101"
    assert configs["synthetic_b0"].data.root == "out/synthetic"


# ------------------------------------------------------------------------------- optimiser, schedule
def test_parameter_groups_head_rate_and_no_decay_on_norms_and_position_embeddings():
    model = build_model("sdcpc_b0", 3, **TINY_MODEL)
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-4, head_lr_mult=10.0, weight_decay=0.01)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {g: {names[id(p)] for p in groups[g]["params"]} for g in groups}
    assert sum(len(m) for m in members.values()) == len(names)
    assert "backbone.stages.0.blocks.0.norm1.weight" in members["backbone_no_decay"]
    assert "backbone.stages.0.blocks.0.attn.q.weight" in members["backbone"]
    assert {"decode_head.bn.weight", "ssea.token_embed", "dssa.fine.query_norm.bias"} <= members["head_no_decay"]
    assert {"decode_head.classifier.weight", "dssa.gamma", "projector.conv1.weight"} <= members["head"]
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.01


def test_poly_schedule_with_linear_warmup():
    schedule = ScheduleSection(iterations=100, warmup_iters=10, warmup_ratio=0.1, power=1.0)
    assert lr_factor(0, schedule, 1.0) == pytest.approx(0.1)  # warm-up starts at warmup_ratio
    assert lr_factor(5, schedule, 1.0) == pytest.approx(0.95 * (1 - 0.5 * 0.9))
    assert lr_factor(10, schedule, 1.0) == pytest.approx(0.9)  # warm-up over: plain poly
    assert lr_factor(100, schedule, 1.0) == 0.0
    floor = ScheduleSection(iterations=100, warmup_iters=0, power=2.0, min_lr=0.1)
    assert lr_factor(50, floor, 1.0) == pytest.approx(0.9 * 0.25 + 0.1)


# ------------------------------------------------------------------------------------- clip stream
def test_clip_stream_is_a_function_of_the_index_and_is_dealt_to_processes(tree):
    config = tiny_config(tree, tree / "unused")
    reader = open_reader(config.data, "train", all_labels=True)
    stream = ClipStream(reader, reader.make_sampler(0.3), build_transform(config.data), seed=7, length=12)
    first, again, other = stream[5], stream[5], stream[6]
    assert first["images"].shape == (4, 3, 64, 64) and first["labels"].shape == (4, 64, 64)
    assert torch.equal(first["images"], again["images"]) and torch.equal(first["labels"], again["labels"])
    assert not torch.equal(first["images"], other["images"])
    assert set(first["labels"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    assert (first["labels"] != 255).any(dim=(1, 2)).all()  # VSPW labels every frame: static CE uses them all
    dealt = [list(ClipStreamSampler(stream, 2, rank, start=4)) for rank in (0, 1)]
    assert dealt == [[4, 6, 8, 10], [5, 7, 9, 11]]


def test_loader_workers_start_after_opencv_used_threads_here(tree):
    """Forked workers must not hang on OpenCV's thread pool, started here by an earlier in-process run."""
    config = tiny_config(tree, tree / "unused")
    reader = open_reader(config.data, "train", all_labels=True)
    stream = ClipStream(reader, reader.make_sampler(0.3), build_transform(config.data), seed=0, length=8)
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1000, 1000, 3), np.uint8), (1500, 1500))  # starts the pool in this process
    time.sleep(0.5)  # its threads go from spinning to waiting, the state a fork copies without the threads
    loader = build_loader(stream, 2, world_size=1, rank=0, start=0, num_workers=2, pin_memory=False)
    loader.timeout = 30  # a hang becomes an error
    batches = list(loader)
    assert [b["images"].shape for b in batches] == [(2, 4, 3, 64, 64)] * 4
    assert torch.equal(batches[1]["images"][0], stream[2]["images"])  # the workers build the same samples


def test_unreadable_image_is_skipped_and_reported(tmp_path):
    root = write_tree(tmp_path / "tree")
    for frame in (root / "data" / "vid_a" / "origin").iterdir():
        frame.write_bytes(b"not a jpeg")
    config = tiny_config(root, tmp_path / "run", schedule={"iterations": 2})
    reader = open_reader(config.data, "train", all_labels=True)
    stream = ClipStream(reader, reader.make_sampler(config.data.p_start), build_transform(config.data),
                        seed=config.runtime.seed, length=4)  # the run's stream: 2 iterations x 2 clips
    samples = [stream[i] for i in range(4)]
    assert all(s["images"].shape == (4, 3, 64, 64) for s in samples)
    expected = sum(len(s["unreadable"]) for s in samples)
    assert expected > 0 and all("vid_a" in p for s in samples for p in s["unreadable"])

    trainer = Trainer(config, env=DistEnv())
    with pytest.warns(RuntimeWarning, match="unreadable image") as caught:
        trainer.fit()
    trainer.close()
    assert len([w for w in caught if "unreadable" in str(w.message)]) == 1  # warned once
    records = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert trainer.unreadable_images == expected and records[-1]["unreadable_images"] == expected


# ----------------------------------------------------------------------------------------- trainer
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tree, tmp_path):
    """4 iterations straight vs 2 + resume to 4 (the resumed part with a loader worker): same weights,
    prototypes and optimiser state. Dropout and stochastic depth are on, so the per-step RNG seeding is
    exercised too."""
    straight = Trainer(tiny_config(tree, tmp_path / "straight"), env=DistEnv())
    result = straight.fit()
    straight.close()
    assert result.step == 4 and result.final_weights == tmp_path / "straight" / "final.safetensors"
    assert straight.model.prototypes.initialized.any()  # the MCP-CL prototypes took part

    first = Trainer(tiny_config(tree, tmp_path / "split"), env=DistEnv())
    assert first.fit(until=2).step == 2
    first.close()
    assert latest_checkpoint(tmp_path / "split").name == "iter_000002"
    with pytest.raises(SetupError, match="pass --resume"):
        Trainer(tiny_config(tree, tmp_path / "split"), env=DistEnv())
    resumed = Trainer(tiny_config(tree, tmp_path / "split", data={"num_workers": 1}), resume=True, env=DistEnv())
    assert resumed.step == 2 and resumed.next_sample == 4
    resumed.fit()
    resumed.close()

    expected, got = state_of(straight.model), state_of(resumed.model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), got[key].float(), rtol=0, atol=1e-6), key
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.allclose(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"], rtol=0, atol=1e-9) for i in a)

    run = tmp_path / "split"
    assert [step for step, _ in list_checkpoints(run)] == [2, 4]  # keep_checkpoints: 2
    state = torch.load(latest_checkpoint(run) / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and state["next_sample"] == 8 and "optimizer" in state and "scheduler" in state
    classes = read_class_list(run / "final.safetensors")
    assert len(classes) == NUM_CLASSES and classes.names[0] == "class0"
    assert read_class_list(latest_checkpoint(run) / WEIGHTS_FILE) == classes
    train_iters = [r["iter"] for r in read_log(run / "log.jsonl") if r["kind"] == "train"]
    assert train_iters == [1, 2, 3, 4]  # one record per iteration, none repeated by the resume
    assert (run / "training.png").stat().st_size > 0 and (run / "config.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["num_workers"] == 1


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tree, tmp_path):
    trainer = Trainer(tiny_config(tree, tmp_path / "run"), env=DistEnv())
    trainer.fit(until=2)
    good = state_of(trainer.model)
    with torch.no_grad():
        trainer.model.decode_head.classifier.bias.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match=r"^training stopped at iteration 3: the static cross-entropy loss "
                                               r"\(nan\), the temporal cross-entropy loss \(nan\) and the MCP-CL "
                                               r"loss \(nan\) are not finite; "
                                               r"the last good checkpoint is .*iter_000002 \(iteration 2\)"):
        trainer.fit()
    trainer.close()
    folder = latest_checkpoint(tmp_path / "run")
    assert folder.name == "iter_000002" and [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    check = build_model("sdcpc_b0", NUM_CLASSES, **TINY_MODEL)
    from sdcpc_core.weights import load_weights

    load_weights(check, folder / WEIGHTS_FILE)
    assert all(torch.equal(check.state_dict()[k], good[k]) for k in good)
    assert not (tmp_path / "run" / "final.safetensors").exists()
    assert read_log(tmp_path / "run" / "log.jsonl")[-1]["event"] == "diverged"


def test_init_from_a_segformer_of_another_class_count(tree, tmp_path):
    torch.manual_seed(3)
    segformer = build_model("segformer_b0", 7, embed_dim=64)  # another class count, no temporal part
    save_weights(segformer, tmp_path / "segformer.safetensors")
    trainer = Trainer(tiny_config(tree, tmp_path / "run"), init_from=str(tmp_path / "segformer.safetensors"),
                      env=DistEnv())
    source, model = segformer.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(model[k], source[k]) for k in source if k.startswith(("backbone.", "decode_head.linear")))
    assert model["decode_head.classifier.weight"].shape[0] == NUM_CLASSES  # kept its own classifier
    trainer.close()
    save_weights(build_model("segformer_b1", NUM_CLASSES, embed_dim=64), tmp_path / "b1.safetensors")
    with pytest.raises(SetupError, match=r"\(MiT-B1 encoder\) but model.variant sdcpc_b0 has a MiT-B0 encoder; "
                                         r"pass --set model.variant=sdcpc_b1"):
        Trainer(tiny_config(tree, tmp_path / "other"), init_from=str(tmp_path / "b1.safetensors"), env=DistEnv())


def test_run_log_mirrors_scalars_to_tensorboard_when_installed(tmp_path, monkeypatch):
    """tensorboard is optional (absent here): a stand-in SummaryWriter records what the log sends it."""
    import sys
    import types

    from sdcpc_core.train.logs import RunLog

    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = RunLog(tmp_path, resume_from=None)
    log.write({"kind": "train", "iter": 5, "loss": 1.5, "lr": 0.1})
    log.write({"kind": "val", "iter": 5, "mIoU": 40.0, "mVC8": None, "mode": "clip"})
    log.write({"kind": "event", "iter": 5, "event": "checkpoint"})
    log.close()
    assert written == [("dir", str(tmp_path / "tensorboard")), ("train/loss", 1.5, 5), ("train/lr", 0.1, 5),
                       ("val/mIoU", 40.0, 5), ("closed",)]
    assert [r["kind"] for r in read_log(tmp_path / "log.jsonl")] == ["train", "val", "event"]


# ------------------------------------------------------------------------------------ command line
def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from sdcpc_core.tools.train import main

    status = main(argv)
    return status, capsys.readouterr().err


def test_cli_errors_are_one_sentence_with_status_2(tree, tmp_path, capsys):
    status, err = run_cli(["--config", str(tmp_path / "missing.yaml")], capsys)
    assert status == 2 and err.strip() == f"sdcpc-train: error: training config not found: {tmp_path / 'missing.yaml'}"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tree, tmp_path / "run").to_dict()))
    status, err = run_cli(["--config", str(config), "--set", "optim.lr=-1"], capsys)
    assert status == 2 and "config field optim.lr must be a number > 0, got -1.0" in err and "Traceback" not in err
    status, err = run_cli(["--config", str(config), "--set", "data.root=" + str(tmp_path / "nowhere")], capsys)
    assert status == 2 and "nowhere" in err and len(err.strip().splitlines()) == 1
    status, err = run_cli(["--config", str(config), "--bogus"], capsys)
    assert status == 2 and "unrecognized arguments: --bogus" in err


def test_cli_trains_and_stops_with_status_1_on_nan(tree, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tree, tmp_path / "unused").to_dict()))
    status, err = run_cli(["--config", str(config), "--out", str(tmp_path / "ok"), "--set", "schedule.iterations=1",
                           "--set", "schedule.warmup_iters=0", "--set", "val.at_end=true", "--set", "val.short_side=64",
                           "--set", "val.mode=streaming"], capsys)
    assert status == 0 and "1/1 iterations of sdcpc_b0" in err and (tmp_path / "ok" / "final.safetensors").is_file()
    assert "val mIoU " in err.splitlines()[-1] and "mVC8 n/a" in err  # a 10-frame video has no 16-frame window
    val = [r for r in read_log(tmp_path / "ok" / "log.jsonl") if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["iter"] == 1 and 0 <= val[0]["mIoU"] <= 100 and val[0]["mode"] == "streaming"
    report = json.loads((tmp_path / "ok" / "val" / "iter_000001" / "report.json").read_text())
    assert report["mIoU"] == val[0]["mIoU"] and (tmp_path / "ok" / "val" / "iter_000001" / "overlays.png").is_file()
    broken = build_model("sdcpc_b0", NUM_CLASSES, **TINY_MODEL)
    with torch.no_grad():
        broken.temporal_classifier.weight.fill_(math.nan)
    save_weights(broken, tmp_path / "broken.safetensors")
    status, err = run_cli(["--config", str(config), "--out", str(tmp_path / "nan"), "--init-from",
                           str(tmp_path / "broken.safetensors")], capsys)
    assert status == 1
    assert err.strip().splitlines()[-1].startswith(
        "sdcpc-train: error: training stopped at iteration 1: the temporal cross-entropy loss (nan) is not finite; "
        "no checkpoint had been written yet")
