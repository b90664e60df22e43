"""The weights users already have, through every entry point: a Hugging Face SegFormer folder
(``save_pretrained``), an mmseg-style ``.pth`` and the shipped name; ``sdcpc-convert``.

The SegFormers are random MiT-B0 models (3.7 M parameters) written by the tests; a B1 folder checks
the variant inference. Each entry point must infer the variant and class count, keep the class names
and say in one sentence what it loaded; an SD-CPC model built from a SegFormer predicts exactly what
transformers predicts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from test_checkpoints import nvlabs_state  # noqa: E402

from sdcpc_core.classes import ClassList  # noqa: E402
from sdcpc_core.models import build_model  # noqa: E402
from sdcpc_core.runtime.streaming import StreamingSegmenter  # noqa: E402
from sdcpc_core.tools import convert, evaluate  # noqa: E402
from sdcpc_core.weights import load_model, read_class_list, save_weights  # noqa: E402
from sdcpc_core.weights.files import read_safetensors_metadata  # noqa: E402
from sdcpc_core.weights.format import read_input_size  # noqa: E402
from sdcpc_core.weights.resolve import inspect_weights, open_model  # noqa: E402

CITYSCAPES = ClassList.shipped("cityscapes")
ADE_LIKE = [f"thing{i}" for i in range(7)]  # names no shipped list has
IMAGE = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
UNTRAINED = "SD-CPC's temporal parts are untrained, so its predictions are exactly this SegFormer's"


def hf_segformer(names: list[str] | None, num_labels: int = 19, seed: int = 0, **config):
    torch.manual_seed(seed)
    labels = {} if names is None else {"id2label": dict(enumerate(names)),
                                       "label2id": {n: i for i, n in enumerate(names)}}
    return transformers.SegformerForSemanticSegmentation(
        transformers.SegformerConfig(num_labels=num_labels, **labels, **config)).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A SegFormer-B0 folder with the Cityscapes id2label, transformers' logits on ``IMAGE`` and the model."""
    model = hf_segformer(CITYSCAPES.names)
    folder = tmp_path_factory.mktemp("hf") / "segformer-b0-cityscapes"
    model.save_pretrained(folder)
    with torch.no_grad():
        return folder, model(pixel_values=IMAGE).logits, model


@pytest.fixture(scope="module")
def unnamed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "segformer-b0-unnamed"
    hf_segformer(None, seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def b1_folder(tmp_path_factory):
    """A SegFormer-B1 folder with 7 named classes."""
    folder = tmp_path_factory.mktemp("hf") / "segformer-b1"
    hf_segformer(ADE_LIKE, num_labels=len(ADE_LIKE), seed=2, hidden_sizes=[64, 128, 320, 512]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mmseg_pth(hf_folder, tmp_path_factory):
    """An mmseg 1.x-style checkpoint: the state dict under ``state_dict``, class names in ``meta.dataset_meta``."""
    path = tmp_path_factory.mktemp("mmseg") / "segformer_mit-b0_cityscapes.pth"
    palette = [list(c.color) for c in CITYSCAPES.classes]
    torch.save({"meta": {"dataset_meta": {"classes": tuple(CITYSCAPES.names), "palette": palette},
                         "mmseg_version": "1.2.2"},
                "state_dict": nvlabs_state(hf_folder[2])}, path)
    return path


def logits_of(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The static and the temporal logits of ``IMAGE`` (its own references)."""
    with torch.no_grad():
        current = model.encode_frame(IMAGE)
        return current.logits, model.temporal_step(current, [current] * 3)


# ------------------------------------------------------------------------------------------ resolver
def test_hf_folder_gives_sdcpc_b0_with_its_names_and_transformers_predictions(hf_folder):
    folder, expected, _ = hf_folder
    loaded = open_model(folder, class_hint="--classes")
    assert loaded.model.config.backbone == "mit_b0" and loaded.model.is_temporal
    assert loaded.classes == CITYSCAPES and loaded.named_classes and loaded.input_size is None
    assert loaded.message == (f"loaded Hugging Face SegFormer-B0 from {folder} as sdcpc_b0 (19 classes: road, "
                              f"sidewalk, building, wall, fence, ...); {UNTRAINED}")
    static, temporal = logits_of(loaded.model)
    assert (static - expected).abs().max() < 1e-4
    assert torch.equal(static, temporal)  # the temporal parts add exactly nothing


def test_variant_is_inferred_from_the_weights(b1_folder):
    info = inspect_weights(b1_folder)
    assert (info.variant, info.num_classes, info.config.embed_dim) == ("sdcpc_b1", 7, 256)
    assert info.classes.names == ADE_LIKE and info.label() == "Hugging Face SegFormer-B1"


def test_unnamed_classes_are_numbered_with_a_hint(unnamed_folder):
    loaded = open_model(unnamed_folder, class_hint="--classes")
    assert not loaded.named_classes and loaded.classes.names[-1] == "class_18"
    assert "(19 classes without names, shown as class_0..class_18; name them with --classes, e.g. cityscapes)" \
        in loaded.message


def test_mmseg_pth_keeps_the_names_and_palette_of_its_meta(mmseg_pth, hf_folder):
    loaded = open_model(mmseg_pth)
    assert loaded.classes == CITYSCAPES
    assert loaded.message.startswith(f"loaded mmseg SegFormer-B0 from {mmseg_pth} as sdcpc_b0 (19 classes: road,")
    assert (logits_of(loaded.model)[0] - hf_folder[1]).abs().max() < 1e-4
    old_style = mmseg_pth.with_name("nvlabs.pth")  # mmseg 0.x: meta.CLASSES
    torch.save({"meta": {"CLASSES": ADE_LIKE[:3] * 6 + ["x"]}, "state_dict": nvlabs_state(hf_folder[2])}, old_style)
    names = inspect_weights(old_style).classes.names
    assert names[:4] == ["thing0", "thing1", "thing2", "thing0_3"] and len(set(names)) == 19  # repeats made unique


def test_encoder_only_weights_cannot_segment(hf_folder, tmp_path):
    from safetensors.torch import save_file

    encoder = {k: v for k, v in transformers.SegformerForSemanticSegmentation.from_pretrained(
        hf_folder[0]).segformer.state_dict().items()}
    save_file({k: v.contiguous() for k, v in encoder.items()}, str(tmp_path / "mit_b0.safetensors"))
    with pytest.raises(ValueError, match=r"holds only an encoder .*MiT.*without a decode head, so it cannot segment; "
                                         r"fine-tune it first with sdcpc-train --init-from"):
        open_model(tmp_path / "mit_b0.safetensors")


def test_shipped_model_recommends_the_scale_it_was_trained_at():
    info = inspect_weights("sdcpc_b0_synthetic")
    assert info.input_size == (256, 480) and info.shipped == "sdcpc_b0_synthetic"
    loaded = open_model("sdcpc_b0_synthetic")
    assert "demo model trained on synthetic streets, not a perception model" in loaded.demo
    assert loaded.message.startswith("loaded the shipped sdcpc_b0_synthetic (sdcpc_b0, 19 classes: road,")
    segmenter = StreamingSegmenter.from_checkpoint("sdcpc_b0_synthetic")
    assert segmenter.config.input_size == (256, 480)
    assert StreamingSegmenter.from_checkpoint("sdcpc_b0_synthetic", input_size=(64, 96)).config.input_size == (64, 96)


def test_streaming_segmenter_reads_a_hf_folder(hf_folder):
    segmenter = StreamingSegmenter.from_checkpoint(hf_folder[0], input_size=(64, 96))
    assert segmenter.loaded.classes == CITYSCAPES and segmenter.num_classes == 19
    result = segmenter.step(np.zeros((48, 80, 3), np.uint8), 0, "cam")
    assert result.labels.shape == (48, 80)


def test_our_checkpoint_carries_its_input_size(tmp_path):
    model = build_model("sdcpc_b0", 3, coarse_tokens=4, window=3)
    save_weights(model, tmp_path / "m.safetensors", metadata={"input_size": [96, 160]})
    assert inspect_weights(tmp_path / "m.safetensors").input_size == (96, 160)
    save_weights(model, tmp_path / "bad.safetensors", metadata={"input_size": [100, 7]})
    with pytest.raises(ValueError, match=r"bad.safetensors: metadata 'input_size' must be \[height, width\]"):
        inspect_weights(tmp_path / "bad.safetensors")


# --------------------------------------------------------------------------------------- sdcpc-convert
def test_convert_writes_our_format_with_names_and_size(hf_folder, tmp_path, capsys):
    out = tmp_path / "b0_cityscapes.safetensors"
    assert convert.main([str(hf_folder[0]), str(out), "--input-size", "512x1024"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("sdcpc-convert: loaded Hugging Face SegFormer-B0")
    assert captured.out == f"wrote {out} (sdcpc_b0, 19 named classes, input 512x1024)\n"
    assert read_class_list(out) == CITYSCAPES
    assert read_input_size(read_safetensors_metadata(out), out) == (512, 1024)
    assert (logits_of(load_model(out))[1] - hf_folder[1]).abs().max() < 1e-4
    again = open_model(out)
    assert again.message == (f"loaded the sdcpc_b0 checkpoint {out} (19 classes: road, sidewalk, building, wall, "
                             f"fence, ...); converted from Hugging Face SegFormer-B0 ({hf_folder[0].name}): SD-CPC's "
                             f"temporal parts are untrained, so its predictions are exactly that SegFormer's")
    assert convert.main([str(hf_folder[0]), str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_convert_names_classes_and_refuses_bad_inputs(unnamed_folder, tmp_path, capsys):
    out = tmp_path / "named.safetensors"
    assert convert.main([str(unnamed_folder), str(out), "--classes", "cityscapes"]) == 0
    assert read_class_list(out) == CITYSCAPES
    capsys.readouterr()
    assert convert.main([str(unnamed_folder), str(tmp_path / "x.safetensors"), "--classes", "camvid"]) == 2
    assert capsys.readouterr().err == ("sdcpc-convert: error: the class list camvid has 11 classes but the model "
                                       "predicts 19; give a list with 19 classes\n")
    assert convert.main([str(tmp_path / "absent"), str(tmp_path / "y.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


# ------------------------------------------------------------------------------------------ sdcpc-eval
def _write_vspw(root: Path) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for video in ("a", "b"):
        for k in range(3):
            folder = root / "data" / video
            (folder / "origin").mkdir(parents=True, exist_ok=True)
            (folder / "mask").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / "origin" / f"{k:05d}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            cv2.imwrite(str(folder / "mask" / f"{k:05d}.png"), rng.integers(1, 4, (48, 64), dtype=np.uint8))
    (root / "val.txt").write_text("a\nb\n")
    return root


@pytest.fixture(scope="module")
def vspw_root(tmp_path_factory):
    return _write_vspw(tmp_path_factory.mktemp("vspw"))


def test_eval_takes_a_hf_folder_and_a_shipped_name(hf_folder, vspw_root, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--data", str(vspw_root), "--short-side", "32", "--overlays", "0", "--threads", "1"]
    assert evaluate.main(["--checkpoint", str(hf_folder[0]), *argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"sdcpc-eval: loaded Hugging Face SegFormer-B0 from {hf_folder[0]} as sdcpc_b0" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert list(report["per_class_iou"]) == CITYSCAPES.names and report["info"]["classes"] == "checkpoint"
    assert evaluate.main(["--checkpoint", "sdcpc_b0_synthetic", *argv, "--out", str(tmp_path / "shipped")]) == 0
    assert "loaded the shipped sdcpc_b0_synthetic" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--threads", "0"], "--threads: must be an integer in 1.."),
    (["--short-side", "100000"], "--short-side: must be an integer in 32..4320"),
    (["--checkpoint", "sdcpc_b9_imaginary"], "unknown checkpoint name 'sdcpc_b9_imaginary'"),
])
def test_eval_bounds_and_names(argv, expected, vspw_root, tmp_path, capsys):
    base = {"--checkpoint": "sdcpc_b0_synthetic", "--data": str(vspw_root), "--out": str(tmp_path / "o")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    assert evaluate.main([x for pair in base.items() for x in pair]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- sdcpc-export
@pytest.mark.slow
def test_export_takes_a_hf_folder(hf_folder, tmp_path, capsys):
    pytest.importorskip("onnx")
    from sdcpc_core.tools import export

    out = tmp_path / "onnx"
    assert export.main(["--checkpoint", str(hf_folder[0]), "--backend", "onnx", "--size", "64x96", "--refs", "1",
                        "--build-only", "--out", str(out)]) in (0, 1)
    assert (out / "encode.onnx").is_file() and (out / "manifest.json").is_file()
    assert "loaded Hugging Face SegFormer-B0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- sdcpc-train
def test_train_init_from_another_variant_names_it_and_the_fix(b1_folder, tmp_path, capsys):
    from test_train import tiny_config, write_tree

    from sdcpc_core.tools.train import main

    root = write_tree(tmp_path / "tree", frames=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "unused").to_dict()))
    out = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(out), "--init-from", str(b1_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"sdcpc-train: error: --init-from {b1_folder} is a Hugging Face SegFormer-B1 (MiT-B1 encoder) but "
                   f"model.variant sdcpc_b0 has a MiT-B0 encoder; pass --set model.variant=sdcpc_b1")
    assert not out.exists()  # nothing written: not even config.yaml


def test_train_init_from_another_class_count_reinitialises_the_head_with_a_warning(hf_folder, tmp_path, caplog):
    from test_train import tiny_config, write_tree

    from sdcpc_core.train.trainer import DistEnv, Trainer

    root = write_tree(tmp_path / "tree", frames=3)
    config = tiny_config(root, tmp_path / "run", model={"variant": "sdcpc_b0",
                                                         "options": {"coarse_tokens": 4, "window": 3}})
    with caplog.at_level(logging.INFO, logger="sdcpc_core"):
        trainer = Trainer(config, init_from=str(hf_folder[0]), env=DistEnv(), progress=False)
    trainer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0] == (
        f"--init-from {hf_folder[0]}: its classifier predicts 19 classes (road, sidewalk, building, wall, fence, ...) "
        f"but the training data has 5 classes (class0, class1, class2, class3, class4): "
        f"the classifier is re-initialised")
    reference = open_model(hf_folder[0]).model.state_dict()
    model = trainer.model.state_dict()
    assert all(torch.equal(model[k], reference[k]) for k in reference if k.startswith("backbone."))
    assert model["decode_head.classifier.weight"].shape[0] == 5


def test_train_init_from_takes_a_shipped_name(tmp_path, caplog):
    from test_train import tiny_config, write_tree

    from sdcpc_core.train.trainer import DistEnv, Trainer

    root = write_tree(tmp_path / "tree", frames=3)
    config = tiny_config(root, tmp_path / "run", model={"variant": "sdcpc_b0", "options": {}})
    with caplog.at_level(logging.INFO, logger="sdcpc_core"):
        Trainer(config, init_from="sdcpc_b0_synthetic", env=DistEnv(), progress=False).close()
    assert any("initialised from the shipped sdcpc_b0_synthetic" in r.getMessage() for r in caplog.records)


def test_finetune_recipe_is_the_protocol():
    from sdcpc_core.train.config import load_config

    path = Path(__file__).resolve().parents[1] / "config" / "train" / "finetune_cityscapes_b1.yaml"
    config = load_config(path)
    assert config.model.variant == "sdcpc_b1" and config.optim.lr == 6e-5 and config.optim.head_lr_mult == 10.0
    assert config.data.dataset == "cityscapes"
    assert "--init-from" in path.read_text().split("model:")[0]  # the header says how to start it


# ------------------------------------------------------------------------------------ node, sdcpc-bag
def test_node_loads_a_hf_folder_with_its_names(hf_folder):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from sdcpc_ros.parameters import NodeConfig
    from sdcpc_ros.segment_node import load_segmenter

    segmenter, classes = load_segmenter(NodeConfig(model=str(hf_folder[0]), input_height=64, input_width=96))
    assert classes == CITYSCAPES and "person" in classes.names and segmenter.config.input_size == (64, 96)
    assert segmenter.loaded.message.startswith("loaded Hugging Face SegFormer-B0")


def test_node_uses_the_checkpoints_input_size_when_unset():
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from types import SimpleNamespace

    from sdcpc_ros.segment_node import DEFAULT_INPUT_SIZE, network_input_size

    shipped = open_model("sdcpc_b0_synthetic")
    assert network_input_size(SimpleNamespace(input_size=(0, 0)), shipped) == (256, 480)
    assert network_input_size(SimpleNamespace(input_size=(64, 96)), shipped) == (64, 96)
    shipped.info.input_size = None
    assert network_input_size(SimpleNamespace(input_size=(0, 0)), shipped) == DEFAULT_INPUT_SIZE


def test_bag_eval_takes_a_hf_folder(hf_folder, synthetic_bag, capsys):
    from sdcpc_ros.bag import cli

    code = cli.main(["eval", str(synthetic_bag), "--model", str(hf_folder[0]), "--input-size", "64x96",
                     "--overlays", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 of 3 frames segmented" in captured.out
    assert "loaded Hugging Face SegFormer-B0" in captured.out + captured.err


def test_node_says_what_it_loaded_and_warns_about_the_demo_model(monkeypatch):
    rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from rclpy.context import Context
    from rclpy.impl.rcutils_logger import RcutilsLogger
    from rclpy.parameter import Parameter

    from sdcpc_ros.segment_node import SegmentNode

    logged = []
    for level in ("info", "warning"):
        monkeypatch.setattr(RcutilsLogger, level,
                            lambda self, message, level=level, **_: logged.append((level, message)))
    context = Context()
    rclpy.init(context=context)
    try:
        node = SegmentNode(context=context, parameter_overrides=[Parameter("input_height", value=64),
                                                                 Parameter("input_width", value=96)])
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    warnings = [m for level, m in logged if level == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(
        "sdcpc_b0_synthetic is a demo model trained on synthetic streets, not a perception model")
    assert ("info", "Loaded the shipped sdcpc_b0_synthetic (sdcpc_b0, 19 classes: road, sidewalk, building, wall, "
                    "fence, ...).") in logged
