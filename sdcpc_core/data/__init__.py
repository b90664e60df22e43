"""Data: clip sampling, clip-consistent transforms and dataset readers (VSPW, Cityscapes, CamVid).

OpenCV (``cv2``) is needed by the transforms and readers; it is imported when they are.
"""

from .clips import DEFAULT_OFFSETS, ClipIndex, ClipSampler, reference_indices
from .synthetic import SYNTHETIC_CLASSES, SyntheticConfig, SyntheticDrive, SyntheticFrame, write_vspw

__all__ = ['DEFAULT_OFFSETS', 'ClipIndex', 'ClipSampler', 'reference_indices', 'SYNTHETIC_CLASSES',
           'SyntheticConfig', 'SyntheticDrive', 'SyntheticFrame', 'write_vspw']
