"""Model weights: our own format, and the released SegFormer / ResNet weights mapped onto our model.

``load_weights(model, path, strict=True, ignore_classifier=False)`` accepts:

1. **sdcpc** -- our own safetensors files written by ``save_weights`` (metadata ``format = "sdcpc"``,
   the model config as JSON). A plain state dict of an SD-CPC model (e.g. ``torch.save(model.state_dict())``)
   is read the same way, without the config.
2. **Hugging Face SegFormer** -- a folder with ``config.json`` + ``model.safetensors`` (``nvidia/mit-b*``:
   encoder + ImageNet classifier; ``nvidia/segformer-b*-finetuned-*``: encoder + decode head), or a
   bare ``model.safetensors`` with HF key names. Both the classic hub names
   (``segformer.encoder.block.{i}.{j}.attention.self.query`` ...) and the module names of
   transformers 5.x (``segformer.stages.{i}.blocks.{j}.attention.q_proj`` ...) are understood, with or
   without the ``segformer.`` prefix. HF keeps key and value apart; they are concatenated into
   ``attn.kv`` (rows: key, then value).
3. **NVlabs SegFormer** (mmseg 0.x) ``.pth`` files (``backbone.patch_embed1`` ..., ``decode_head.linear_c4``
   ..., ``decode_head.linear_pred``) and the ImageNet MiT release (same encoder names without the
   ``backbone.`` prefix, ``head.*`` classifier); **mmseg 1.x** ``MixVisionTransformer`` backbones
   (``backbone.layers.{i}.{0,1,2}`` ...; the fused q/k/v ``in_proj`` is split, the 1x1 conv FFN weights
   become linear weights). mmseg 1.x's ``SegformerHead`` is a different architecture (a ConvModule
   with BN per level), so only the encoder of those files is used.
4. **torchvision ResNet-101** state dicts (``conv1``, ``bn1``, ``layer1..4``, ``fc``) as ``.pth`` or
   ``.safetensors``, mapped onto ``backbone.*`` of ``sdcpc_r101``.

The format is detected from the path (folder, safetensors or PyTorch file, checked by content) and
the key names. PyTorch files are read only with ``torch.load(..., weights_only=True)``: a file
holding arbitrary Python objects is refused, never unpickled.

Semantics
---------
* Each source format provides a known set of model parts: our format -> everything; a full SegFormer
  (HF with decode head, NVlabs SegFormer) -> ``backbone.*`` and ``decode_head.*``; backbone-only
  sources (HF/NVlabs ImageNet MiT, mmseg 1.x, torchvision ResNet) -> ``backbone.*``. Model keys
  outside what the source provides (SSEA, DSSA, temporal classifier, projector, prototypes; plus the
  decode head for backbone-only sources) are expected to be missing: they are reported in
  ``LoadReport.missing`` and are not an error. ``num_batches_tracked`` may be absent anywhere (and
  is not listed in ``missing``).
* ``strict=True`` (default): an error if the source lacks a key it should provide, has keys that map
  nowhere, or has any shape mismatch. Known heads that the model has no place for go to
  ``LoadReport.skipped`` instead: the ImageNet classifiers of backbone-only sources (HF
  ``classifier.*``, NVlabs ``head.*``, torchvision ``fc.*``), mmseg's decode and auxiliary heads
  that do not match ours, and the unused ``decode_head.conv_seg`` of the NVlabs release. The error
  is one sentence naming the file, the format, and the first missing / unexpected / mismatched keys.
  Before that generic check come three specific ones: a different encoder (e.g. MiT-B2 weights into
  a B0 model), a different decoder width (e.g. a 768-wide SegFormer-B2 head into a 256-wide model:
  build with ``embed_dim=768``), and a different class count of the classifier.
* ``ignore_classifier=True`` skips the class-dependent tensors (``decode_head.classifier``,
  ``temporal_classifier``, ``prototypes``) of the checkpoint: the model keeps its own (reported in
  ``missing``), e.g. to fine-tune on a new class set.
* ``strict=False`` loads every key that maps onto the model with the right shape and reports the rest
  (``missing``, ``skipped``, ``mismatched``); it never errors on missing, unexpected or mismatched keys,
  only on unreadable files.
* Nothing is loaded half-way: the complete mapped dict is built and validated first, then loaded with
  one ``model.load_state_dict(..., strict=False)``; after any error the model is unchanged. Tensors
  are cast to the dtype of the model tensor they replace.
* A missing file or folder raises ``FileNotFoundError``; unreadable or unrecognised files raise
  ``ValueError`` (``CheckpointError`` for the strict-mode key checks, also a ``ValueError``).

``save_weights(model, path, metadata=None)`` writes our format atomically (a temporary file in the
same folder, then ``os.replace``): the whole state dict (prototype buffers included) plus metadata
``format``, ``format_version``, ``config`` (JSON of the model config) and the user's entries (as strings).
``load_model(path)`` builds the model from that embedded config (checked field by field, then against the
tensors' shapes on the meta device, before anything is allocated) and loads it strictly. By convention
the metadata key ``classes`` holds the model's class list (``ClassList.to_json``); ``read_class_list``
returns it.

Modules
-------
* :mod:`.format`: our safetensors format (``save_weights``, ``read_class_list``, the metadata);
* :mod:`.segformer`: Hugging Face, NVlabs (mmseg 0.x) and mmseg 1.x SegFormer / MiT key maps;
* :mod:`.resnet`: the torchvision ResNet key map;
* :mod:`.keymap`: the renaming rules and the mapped state the converters share;
* :mod:`.files`: reading safetensors and PyTorch files safely (``weights_only``);
* :mod:`.loading`: format detection, checks against the model, ``load_weights``, ``load_model``, ``LoadReport``;
* :mod:`.shipped`: the checkpoints shipped in ``sdcpc_core/assets``;
* :mod:`.resolve`: the one way in for every entry point (node, ``sdcpc-bag``, ``sdcpc-eval``, ``sdcpc-export``,
  ``sdcpc-convert``, ``sdcpc-train --init-from``): ``open_model(path_or_name)`` builds the model of a shipped
  name, our checkpoint, a Hugging Face folder or an mmseg ``.pth`` (variant and class count inferred, class
  names kept) and says in one sentence what it loaded; ``inspect_weights`` reads without building.
"""
from .files import ACCEPTED_FORMATS
from .format import read_class_list, save_weights
from .loading import CLASS_KEYS, CheckpointError, LoadReport, load_model, load_weights
from .resolve import LoadedModel, WeightsInfo, inspect_weights, open_model
from .shipped import resolve_checkpoint, shipped_checkpoints

__all__ = ["ACCEPTED_FORMATS", "CLASS_KEYS", "CheckpointError", "LoadReport", "LoadedModel", "WeightsInfo",
           "inspect_weights", "load_model", "load_weights", "open_model", "read_class_list", "save_weights",
           "resolve_checkpoint", "shipped_checkpoints"]
