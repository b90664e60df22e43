"""Evaluation: confusion-matrix mIoU and VSPW video consistency (mVC)."""

from .metrics import VC_MODES, ConfusionMatrix, video_consistency

__all__ = ['ConfusionMatrix', 'video_consistency', 'VC_MODES']
