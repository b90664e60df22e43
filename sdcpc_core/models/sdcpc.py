"""The SD-CPC model: one definition for training, evaluation, streaming and export.

Static branch (per frame, run once and cached):
    backbone -> SegFormer head -> fused F4 ``(B, E, H/4, W/4)``;  X = avgpool2(F4) at 1/8;
    A = SSEA(X, per-level maps);  S = X + A;  static logits P = classifier(F4 + up2(A)), the classifier's
    dropout acting on F4 only (``_static_logits``: two formulations).
Temporal step (target frame, cached references):
    D = DSSA(S, ...refs)  (coarse selective + fine window attention, difference-gated);
    temporal logits T = P + up2(temporal_classifier(D)), computed without building D (``TemporalClassifier``).
Both A and D are zero at initialisation (zero-initialised scales), so a model loaded from SegFormer
weights predicts exactly what that SegFormer predicts; ``temporal=False`` builds SegFormer itself.

Inputs of any size >= 32 are zero-padded (after normalisation) to a multiple of 32 at the bottom
and right; logits are cropped back to ``ceil(H/4) x ceil(W/4)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import upsample_bilinear_add_
from ..ops.dispatch import builds_autograd_graph, eager_cpu_inference
from ..ops.gated_upsample import gated_upsample_add
from ..ops.pooled_softmax import pooled_softmax
from .decode_head import SegFormerHead
from .dssa import MAX_SELECTED_TOKENS, DynamicSemanticAlignment, TemporalClassifier
from .layers import ceil_div, init_weights, pad_to_multiple
from .mit import MIT_SPECS, MixVisionTransformer
from .prototypes import ClassPrototypes, ProjectionHead
from .resnet import DilatedResNet
from .ssea import StaticSemanticAlignment

BACKBONES = (*MIT_SPECS, "resnet101")
SIZE_MULTIPLE = 32
ALIGNMENTS = ("ssea", "dssa")  # the residual branches a test-time ablation can switch off


@dataclass(frozen=True)
class SDCPCConfig:
    """Hyper-parameters of one model; every field can be overridden in ``build_model``."""

    backbone: str  # mit_b0..mit_b5 or resnet101
    num_classes: int  # number of output classes K
    temporal: bool = True  # False builds the per-frame SegFormer baseline
    embed_dim: int = 256  # decoder width E
    classifier_dropout: float = 0.1  # dropout before the classifier (training only)
    drop_path_rate: float = 0.1  # stochastic depth of the MiT encoder
    ssea_grids: tuple[int, ...] = (1, 2, 4, 8)  # SSEA pooling grid sizes per level
    heads: int = 8  # attention heads of SSEA and of DSSA stage 1
    ssea_dim: int = 128  # SSEA query/key/value width
    window_heads: int = 4  # attention heads of DSSA stage 2 (window attention)
    window_dim: int = 64  # DSSA stage-2 query/key/value width (also what each frame caches as keys/values)
    window: int = 7  # DSSA stage-2 window size (odd)
    dilation: int = 1  # DSSA stage-2 window dilation
    coarse_tokens: int = 512  # DSSA stage-1 selected reference tokens (<= 3840)
    num_prototypes: int = 4  # MCP-CL prototypes per class
    proj_dim: int = 256  # MCP-CL embedding size
    prototype_momentum: float = 0.999  # MCP-CL prototype EMA momentum

    def __post_init__(self) -> None:
        checks = [
            ("backbone", self.backbone in BACKBONES, f"one of {', '.join(BACKBONES)}"),
            ("num_classes", isinstance(self.num_classes, int) and self.num_classes >= 1, "an integer >= 1"),
            ("embed_dim", self.embed_dim >= 8 and self.embed_dim % self.heads == 0,
             f"a multiple of heads ({self.heads})"),
            ("heads", self.heads >= 1, "an integer >= 1"),
            ("ssea_dim", self.ssea_dim >= 1 and self.ssea_dim % self.heads == 0, f"a multiple of heads ({self.heads})"),
            ("window_heads", self.window_heads >= 1, "an integer >= 1"),
            ("window_dim", self.window_dim >= 1 and self.window_dim % self.window_heads == 0,
             f"a multiple of window_heads ({self.window_heads})"),
            ("classifier_dropout", 0.0 <= self.classifier_dropout < 1.0, "in [0, 1)"),
            ("drop_path_rate", 0.0 <= self.drop_path_rate < 1.0, "in [0, 1)"),
            ("ssea_grids", len(self.ssea_grids) > 0 and all(g >= 1 for g in self.ssea_grids),
             "a non-empty list of integers >= 1"),
            ("window", self.window >= 1 and self.window % 2 == 1, "an odd integer >= 1"),
            ("dilation", self.dilation >= 1, "an integer >= 1"),
            ("coarse_tokens", 1 <= self.coarse_tokens <= MAX_SELECTED_TOKENS, f"in 1..{MAX_SELECTED_TOKENS}"),
            ("num_prototypes", self.num_prototypes >= 1, "an integer >= 1"),
            ("proj_dim", self.proj_dim >= 1, "an integer >= 1"),
            ("prototype_momentum", 0.0 <= self.prototype_momentum < 1.0, "in [0, 1)"),
        ]
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"SDCPCConfig.{name} must be {accepted}, got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class FrameCache:
    """What one frame leaves for the temporal step (batch B, padded size H x W).

    features: S ``(B, E, H/8, W/8)``; kv: reference keys/values ``(B, 2 window_dim, H/8, W/8)``;
    coarse: S pooled ``(B, E, H/32, W/32)``; probs: class probabilities ``(B, K, H/32, W/32)``;
    logits: static logits ``(B, K, ceil(H0/4), ceil(W0/4))`` of the unpadded size H0 x W0, only
    needed while the frame is the target (``without_logits`` drops them before caching). A per-frame
    model (no temporal part) fills in only the logits.
    """

    features: torch.Tensor | None
    kv: torch.Tensor | None
    coarse: torch.Tensor | None
    probs: torch.Tensor | None
    logits: torch.Tensor | None = None

    def without_logits(self) -> FrameCache:
        return FrameCache(self.features, self.kv, self.coarse, self.probs, None)


class ClipOutput(NamedTuple):
    """``forward_clip`` result for T frames (target last)."""

    static_logits: torch.Tensor  # (B, T, K, ceil(H/4), ceil(W/4))
    temporal_logits: torch.Tensor  # (B, K, ceil(H/4), ceil(W/4))
    embeddings: torch.Tensor | None  # (B, D, ceil(H/8), ceil(W/8)) unit-norm, None without temporal part


def _build_backbone(name: str, drop_path_rate: float) -> MixVisionTransformer | DilatedResNet:
    if name == "resnet101":
        return DilatedResNet((3, 4, 23, 3))
    return MixVisionTransformer(MIT_SPECS[name], drop_path_rate)


class SDCPC(nn.Module):
    """SD-CPC (``config.temporal``) or the per-frame SegFormer baseline built from the same parts."""

    def __init__(self, config: SDCPCConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _build_backbone(config.backbone, config.drop_path_rate)
        e, k = config.embed_dim, config.num_classes
        self.decode_head = SegFormerHead(self.backbone.out_channels, e, k, config.classifier_dropout)
        self.decode_head.apply(init_weights)
        if config.temporal:
            self.ssea = StaticSemanticAlignment(e, len(self.backbone.out_channels), config.ssea_grids, config.heads,
                                                config.ssea_dim)
            self.dssa = DynamicSemanticAlignment(e, config.heads, config.window, config.dilation, config.coarse_tokens,
                                                 config.window_heads, config.window_dim)
            self.temporal_classifier = TemporalClassifier(e, k, 1, bias=False)
            self.projector = ProjectionHead(e, config.proj_dim)
            for module in (self.ssea, self.dssa, self.temporal_classifier, self.projector):
                module.apply(init_weights)
            self.dssa.gate.reset_parameters()  # init_weights draws every convolution, this one included
            self.prototypes = ClassPrototypes(k, config.num_prototypes, config.proj_dim, config.prototype_momentum)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def is_temporal(self) -> bool:
        return self.config.temporal

    def zero_initialised_scales(self) -> list[nn.Parameter]:
        """``ssea.gamma``, ``dssa.gamma`` and the difference gate's weight: zero at initialisation, they
        make the temporal model start as its SegFormer (empty for the per-frame baselines)."""
        if not self.config.temporal:
            return []
        return [self.ssea.gamma, self.dssa.gamma, cast(nn.Parameter, self.dssa.gate.conv.weight)]

    def switch_off(self, alignment: str) -> None:
        """Test-time ablation: zeroes the residual scale of ``"ssea"`` or ``"dssa"``, so that branch adds
        nothing (SSEA off: the static logits are the SegFormer's; DSSA off: the temporal logits are the
        static ones). The other weights stay as trained."""
        if not self.config.temporal:
            raise ValueError(f"switching off {alignment!r} needs an SD-CPC model; this per-frame model has no "
                             "temporal part")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; choose from {', '.join(ALIGNMENTS)}")
        with torch.no_grad():
            getattr(self, alignment).gamma.zero_()

    # ------------------------------------------------------------------ static branch
    def encode_frame(self, image: torch.Tensor) -> FrameCache:
        """Static branch for normalised images ``(B, 3, H, W)``, H, W >= 32 (padded to multiples of 32)."""
        _check_images(image, 4)
        h0, w0 = image.shape[-2:]
        x = pad_to_multiple(image, SIZE_MULTIPLE)
        levels = self.backbone(x)
        fused = self.decode_head.fuse(levels)
        crop = (..., slice(0, ceil_div(h0, 4)), slice(0, ceil_div(w0, 4)))
        if not self.config.temporal:
            return FrameCache(None, None, None, None, self.decode_head.classify(fused)[crop])
        features, aligned = self.ssea(fused, levels, self.decode_head.linear_c)
        features = features + aligned
        logits = self._static_logits(fused, aligned)
        kv = self.dssa.fine.project_kv(features)
        probs = pooled_softmax(logits.detach(), 8)
        return FrameCache(features, kv, F.avg_pool2d(features, 4), probs, logits[crop])

    def _static_logits(self, fused: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        """classifier(F4 + up2(A)) ``(B, K, H/4, W/4)`` from the fused map F4 ``(B, E, H/4, W/4)`` and SSEA's
        residual A ``(B, E, H/8, W/8)``; the classifier's dropout acts on F4 only.

        | call | formulation |
        |---|---|
        | training (dropout), autograd, eager CPU inference | classifier(F4) + up2(W A) (a) |
        | otherwise (inference on a GPU, traced) | classifier(F4 + up2(A)), F4 updated in place (b) |

        (a): the 1x1 classifier and the upsampling commute, and on a CPU upsampling K class maps is far
        cheaper than E features; (b): two kernels fewer per frame.
        """
        if self.training or builds_autograd_graph(fused) or eager_cpu_inference(fused):
            logits = self.decode_head.classify(fused)
            correction = self.decode_head.classify_residual(aligned)
            return logits.add_(F.interpolate(correction, size=logits.shape[-2:], mode="bilinear",
                                             align_corners=False))
        return self.decode_head.classify(upsample_bilinear_add_(fused, aligned))

    # ---------------------------------------------------------------- temporal branch
    def temporal_features(
        self, current: FrameCache, ref_kv: torch.Tensor, ref_coarse: torch.Tensor, ref_probs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DSSA's attended values ``(B, window_dim, H/8, W/8)`` and gate ``(B, 1, H/32, W/32)``; references
        stacked on dim 1 (``(B, R, ...)``)."""
        return self.dssa(current.features, current.coarse, current.probs, ref_kv, ref_coarse, ref_probs)

    def temporal_logits(self, current: FrameCache, attended: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Static logits of the target plus the gated, classified temporal residual upsampled to them
        (``sdcpc_core.ops.gated_upsample``)."""
        correction = self.temporal_classifier(attended, self.dssa.fine.proj, self.dssa.gamma)
        assert current.logits is not None  # the target's static logits (checked by the callers)
        return gated_upsample_add(current.logits, correction, gate)

    def temporal_step(self, current: FrameCache, refs: Sequence[FrameCache]) -> torch.Tensor:
        """Logits ``(B, K, ceil(H/4), ceil(W/4))`` of the frame ``current`` given cached references.

        ``refs`` are ordered oldest first (t-9, t-6, t-3 by default); at a cold start pass the
        earliest frames available (duplicates allowed), as in training. Without the temporal part
        this returns the static logits.
        """
        if current.logits is None:
            raise ValueError("temporal_step needs the current frame's static logits; pass the FrameCache "
                             "returned by encode_frame, not one stripped by without_logits()")
        if not self.config.temporal:
            return current.logits
        if len(refs) == 0:
            raise ValueError("temporal_step needs at least one reference FrameCache (duplicate the current "
                             "frame at a cold start)")
        assert current.features is not None  # set by a temporal model's encode_frame
        for ref in refs:
            assert ref.features is not None
            if ref.features.shape != current.features.shape:
                raise ValueError(f"reference features {tuple(ref.features.shape)} do not match the current "
                                 f"frame's {tuple(current.features.shape)}; all frames must have one size")
        return self.temporal_logits(current, *self.temporal_features(current, *stack_references(refs)))

    # ------------------------------------------------------------------ clip / image
    def forward_clip(self, frames: torch.Tensor) -> ClipOutput:
        """frames ``(B, T, 3, H, W)`` normalised, target last; every frame goes through the backbone once.

        Frames are encoded one time step at a time (batch B), exactly as the streaming runtime does,
        so that ``encode_frame`` + ``temporal_step`` reproduce these logits bit for bit.
        """
        _check_images(frames, 5)
        caches = [self.encode_frame(frames[:, i]) for i in range(frames.shape[1])]
        # encode_frame always sets the logits
        static_logits = torch.stack(cast(list[torch.Tensor], [c.logits for c in caches]), dim=1)
        current = caches[-1]
        assert current.logits is not None
        if not self.config.temporal:
            return ClipOutput(static_logits, current.logits, None)
        refs = caches[:-1] or caches
        attended, gate = self.temporal_features(current, *stack_references(refs))
        logits = self.temporal_logits(current, attended, gate)
        h8, w8 = ceil_div(frames.shape[-2], 8), ceil_div(frames.shape[-1], 8)
        assert current.features is not None  # set by a temporal model's encode_frame
        embeddings = self.projector(current.features + self.dssa.residual(attended, gate))[..., :h8, :w8]
        return ClipOutput(static_logits, logits, embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor | ClipOutput:
        """``(B, 3, H, W)`` -> per-frame logits ``(B, K, H/4, W/4)``; ``(B, T, 3, H, W)`` -> ``forward_clip``."""
        if x.dim() == 5:
            return self.forward_clip(x)
        logits = self.encode_frame(x).logits
        assert logits is not None  # encode_frame always sets the logits
        return logits


def stack_references(refs: Sequence[FrameCache]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference tensors stacked on dim 1: kv ``(B, R, 2 window_dim, h8, w8)``, coarse, probs
    ``(B, R, ., h32, w32)``."""
    kv, coarse, probs = (torch.stack([getattr(r, name) for r in refs], dim=1) for name in ("kv", "coarse", "probs"))
    return kv, coarse, probs


def _check_images(x: torch.Tensor, rank: int) -> None:
    layout = "(B, 3, H, W)" if rank == 4 else "(B, T, 3, H, W)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"expected images of shape {layout}, got a tensor of rank {x.dim()} {tuple(x.shape)}")
    if x.shape[-3] != 3:
        raise ValueError(f"expected 3 colour channels (RGB, normalised) in {layout}, got {x.shape[-3]}")
    if x.shape[-2] < SIZE_MULTIPLE or x.shape[-1] < SIZE_MULTIPLE:
        raise ValueError(f"images must be at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixels, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    if not x.is_floating_point():
        raise ValueError(f"expected normalised floating-point images, got dtype {x.dtype}")
