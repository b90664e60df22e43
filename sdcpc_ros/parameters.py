"""Parameters of the segment node: one typed table, ROS descriptors derived from it, validation.

``NodeConfig`` lists every parameter with its default (the same as ``config/segment.yaml``, which is
tested) and its accepted values. ``declare_parameters(node, read_only)`` declares them on a node
with descriptors (type, description, accepted values, integer / floating-point ranges) and
returns the validated ``NodeConfig``; a value that is refused raises ``ParameterError`` naming the
parameter and what it accepts, before anything else starts. ``qos_profile(name, depth)`` turns
the QoS parameters into profiles.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from sdcpc_core.eval.smoothing import SMOOTHING_SYNTAX, is_smoothing
from sdcpc_core.models.sdcpc import SIZE_MULTIPLE
from sdcpc_core.runtime.backends import BACKENDS, PRECISIONS
from sdcpc_core.runtime.image import OUTPUT_RESOLUTIONS
from sdcpc_core.runtime.torch_backends import COMPILE_MODES

QOS_NAMES = ("sensor_data", "default", "reliable")
# Parameters that rclpy or the node itself declare besides NodeConfig's, and prefixes of rclpy's families.
_OTHER_PARAMETERS = ("classes", "use_sim_time", "start_type_description_service", "start_parameter_event_publisher")
_OTHER_PREFIXES = ("qos_overrides.",)
MAX_INPUT_SIDE = 8192
DEFAULT_INPUT_SIZE = (480, 864)  # network input when neither the parameters nor the checkpoint give one
_INPUT_SIDE_ACCEPTED = (f"0 (the checkpoint's recommended size) or a multiple of {SIZE_MULTIPLE} in "
                        f"{SIZE_MULTIPLE}..{MAX_INPUT_SIDE}")
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


class ParameterError(ValueError):
    """A parameter value that the node refuses; the message names the parameter and the accepted values."""


def _param(default, description: str, *, choices=None, low=None, high=None, step=None, accepted=None):
    """A ``NodeConfig`` field: default, one-line meaning and the accepted values (range or choices)."""
    return field(default=default, metadata={"description": description, "choices": choices, "low": low,
                                            "high": high, "step": step, "accepted": accepted})


@dataclass(frozen=True)
class NodeConfig:
    """Every parameter of the segment node; invalid values raise ``ParameterError`` naming the parameter."""

    model: str = _param("sdcpc_b0_synthetic", "Shipped model name (e.g. sdcpc_b0_synthetic) or checkpoint path "
                        "(.safetensors).", accepted="a shipped model name or a checkpoint path (non-empty)")
    backend: str = _param("eager", "Inference backend.", choices=tuple(BACKENDS))
    device: str = _param("cpu", "Inference device.", accepted="cpu, cuda or cuda:N (N = GPU index)")
    precision: str = _param("fp32", "Arithmetic precision (fp16 needs CUDA).", choices=tuple(PRECISIONS))
    compile_mode: str = _param("", "torch.compile mode of the compile backend: empty (inductor's default), default, "
                               "reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs.",
                               choices=("", *COMPILE_MODES),
                               accepted="empty (inductor's default) or one of " + ", ".join(COMPILE_MODES))
    fused_window_attention: bool = _param(True, "Run DSSA's window attention and the temporal step's other fused "
                                          "ops as Triton kernels on CUDA (eager, compile and cudagraph backends); "
                                          "false: plain PyTorch operators. SDCPC_FUSED_WINDOW=0 in the environment "
                                          "turns them off too.")
    input_height: int = _param(0, "Network input height in pixels; 0 (with input_width 0): the checkpoint's "
                               "recommended size (the shipped sdcpc_b0_synthetic: 256x480; a checkpoint without one: "
                               f"{DEFAULT_INPUT_SIZE[0]}x{DEFAULT_INPUT_SIZE[1]}).", low=0, high=MAX_INPUT_SIDE,
                               step=SIZE_MULTIPLE, accepted=_INPUT_SIDE_ACCEPTED)
    input_width: int = _param(0, "Network input width in pixels; 0 (with input_height 0): the checkpoint's "
                              "recommended size.", low=0, high=MAX_INPUT_SIDE, step=SIZE_MULTIPLE,
                              accepted=_INPUT_SIDE_ACCEPTED)
    reference_offsets: tuple[int, ...] = _param((9, 6, 3), "Offsets (in frame periods) of the past reference "
                                                "frames, farthest first.", low=1, high=1000)
    frame_period_s: float = _param(0.0333, "Nominal time between camera frames in seconds.", low=0.001, high=10.0)
    max_gap_s: float = _param(1.0, "A larger gap between images (seconds), or a jump back in time, resets the "
                              "temporal memory.", low=0.001, high=3600.0)
    output_resolution: str = _param("camera", "Resolution of the published masks: camera (input image size) or "
                                    "network (the network's 1/4 output of the image area).",
                                    choices=OUTPUT_RESOLUTIONS)
    smoothing: str = _param("none", "Temporal smoothing of the class probabilities over the processed frames, a "
                            "cheap consistency filter for per-frame models (for SD-CPC models it applies on top of "
                            "the temporal step): none, ema:A (moving average, weight A of the newest frame) or "
                            "window (mean over the frame and its reference_offsets).", accepted=SMOOTHING_SYNTAX)
    publish_color: bool = _param(True, "Publish semantic_mask/color (rgb8 class colours).")
    publish_confidence: bool = _param(False, "Publish semantic_mask/confidence (32FC1 softmax probability).")
    publish_dynamic: bool = _param(True, "Publish semantic_mask/dynamic (mono8, 255 on dynamic classes).")
    dynamic_classes: tuple[str, ...] = _param(
        ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
        "Class names counted as dynamic (possibly moving) objects; names the model lacks are ignored.",
        accepted="a non-empty list of class names")
    use_compressed: bool = _param(False, "Subscribe to sensor_msgs/CompressedImage on image/compressed instead of "
                                  "sensor_msgs/Image on image.")
    process_every_frame: bool = _param(False, "true: queue frames (up to queue_size, then the oldest are dropped); "
                                       "false: process the newest frame, drop the ones that arrived meanwhile.")
    queue_size: int = _param(30, "Most frames waiting for inference when process_every_frame is true.", low=1,
                             high=10000)
    queue_limit_mib: int = _param(256, "Most memory (MiB of image data) the frames waiting for inference may hold; "
                                  "beyond it the oldest are dropped, whatever queue_size allows (the newest frame is "
                                  "always kept).", low=1, high=1048576)
    input_qos: str = _param("sensor_data", "QoS of the image subscription.", choices=QOS_NAMES)
    input_qos_depth: int = _param(5, "History depth of the image subscription.", low=1, high=10000)
    output_qos: str = _param("default", "QoS of the published topics.", choices=QOS_NAMES)
    output_qos_depth: int = _param(5, "History depth of the published topics.", low=1, high=10000)
    class_palette_file: str = _param("", "Class list YAML file (or shipped list name, e.g. cityscapes) with the "
                                     "class names and colours; empty: the model's own list.",
                                     accepted="empty, a shipped class list name or a YAML file path")
    max_image_pixels: int = _param(33177600, "Images with more pixels than this are refused.", low=1,
                                   high=2 ** 31 - 1)

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = _checked(spec, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        if (self.input_height == 0) != (self.input_width == 0):
            raise ParameterError(f"parameters 'input_height' and 'input_width' must both be 0 (the checkpoint's "
                                 f"recommended size) or both be set; got {self.input_height}x{self.input_width}")
        if self.precision == "fp16" and self.device == "cpu":
            raise ParameterError("parameter 'precision' fp16 needs a CUDA device but parameter 'device' is cpu; use "
                                 "fp32 or bf16 on the CPU")

    @property
    def input_size(self) -> tuple[int, int]:
        """(input_height, input_width); (0, 0) means the checkpoint's recommended size
        (``segment_node.network_input_size``)."""
        return self.input_height, self.input_width

    @classmethod
    def names(cls) -> list[str]:
        return [spec.name for spec in fields(cls)]


def _kind(spec) -> str:
    """``bool``, ``int``, ``float``, ``str``, ``int[]`` or ``str[]`` from the field's default."""
    default = spec.default
    if isinstance(default, tuple):
        return f"{type(default[0]).__name__}[]"
    return type(default).__name__


def accepted_values(spec) -> str:
    """The accepted values of a ``NodeConfig`` field, as a phrase (``an integer in 1..10000``)."""
    meta = spec.metadata
    if meta["accepted"]:
        return meta["accepted"]
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    kind = _kind(spec)
    if kind == "bool":
        return "true or false"
    if kind == "int[]":
        return f"a non-empty list of distinct integers in {meta['low']}..{meta['high']}"
    noun = "an integer" if kind == "int" else "a number"
    text = f"{noun} in {meta['low']}..{meta['high']}"
    return text + (f", a multiple of {meta['step']}" if meta["step"] else "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(spec, value):
    """The value normalised (lists -> tuples, ints -> floats for numbers), or ``ParameterError``."""
    meta, kind = spec.metadata, _kind(spec)
    ok = True
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = _is_int(value) and meta["low"] <= value <= meta["high"] and (not meta["step"] or value % meta["step"] == 0)
    elif kind == "float":
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and \
            meta["low"] <= value <= meta["high"]
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str) and (not meta["choices"] or value in meta["choices"])
        if spec.name == "model":
            ok = ok and bool(value.strip())
        elif spec.name == "device":
            ok = ok and bool(_DEVICE.match(value))
        elif spec.name == "smoothing":
            ok = ok and is_smoothing(value)
    else:  # lists
        items = tuple(value) if isinstance(value, (list, tuple)) else None
        if kind == "int[]":
            ok = bool(items) and all(_is_int(v) and meta["low"] <= v <= meta["high"] for v in items) and \
                len(set(items)) == len(items)
        else:
            ok = bool(items) and all(isinstance(v, str) and v.strip() for v in items)
        value = items if ok else value
    if not ok:
        raise ParameterError(f"parameter '{spec.name}' must be {accepted_values(spec)}; got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- ROS
_ROS_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
              "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
              "int[]": ParameterType.PARAMETER_INTEGER_ARRAY, "str[]": ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(name: str, read_only: bool = False) -> ParameterDescriptor:
    """The ROS parameter descriptor of ``NodeConfig`` field ``name``: type, description, range."""
    spec = {s.name: s for s in fields(NodeConfig)}[name]
    meta, kind = spec.metadata, _kind(spec)
    result = ParameterDescriptor(name=name, type=_ROS_TYPES[kind], description=meta["description"],
                                 additional_constraints=accepted_values(spec), read_only=read_only)
    if kind == "int":
        result.integer_range = [IntegerRange(from_value=meta["low"], to_value=meta["high"], step=meta["step"] or 0)]
    elif kind == "float":
        result.floating_point_range = [FloatingPointRange(from_value=meta["low"], to_value=meta["high"], step=0.0)]
    return result


def declare_parameters(node, read_only: bool = True) -> NodeConfig:
    """Declares every ``NodeConfig`` parameter on ``node`` (defaults, or the values given at start-up)
    and returns them validated; ``ParameterError`` names the first refused one."""
    defaults = NodeConfig()
    for spec in fields(NodeConfig):
        default = getattr(defaults, spec.name)
        try:
            node.declare_parameter(spec.name, list(default) if isinstance(default, tuple) else default,
                                   descriptor(spec.name, read_only))
        except ParameterException as error:  # wrong type or out of the descriptor's range
            raise ParameterError(f"parameter '{spec.name}' must be {accepted_values(spec)} ({error})") from None
    return read_parameters(node)


def read_parameters(node, changes=()) -> NodeConfig:
    """The node's current parameter values (with ``changes``, rclpy ``Parameter`` objects, applied) as a
    validated ``NodeConfig``."""
    values = {name: _value(node, name) for name in NodeConfig.names()}
    values.update({p.name: p.value for p in changes if p.name in values})
    for name, value in values.items():  # rclpy may hand arrays back as array.array
        if not isinstance(value, (bool, int, float, str, list, tuple)):
            values[name] = list(value)
    return NodeConfig(**values)


def _value(node, name: str):
    """A parameter's value; an empty list given on the command line (``-p name:=[]``) leaves the parameter
    without a type in rclpy, which refuses to read it: it is read as that empty list, which ``NodeConfig``
    then refuses with the accepted values."""
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return []


def unknown_parameters(given: Iterable[str], node_name: str) -> list[str]:
    """One warning per name of ``given`` (the parameters a node was started with) that is not a
    parameter of the segment node, naming the closest known ones; rclpy ignores them silently."""
    known = [*NodeConfig.names(), *_OTHER_PARAMETERS]
    warnings = []
    for name in sorted(set(given) - set(known)):
        if name.startswith(_OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {_either(close)}?" if close else f"its parameters: {', '.join(NodeConfig.names())}"
        warnings.append(f"parameter '{name}' is not a parameter of {node_name} and is ignored; {hint}")
    return warnings


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def qos_profile(name: str, depth: int) -> QoSProfile:
    """``sensor_data``: best effort, keep last ``depth``; ``default``: reliable, keep last ``depth``;
    ``reliable``: reliable, keep all (nothing is overwritten before the node takes it; ``depth`` unused)."""
    if name not in QOS_NAMES:
        raise ParameterError(f"QoS {name!r} is not known; accepted: {', '.join(QOS_NAMES)}")
    if name == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: late subscribers get the last message (the class list)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


__all__ = ["DEFAULT_INPUT_SIZE", "NodeConfig", "ParameterError", "QOS_NAMES", "accepted_values", "declare_parameters",
           "descriptor", "latched_qos", "qos_profile", "read_parameters", "unknown_parameters"]
