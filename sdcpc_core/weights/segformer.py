"""Released SegFormer / MiT weights onto our MiT backbone and decode head (``backbone.*``, ``decode_head.*``).

* **Hugging Face** (``convert_hf``): the classic hub names (``segformer.encoder.block.{i}.{j}.attention.self.query``
  ...) and the module names of transformers 5.x (``segformer.stages.{i}.blocks.{j}.attention.q_proj`` ...),
  with or without the ``segformer.`` prefix. HF keeps key and value apart; they are concatenated into
  ``attn.kv`` (rows: key, then value). The ImageNet ``classifier.*`` is skipped.
* **NVlabs** (mmseg 0.x, ``convert_nvlabs``): ``backbone.patch_embed1`` ..., ``decode_head.linear_c4`` ...,
  ``decode_head.linear_pred``, and the ImageNet MiT release (the same encoder names without ``backbone.``,
  a ``head.*`` classifier, skipped).
* **mmseg 1.x** ``MixVisionTransformer`` (``convert_mmseg``): ``backbone.layers.{i}.{0,1,2}`` ...; the fused
  q/k/v ``in_proj`` is split, the 1x1 conv FFN weights become linear weights. Its ``SegformerHead`` is a
  different architecture (a ConvModule with BN per level), so only the encoder is used.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .keymap import MappedState, Rule, head_provided, rename, stage_rule

_MIX_FFN = [(r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv.")]

HF_RULES: list[Rule] = [
    # classic hub names
    (r"^encoder\.patch_embeddings\.(\d+)\.", r"backbone.stages.\1.patch_embed."),
    (r"^encoder\.block\.(\d+)\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^encoder\.layer_norm\.(\d+)\.", r"backbone.stages.\1.norm."),
    # transformers 5.x module names
    (r"^stages\.(\d+)\.patch_embeddings\.", r"backbone.stages.\1.patch_embed."),
    (r"^stages\.(\d+)\.blocks\.", r"backbone.stages.\1.blocks."),
    (r"^stages\.(\d+)\.layer_norm\.", r"backbone.stages.\1.norm."),
    # inside a stage / block (both styles)
    (r"\.patch_embed\.layer_norm\.", ".patch_embed.norm."),
    (r"\.(?:layer_norm_1|layernorm_before)\.", ".norm1."),
    (r"\.(?:layer_norm_2|layernorm_after)\.", ".norm2."),
    (r"\.attention\.(?:self\.query|q_proj)\.", ".attn.q."),
    (r"\.attention\.(?:self\.key|k_proj)\.", ".attn.k."),
    (r"\.attention\.(?:self\.value|v_proj)\.", ".attn.v."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", ".attn.sr."),
    (r"\.attention\.(?:self|sequence_reduction)\.layer_norm\.", ".attn.norm."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    *_MIX_FFN,
    # decode head
    (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.", r"decode_head.linear_c.\1."),
    (r"^decode_head\.batch_norm\.", "decode_head.bn."),
]
HF_SKIP = (r"^classifier\.",)

NVLABS_RULES: list[Rule] = [
    (r"^(?:backbone\.)?patch_embed([1-4])\.", stage_rule("backbone.stages.{s}.patch_embed.")),
    (r"^(?:backbone\.)?block([1-4])\.(\d+)\.", stage_rule("backbone.stages.{s}.blocks.{b}.")),
    (r"^(?:backbone\.)?norm([1-4])\.", stage_rule("backbone.stages.{s}.norm.")),
    *_MIX_FFN,
    (r"^decode_head\.linear_c([1-4])\.proj\.", stage_rule("decode_head.linear_c.{s}.")),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.linear_fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
]
NVLABS_SKIP = (r"^head\.", r"^decode_head\.conv_seg\.", r"^auxiliary_head\.")

MMSEG_RULES: list[Rule] = [
    (r"^(?:backbone\.)?layers\.(\d+)\.0\.projection\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"^(?:backbone\.)?layers\.(\d+)\.0\.norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (r"^(?:backbone\.)?layers\.(\d+)\.1\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^(?:backbone\.)?layers\.(\d+)\.2\.", r"backbone.stages.\1.norm."),
    (r"\.attn\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.attn\.out_proj\.", ".attn.proj."),
    (r"\.ffn\.layers\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.dwconv."),
    (r"\.ffn\.layers\.4\.", ".mlp.fc2."),
]
MMSEG_SKIP = (r"^decode_head\.", r"^auxiliary_head\.")


def _merge_kv(tensors: dict, origin: dict) -> None:
    """``*.attn.k.*`` + ``*.attn.v.*`` -> ``*.attn.kv.*`` (rows: key then value), in place."""
    for key in [k for k in tensors if re.search(r"\.attn\.k\.(weight|bias)$", k)]:
        value_key = key.replace(".attn.k.", ".attn.v.")
        if value_key in tensors:
            fused = key.replace(".attn.k.", ".attn.kv.")
            tensors[fused] = torch.cat([tensors.pop(key), tensors.pop(value_key)])
            origin[fused] = origin.pop(key) + origin.pop(value_key)


def _split_qkv(tensors: dict, origin: dict) -> None:
    """``*.attn.qkv.*`` (rows q, k, v) -> ``*.attn.q.*`` and ``*.attn.kv.*``, in place."""
    for key in [k for k in tensors if re.search(r"\.attn\.qkv\.(weight|bias)$", k)]:
        qkv, source = tensors.pop(key), origin.pop(key)
        if qkv.shape[0] % 3:
            tensors[key], origin[key] = qkv, source  # left to be reported as unexpected
            continue
        channels = qkv.shape[0] // 3
        for name, part in (("q", qkv[:channels]), ("kv", qkv[channels:])):
            new = key.replace(".attn.qkv.", f".attn.{name}.")
            tensors[new], origin[new] = part, source


def convert_hf(state: Mapping, name: str = "Hugging Face SegFormer") -> MappedState:
    """A Hugging Face SegFormer / MiT state dict (either naming) in model key names."""
    state = {k.removeprefix("segformer."): v for k, v in state.items()}
    tensors, origin, skipped = rename(state, HF_RULES, HF_SKIP)
    _merge_kv(tensors, origin)
    provides = head_provided(tensors)
    part = "backbone + decode head" if len(provides) == 2 else "backbone only"
    return MappedState(f"{name} ({part})", tensors, origin, skipped, provides)


def convert_nvlabs(state: Mapping) -> MappedState:
    """An NVlabs SegFormer (mmseg 0.x) or ImageNet MiT state dict in model key names."""
    tensors, origin, skipped = rename(state, NVLABS_RULES, NVLABS_SKIP)
    provides = head_provided(tensors)
    name = "NVlabs SegFormer (mmseg 0.x)" if len(provides) == 2 else "NVlabs MiT backbone"
    return MappedState(name, tensors, origin, skipped, provides)


def convert_mmseg(state: Mapping) -> MappedState:
    """The encoder of an mmseg 1.x ``MixVisionTransformer`` state dict in model key names."""
    tensors, origin, skipped = rename(state, MMSEG_RULES, MMSEG_SKIP)
    _split_qkv(tensors, origin)
    for key in [k for k in tensors if re.search(r"\.mlp\.fc[12]\.weight$", k)]:
        if tensors[key].dim() == 4 and tensors[key].shape[2:] == (1, 1):
            tensors[key] = tensors[key].flatten(1)  # 1x1 conv -> linear
    return MappedState("mmseg 1.x MixVisionTransformer (backbone only)", tensors, origin, skipped, ("backbone.",))


__all__ = ["HF_RULES", "HF_SKIP", "MMSEG_RULES", "MMSEG_SKIP", "NVLABS_RULES", "NVLABS_SKIP", "convert_hf",
           "convert_mmseg", "convert_nvlabs"]
