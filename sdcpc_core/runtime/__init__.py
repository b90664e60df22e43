"""Runtime of SD-CPC outside training: export-ready programs for streaming inference.

``export`` wraps the model's two streaming stages as modules with flat tensor inputs and outputs
and static shapes (``EncodeFrameProgram``, ``TemporalStepProgram``), exports them with
``torch.export`` (``export_programs``) and checks that an exported program has no symbolic shapes
(``assert_static``). These programs are the starting point of the ONNX and TensorRT back ends.
"""
from .export import (
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

__all__ = [
    "ENCODE_OUTPUTS",
    "PER_FRAME_OUTPUTS",
    "TEMPORAL_INPUTS",
    "TEMPORAL_OUTPUTS",
    "EncodeFrameProgram",
    "TemporalStepProgram",
    "assert_static",
    "encode_output_names",
    "example_inputs",
    "export_programs",
    "static_shape_problems",
]
