"""Runtime of SD-CPC outside training: streaming inference, back ends and export-ready programs.

``streaming`` runs the model frame by frame as the robot does (``StreamingSegmenter``: image in, label
map out), with its settings in ``config`` (``StreamingConfig``), its reference-frame policy in
``reference_cache`` (``ReferenceCache``: a time-keyed buffer of reference frames) and its image side
in ``image`` (``to_rgb``, ``ImageAdapter``: encodings, letterboxing, normalisation, label maps back at
camera size). ``backends`` puts the inference engines behind one interface (``create_backend``,
``available_backends``: eager PyTorch, ``torch.compile``, CUDA graphs, ONNX Runtime, TensorRT). ``programs`` wraps
the model's two streaming stages as modules with flat tensor inputs and outputs and static shapes
(``EncodeFrameProgram``, ``TemporalStepProgram``), exports them with ``torch.export``
(``export_programs``) and checks that an exported program has no symbolic shapes (``assert_static``).
These programs are the starting point of the ONNX (``onnx_export``, ``onnx_backend``) and TensorRT
(``tensorrt_backend``, ``tensorrt_plugin``) back ends.
"""
from .backends import available_backends, create_backend
from .config import StreamingConfig
from .image import ENCODINGS
from .programs import (
    ENCODE_OUTPUTS,
    PER_FRAME_OUTPUTS,
    TEMPORAL_INPUTS,
    TEMPORAL_OUTPUTS,
    EncodeFrameProgram,
    TemporalStepProgram,
    assert_static,
    encode_output_names,
    example_inputs,
    export_programs,
    static_shape_problems,
)
from .reference_cache import ReferenceCache
from .streaming import SegmentationResult, StreamingSegmenter

__all__ = [
    "ENCODE_OUTPUTS",
    "ENCODINGS",
    "PER_FRAME_OUTPUTS",
    "TEMPORAL_INPUTS",
    "TEMPORAL_OUTPUTS",
    "EncodeFrameProgram",
    "ReferenceCache",
    "SegmentationResult",
    "StreamingConfig",
    "StreamingSegmenter",
    "TemporalStepProgram",
    "assert_static",
    "available_backends",
    "create_backend",
    "encode_output_names",
    "example_inputs",
    "export_programs",
    "static_shape_problems",
]
