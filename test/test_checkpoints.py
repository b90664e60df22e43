"""Checkpoint reading/writing: parity with Hugging Face SegFormer, the other released layouts, our format."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdcpc_core.models import build_model
from sdcpc_core.models.resnet import DilatedResNet
from sdcpc_core.weights import CheckpointError, load_model, load_weights, save_weights
from sdcpc_core.weights import format as weights_format

NUM_LABELS = 19
B0 = dict(num_labels=NUM_LABELS, decoder_hidden_size=256)
B2 = dict(num_labels=NUM_LABELS, depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768)
TEMPORAL = ("ssea.", "dssa.", "temporal_classifier.", "projector.", "prototypes.")


# ------------------------------------------------------------------------------------------ helpers
@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (biases, norms, zero-initialised scales, BN statistics)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(actual: dict, expected: dict, skip: tuple[str, ...] = ()) -> None:
    keys = [k for k in expected if not k.startswith(skip)]
    assert sorted(k for k in actual if not k.startswith(skip)) == sorted(keys)
    for key in keys:
        assert torch.equal(actual[key], expected[key]), key


def hf_model(name: str, config: dict, seed: int):
    """A random transformers SegFormer model (the tests that need one skip without transformers)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return randomise(getattr(transformers, name)(transformers.SegformerConfig(**config)), seed).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory, image):
    """A random HF SegFormer-B0 (19 labels), its folder and its logits on ``image``."""
    model = hf_model("SegformerForSemanticSegmentation", B0, seed=0)
    folder = tmp_path_factory.mktemp("hf_b0")
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(pixel_values=image).logits
    return model, folder, logits


@pytest.fixture(scope="module")
def hf_b2(tmp_path_factory, image):
    model = hf_model("SegformerForSemanticSegmentation", B2, seed=2)
    folder = tmp_path_factory.mktemp("hf_b2")
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(pixel_values=image).logits
    return model, folder, logits


@pytest.fixture(scope="module")
def reference_b0(hf_b0):
    """``segformer_b0`` loaded from the HF-B0 folder (read only)."""
    model = build_model("segformer_b0", NUM_LABELS).eval()
    load_weights(model, hf_b0[1])
    return model


# ------------------------------------------------------------------------------ Hugging Face
def test_hf_b0_folder_parity(hf_b0, reference_b0, image):
    _, folder, logits = hf_b0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    model = build_model("segformer_b0", NUM_LABELS).eval()
    report = load_weights(model, folder)
    assert report.missing == [] and report.skipped == [] and report.mismatched == []
    assert "Hugging Face" in report.source_format and "decode head" in report.source_format
    assert "loaded" in str(report)
    with torch.no_grad():
        ours = model(image)
    assert ours.shape == logits.shape
    assert max_diff(ours, logits) < 1e-4


def test_hf_b2_folder_parity(hf_b2, image):
    _, folder, logits = hf_b2
    model = build_model("segformer_b2", NUM_LABELS).eval()
    report = load_weights(model, folder)
    assert report.missing == []
    with torch.no_grad():
        assert max_diff(model(image), logits) < 1e-4


def test_hf_module_key_names(hf_b0, reference_b0, tmp_path, image):
    """transformers 5.x module names (as in ``model.state_dict()``), also without the ``segformer.`` prefix."""
    hf, _, logits = hf_b0
    state = hf.state_dict()
    assert any(".q_proj." in k for k in state) and any(k.startswith("segformer.stages.") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    model = build_model("segformer_b0", NUM_LABELS).eval()
    load_weights(model, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert max_diff(model(image), logits) < 1e-4

    encoder = {k: v.contiguous() for k, v in hf.segformer.state_dict().items()}  # a saved SegformerModel
    assert all(k.startswith("stages.") for k in encoder)
    save_file(encoder, str(tmp_path / "encoder.safetensors"))
    model = build_model("segformer_b0", NUM_LABELS)
    report = load_weights(model, tmp_path / "encoder.safetensors")
    assert "backbone only" in report.source_format
    assert_state_equal(model.backbone.state_dict(), reference_b0.backbone.state_dict())
    assert report.missing and all(k.startswith("decode_head.") for k in report.missing)


def test_sdcpc_b0_from_hf_predicts_like_hf(hf_b0, image):
    _, folder, logits = hf_b0
    model = build_model("sdcpc_b0", NUM_LABELS).eval()
    report = load_weights(model, folder)
    for prefix in TEMPORAL:
        assert any(k.startswith(prefix) for k in report.missing), prefix
    assert all(k.startswith(TEMPORAL) for k in report.missing)
    generator = torch.Generator().manual_seed(5)
    frames = torch.stack([torch.randn(image.shape, generator=generator), image], dim=1)  # target last
    with torch.no_grad():
        out = model.forward_clip(frames)
    assert max_diff(out.temporal_logits, logits) < 1e-4


def test_hf_backbone_only(tmp_path, reference_b0):
    hf = hf_model("SegformerForImageClassification", dict(B0, num_labels=1000), seed=3)
    hf.save_pretrained(tmp_path)
    model = build_model("sdcpc_b0", NUM_LABELS)
    head_before = snapshot(model.decode_head)
    report = load_weights(model, tmp_path)
    assert "backbone only" in report.source_format
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    assert {k.split(".")[0] for k in report.missing} == {"decode_head", *(p.rstrip(".") for p in TEMPORAL)}
    assert_state_equal(model.decode_head.state_dict(), head_before)
    stage = hf.segformer.stages[1]
    ours = model.backbone.stages[1]
    assert torch.equal(ours.patch_embed.proj.weight, stage.patch_embeddings.proj.weight)
    assert torch.equal(ours.blocks[1].attn.q.weight, stage.blocks[1].attention.q_proj.weight)
    assert torch.equal(ours.blocks[1].attn.kv.bias, torch.cat([stage.blocks[1].attention.k_proj.bias,
                                                               stage.blocks[1].attention.v_proj.bias]))
    assert torch.equal(ours.blocks[0].mlp.dwconv.weight, stage.blocks[0].mlp.dwconv.dwconv.weight)
    assert torch.equal(ours.norm.bias, stage.layer_norm.bias)


# ------------------------------------------------------------------------------- NVlabs / mmseg
def _copy(out: dict, name: str, module: torch.nn.Module, transform=lambda t: t) -> None:
    for key, tensor in module.state_dict().items():
        out[f"{name}.{key}"] = transform(tensor.clone())


def nvlabs_state(hf) -> dict[str, torch.Tensor]:
    """The original SegFormer release's names, written from the HF modules."""
    out = {}
    for i, stage in enumerate(hf.segformer.stages, start=1):
        _copy(out, f"backbone.patch_embed{i}.proj", stage.patch_embeddings.proj)
        _copy(out, f"backbone.patch_embed{i}.norm", stage.patch_embeddings.layer_norm)
        for j, block in enumerate(stage.blocks):
            prefix, attention = f"backbone.block{i}.{j}", block.attention
            _copy(out, f"{prefix}.norm1", block.layernorm_before)
            _copy(out, f"{prefix}.attn.q", attention.q_proj)
            for kind in ("weight", "bias"):
                out[f"{prefix}.attn.kv.{kind}"] = torch.cat([getattr(attention.k_proj, kind),
                                                             getattr(attention.v_proj, kind)]).detach()
            _copy(out, f"{prefix}.attn.proj", attention.o_proj)
            if attention.sequence_reduction_ratio > 1:
                _copy(out, f"{prefix}.attn.sr", attention.sequence_reduction.sequence_reduction)
                _copy(out, f"{prefix}.attn.norm", attention.sequence_reduction.layer_norm)
            _copy(out, f"{prefix}.norm2", block.layernorm_after)
            _copy(out, f"{prefix}.mlp.fc1", block.mlp.fc1)
            _copy(out, f"{prefix}.mlp.dwconv.dwconv", block.mlp.dwconv.dwconv)
            _copy(out, f"{prefix}.mlp.fc2", block.mlp.fc2)
        _copy(out, f"backbone.norm{i}", stage.layer_norm)
    head = hf.decode_head
    for i, linear in enumerate(head.linear_projections, start=1):
        _copy(out, f"decode_head.linear_c{i}.proj", linear.proj)
    _copy(out, "decode_head.linear_fuse.conv", head.linear_fuse)
    _copy(out, "decode_head.linear_fuse.bn", head.batch_norm)
    _copy(out, "decode_head.linear_pred", head.classifier)
    _copy(out, "decode_head.conv_seg", head.classifier)  # unused leftover of mmseg's BaseDecodeHead
    return out


def mmseg1_state(hf) -> dict[str, torch.Tensor]:
    """mmseg 1.x MixVisionTransformer names (fused in_proj, FFN as convs) plus its own decode head."""
    out = {}
    for i, stage in enumerate(hf.segformer.stages):
        _copy(out, f"backbone.layers.{i}.0.projection", stage.patch_embeddings.proj)
        _copy(out, f"backbone.layers.{i}.0.norm", stage.patch_embeddings.layer_norm)
        for j, block in enumerate(stage.blocks):
            prefix, attention = f"backbone.layers.{i}.1.{j}", block.attention
            _copy(out, f"{prefix}.norm1", block.layernorm_before)
            for kind in ("weight", "bias"):
                out[f"{prefix}.attn.attn.in_proj_{kind}"] = torch.cat(
                    [getattr(getattr(attention, p), kind) for p in ("q_proj", "k_proj", "v_proj")]).detach()
            _copy(out, f"{prefix}.attn.attn.out_proj", attention.o_proj)
            if attention.sequence_reduction_ratio > 1:
                _copy(out, f"{prefix}.attn.sr", attention.sequence_reduction.sequence_reduction)
                _copy(out, f"{prefix}.attn.norm", attention.sequence_reduction.layer_norm)
            _copy(out, f"{prefix}.norm2", block.layernorm_after)
            as_conv = lambda t: t[..., None, None] if t.dim() == 2 else t  # noqa: E731
            _copy(out, f"{prefix}.ffn.layers.0", block.mlp.fc1, as_conv)
            _copy(out, f"{prefix}.ffn.layers.1", block.mlp.dwconv.dwconv)
            _copy(out, f"{prefix}.ffn.layers.4", block.mlp.fc2, as_conv)
        _copy(out, f"backbone.layers.{i}.2", stage.layer_norm)
    out["decode_head.convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)
    out["decode_head.fusion_conv.bn.weight"] = torch.ones(256)
    out["decode_head.conv_seg.weight"] = torch.zeros(NUM_LABELS, 256, 1, 1)
    return out


def test_nvlabs_pth(hf_b0, tmp_path, image):
    hf, _, logits = hf_b0
    path = tmp_path / "segformer.b0.pth"
    torch.save({"meta": {"CLASSES": ["road"] * NUM_LABELS}, "state_dict": nvlabs_state(hf)}, path)
    model = build_model("segformer_b0", NUM_LABELS).eval()
    report = load_weights(model, path)
    assert report.source_format.startswith("NVlabs") and report.missing == []
    assert sorted(report.skipped) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    with torch.no_grad():
        assert max_diff(model(image), logits) < 1e-4


def test_nvlabs_imagenet_mit(hf_b0, tmp_path, reference_b0):
    state = {k.removeprefix("backbone."): v for k, v in nvlabs_state(hf_b0[0]).items() if k.startswith("backbone.")}
    state.update({"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "mit_b0.pth")
    model = build_model("sdcpc_b0", NUM_LABELS)
    report = load_weights(model, tmp_path / "mit_b0.pth")
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert any(k.startswith("decode_head.") for k in report.missing)
    assert_state_equal(model.backbone.state_dict(), reference_b0.backbone.state_dict())


def test_mmseg1_backbone(hf_b0, tmp_path, reference_b0):
    path = tmp_path / "mmseg1.pth"
    torch.save({"state_dict": mmseg1_state(hf_b0[0])}, path)
    model = build_model("sdcpc_b0", NUM_LABELS)
    report = load_weights(model, path)
    assert "mmseg 1.x" in report.source_format
    assert all(k.startswith("decode_head.") for k in report.skipped) and len(report.skipped) == 3
    assert any(k.startswith("decode_head.") for k in report.missing)
    assert_state_equal(model.backbone.state_dict(), reference_b0.backbone.state_dict())


# ---------------------------------------------------------------------------------- ResNet-101
def test_torchvision_resnet101(tmp_path):
    """One source encoder (42 M parameters), one model, both file types; no forward pass."""
    torch.manual_seed(7)
    source = DilatedResNet()
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.normal_()
                module.running_mean.normal_()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state.update({"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)})
    del source
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "resnet101.pth")
    save_file(state, str(tmp_path / "resnet101.safetensors"))

    model = build_model("sdcpc_r101", NUM_LABELS)
    for name in ("resnet101.pth",):
        with torch.no_grad():
            model.backbone.layer3[5].conv2.weight.zero_()
            model.backbone.bn1.running_var.fill_(2.0)
        report = load_weights(model, tmp_path / name)
        assert "ResNet" in report.source_format
        assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
        assert not any(k.startswith("backbone.") for k in report.missing)
        assert any(k.startswith("decode_head.") for k in report.missing)
        assert_state_equal(model.backbone.state_dict(), expected)


# ---------------------------------------------------------------------------------- our format
@pytest.fixture(scope="module")
def trained_b0() -> torch.nn.Module:
    """An sdcpc_b0 with non-trivial values everywhere, prototypes included."""
    torch.manual_seed(11)
    model = randomise(build_model("sdcpc_b0", NUM_LABELS), seed=11).eval()
    with torch.no_grad():
        model.prototypes.prototypes.copy_(torch.nn.functional.normalize(torch.randn_like(model.prototypes.prototypes),
                                                                        dim=-1))
        model.prototypes.initialized[::2] = True
    return model


def test_round_trip(trained_b0, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(trained_b0, path, metadata={"dataset": "cityscapes", "epoch": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "sdcpc" and metadata["format_version"] == "1"
    assert json.loads(metadata["config"])["backbone"] == "mit_b0"
    assert metadata["dataset"] == "cityscapes" and metadata["epoch"] == "3"

    loaded = load_model(path)
    assert loaded.config == trained_b0.config and not loaded.training
    assert_state_equal(loaded.state_dict(), trained_b0.state_dict())
    frames = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, actual = trained_b0.forward_clip(frames), loaded.forward_clip(frames)
    assert torch.equal(actual.temporal_logits, expected.temporal_logits)
    assert torch.equal(actual.embeddings, expected.embeddings)

    other = build_model("sdcpc_b0", NUM_LABELS)
    report = load_weights(other, path)
    assert report.source_format == "sdcpc safetensors" and report.missing == [] and report.skipped == []


def test_failed_save_keeps_previous_file(trained_b0, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_weights(trained_b0, path)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(weights_format, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_weights(build_model("sdcpc_b0", NUM_LABELS), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_load_model_refuses_other_formats(hf_b0):
    with pytest.raises(ValueError, match="not an sdcpc checkpoint"):
        load_model(hf_b0[1])


# --------------------------------------------------------------------------------------- errors
def test_class_count_mismatch_and_ignore_classifier(hf_b0, reference_b0):
    model = build_model("segformer_b0", 5)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"19 classes but the model has 5.*ignore_classifier=True"):
        load_weights(model, hf_b0[1])
    assert_state_equal(model.state_dict(), before)

    report = load_weights(model, hf_b0[1], ignore_classifier=True)
    assert sorted(report.missing) == ["decode_head.classifier.bias", "decode_head.classifier.weight"]
    assert "decode_head.classifier.weight" in report.skipped
    classifier = ("decode_head.classifier.",)
    assert_state_equal(model.state_dict(), reference_b0.state_dict(), skip=classifier)
    assert_state_equal({k: v for k, v in model.state_dict().items() if k.startswith(classifier)},
                       {k: v for k, v in before.items() if k.startswith(classifier)})


def test_missing_and_unexpected_keys(trained_b0, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(trained_b0, path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    del state["dssa.gamma"]
    state["dssa.extra.weight"] = torch.zeros(3)
    save_file(state, str(path), metadata=metadata)
    model = build_model("sdcpc_b0", NUM_LABELS)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sdcpc.*1 missing key.*dssa\.gamma.*"
                                              r"1 unexpected key.*dssa\.extra\.weight"):
        load_weights(model, path)
    assert_state_equal(model.state_dict(), before)

    report = load_weights(model, path, strict=False)
    assert report.missing == ["dssa.gamma"] and report.skipped == ["dssa.extra.weight"]


def test_decoder_width_mismatch(hf_b2, tmp_path):
    model = build_model("segformer_b2", NUM_LABELS, embed_dim=256)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"768 wide but the model's is 256.*embed_dim=768.*strict=False"):
        load_weights(model, hf_b2[1])
    assert_state_equal(model.state_dict(), before)

    report = load_weights(model, hf_b2[1], strict=False)
    assert report.mismatched and not any(k.startswith("backbone.") for k in report.missing)
    assert torch.equal(model.backbone.stages[2].blocks[5].attn.q.weight,
                       hf_b2[0].segformer.stages[2].blocks[5].attention.q_proj.weight)
    assert torch.equal(model.decode_head.linear_fuse.weight, before["decode_head.linear_fuse.weight"])


def test_encoder_mismatch(hf_b2):
    model = build_model("segformer_b0", NUM_LABELS)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"its encoder is mit_b2 .*but the model's is mit_b0"):
        load_weights(model, hf_b2[1])
    assert_state_equal(model.state_dict(), before)


def test_pickle_named_safetensors(tmp_path):
    model = build_model("segformer_b0", NUM_LABELS)
    path = tmp_path / "weights.safetensors"
    torch.save({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, path)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"not a safetensors file.*pickle.*will not be unpickled"):
        load_weights(model, path)
    assert_state_equal(model.state_dict(), before)


class Payload:
    """Stands for an arbitrary Python object in a pickle."""


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    model = build_model("segformer_b0", NUM_LABELS)
    path = tmp_path / "checkpoint.pth"
    zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    torch.save({"state_dict": zeros, "extra": Payload()}, path)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"checkpoint\.pth contains arbitrary Python objects.*not be unpickled"):
        load_weights(model, path)
    assert_state_equal(model.state_dict(), before)


def test_missing_path_and_unknown_layout(tmp_path):
    model = build_model("segformer_b0", NUM_LABELS)
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors"):
        load_weights(model, tmp_path / "nowhere.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(ValueError, match=r"unrecognised checkpoint layout.*foo\.weight.*accepted formats"):
        load_weights(model, tmp_path / "foo.safetensors")
    assert_state_equal(model.state_dict(), before)


def test_safetensors_header_length_that_looks_like_a_pickle_opcode(tmp_path):
    """A safetensors header whose length's first byte is 0x80 (the pickle PROTO opcode) is still safetensors."""
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    for pad in range(512):
        save_file({"x": torch.zeros(1)}, str(path), metadata={"pad": "a" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    from sdcpc_core.weights.files import read_safetensors

    tensors, metadata = read_safetensors(path)
    assert set(tensors) == {"x"} and len(metadata["pad"]) == pad
