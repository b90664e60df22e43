"""A checkpoint's metadata is checked (types, ranges, sizes) before anything is built from it.

Regression cases of a fault-injection run: a ``config`` of ``null`` or ``[1, 2, 3]``, ``embed_dim: "256"``,
``ssea_grids: 4``, ``proj_dim: 1e12`` and ``num_classes: 200000`` in our format's header, and a Hugging
Face ``config.json`` that is a list or not JSON. Each gives one sentence naming the file through every
entry point: the resolver, the node (plain and lifecycle), ``sdcpc-eval``, ``sdcpc-bag eval`` and
``sdcpc-train --init-from`` (exit status 2, nothing written).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sdcpc_core.models import build_model
from sdcpc_core.weights import save_weights
from sdcpc_core.weights.files import read_safetensors_metadata
from sdcpc_core.weights.resolve import open_model

CASES = {
    "null": (None, r"the embedded model config must be a JSON object of SDCPCConfig fields, got null"),
    "list": ([1, 2, 3], r"must be a JSON object of SDCPCConfig fields, got \[1, 2, 3\]"),
    "embed_dim_string": ({"embed_dim": "256"}, r"embedded model config's embed_dim must be an integer in 8..4096, "
                                               r"got \"256\""),
    "ssea_grids_int": ({"ssea_grids": 4}, r"ssea_grids must be a list of 1..8 integers in 1..64, got 4"),
    "proj_dim_huge": ({"proj_dim": 1e12}, r"proj_dim must be an integer in 1..4096, got 1000000000000.0"),
    "num_classes_huge": ({"num_classes": 200000}, r"num_classes must be an integer in 1..65535, got 200000"),
    "num_classes_lie": ({"num_classes": 7}, r"its model config \(mit_b0, 7 classes, embed_dim 32\) does not describe "
                                            r"its tensors: decode_head.classifier.bias is \(3\) in the file but "
                                            r"\(7\) in the model"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_weights(build_model("sdcpc_b0", 3, embed_dim=32, ssea_dim=32, window_dim=16, proj_dim=16, coarse_tokens=4,
                             window=3), path)
    return path


def damaged(good: Path, folder: Path, case: str) -> Path:
    """``good`` with its embedded config replaced (a whole value) or patched (a dict of fields)."""
    value = CASES[case][0]
    metadata = read_safetensors_metadata(good)
    config = json.loads(metadata["config"])
    metadata["config"] = json.dumps({**config, **value} if isinstance(value, dict) else value)
    path = folder / f"{case}.safetensors"
    save_file(load_file(str(good)), str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def hf_configs(tmp_path_factory):
    """Hugging Face folders whose config.json is a list, or not JSON (the weights are a random B0's)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("hf")
    model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=3))
    model.save_pretrained(base / "ok")
    folders = {}
    for case, text in (("list", "[1, 2, 3]"), ("not_json", "{\"model_type\": segformer")):
        folder = base / case
        shutil.copytree(base / "ok", folder)
        (folder / "config.json").write_text(text)
        folders[case] = folder
    return folders


HF_MESSAGES = {"list": r" must hold a JSON object \(a mapping of settings\), got a list",
               "not_json": r" is not valid JSON"}


# ----------------------------------------------------------------------------------------- resolver
@pytest.mark.parametrize("case", CASES)
def test_malformed_metadata_is_one_sentence_before_building(case, good, tmp_path, monkeypatch):
    from sdcpc_core.models import sdcpc

    path = damaged(good, tmp_path, case)
    built = []
    real_init = sdcpc.SDCPC.__init__

    def init(self, config):  # records every model built with real memory (not on the meta device)
        if torch.empty(0).device.type != "meta":
            built.append(config)
        real_init(self, config)

    monkeypatch.setattr(sdcpc.SDCPC, "__init__", init)
    with pytest.raises(ValueError) as error:
        open_model(path)
    message = str(error.value)
    assert message.startswith(str(path)) and re.search(CASES[case][1], message) and "\n" not in message
    assert built == []


@pytest.mark.parametrize("case", HF_MESSAGES)
def test_malformed_hf_config_names_the_file(case, hf_configs):
    with pytest.raises(ValueError, match=re.escape(str(hf_configs[case] / "config.json")) + HF_MESSAGES[case]):
        open_model(hf_configs[case])


# ------------------------------------------------------------------------------------- entry points
def test_sdcpc_eval_refuses_them_with_status_2(good, hf_configs, tmp_path, capsys):
    from sdcpc_core.tools.evaluate import main

    paths = [damaged(good, tmp_path, case) for case in CASES] + list(hf_configs.values())
    for path in paths:
        assert main(["--checkpoint", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sdcpc-eval: error: {path}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_sdcpc_train_init_from_refuses_them_and_writes_nothing(good, hf_configs, tmp_path, capsys):
    pytest.importorskip("cv2")
    from test_train import tiny_config, write_tree

    from sdcpc_core.tools.train import main

    root = write_tree(tmp_path / "tree", frames=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(root, tmp_path / "unused").to_dict()))
    for path in [damaged(good, tmp_path, case) for case in ("null", "num_classes_huge")] + [hf_configs["list"]]:
        out = tmp_path / f"run_{path.stem}"
        assert main(["--config", str(config), "--out", str(out), "--init-from", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"sdcpc-train: error: {path}") and "\n" not in err
        assert not out.exists()


def test_node_refuses_them_naming_the_parameter(good, hf_configs, tmp_path):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from sdcpc_ros.parameters import NodeConfig
    from sdcpc_ros.segment_node import StartupError, load_segmenter

    for path in [damaged(good, tmp_path, case) for case in CASES] + list(hf_configs.values()):
        named = re.escape(str(path))
        with pytest.raises(StartupError, match=rf"^parameter 'model' \('{named}'\): {named}"):
            load_segmenter(NodeConfig(model=str(path), input_height=64, input_width=96))


def test_bag_eval_refuses_them_with_status_2(good, synthetic_bag, tmp_path, capsys):
    from sdcpc_ros.bag import cli

    path = damaged(good, tmp_path, "embed_dim_string")
    out = tmp_path / "eval"
    assert cli.main(["eval", str(synthetic_bag), "--model", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parameter 'model'" in err and "embed_dim must be an integer" in err
    assert not (out / "report").exists() and not (out / "semantic_mask.mcap").exists()


def test_lifecycle_configure_logs_the_refusal(good, tmp_path):
    rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: pip install -e '.[ros]'")
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from sdcpc_ros.segment_node import SegmentLifecycleNode

    path = damaged(good, tmp_path, "ssea_grids_int")
    context = Context()
    rclpy.init(context=context)
    try:
        node = SegmentLifecycleNode(context=context, parameter_overrides=[Parameter("model", value=str(path))])
        logged = []
        node.get_logger().error = logged.append  # what configure logs, without a /rosout subscriber
        assert node.trigger_configure() == rclpy.lifecycle.TransitionCallbackReturn.FAILURE
        assert len(logged) == 1 and logged[0].startswith("Cannot configure: parameter 'model'")
        assert "ssea_grids must be a list" in logged[0] and node.runtime is None
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
