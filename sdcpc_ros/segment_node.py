"""The SD-CPC segment node (executable ``segment_node``) and its managed variant (``segment_lifecycle_node``).

Topics (relative names: a namespace or a remapping moves them)::

    image                      sensor_msgs/Image in (rgb8, bgr8, rgba8, bgra8, mono8)
    image/compressed           sensor_msgs/CompressedImage in (jpeg, png), when use_compressed is true
    camera_info                sensor_msgs/CameraInfo in (optional; unless remapped, beside the image
                               topic: image remapped to /front/image_raw -> /front/camera_info)
    semantic_mask              sensor_msgs/Image, mono8 class ids (mono16 for more than 255 classes)
    semantic_mask/color        sensor_msgs/Image, rgb8 class colours          (publish_color)
    semantic_mask/confidence   sensor_msgs/Image, 32FC1 softmax probability   (publish_confidence)
    semantic_mask/dynamic      sensor_msgs/Image, mono8, 255 on dynamic_classes (publish_dynamic)
    semantic_mask/camera_info  sensor_msgs/CameraInfo scaled to the mask size
    semantic_mask/classes      std_msgs/String, latched: the class list as JSON (id, name, color)
    /diagnostics               diagnostic_msgs/DiagnosticArray at 1 Hz

Every output carries the input image's header (stamp and frame_id). The optional outputs are
computed only while someone subscribes to them. The class list is also the read-only parameter
``classes``. The parameters are those of ``NodeConfig`` (``config/segment.yaml``); invalid values
stop the node at start-up with the parameter's name and accepted values (exit status 2), logged under
the node's name and namespace; parameters the node does not have are warned about with the closest
names. The executables start in ``node_main``: SIGINT and SIGTERM stop the node cleanly (exit status
0) at any moment, the worker before the ROS context, and a second signal during the stop is ignored.

``SegmentNode`` loads the model and subscribes when it is created. ``SegmentLifecycleNode`` is a
managed node: ``configure`` loads the model and creates the publishers, ``activate`` subscribes,
``deactivate`` unsubscribes, ``cleanup`` frees the model. Its parameters can be changed while it
is unconfigured and apply at the next ``configure``.

Only rclpy APIs available since ROS 2 Humble are used.
"""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from sdcpc_core.classes import ClassList
from sdcpc_core.runtime.backends import backend_options
from sdcpc_core.runtime.streaming import StreamingSegmenter
from sdcpc_core.weights.resolve import LoadedModel, open_model

from .diagnostics import NodeStats, diagnostic_status
from .parameters import (
    DEFAULT_INPUT_SIZE,
    NodeConfig,
    ParameterError,
    declare_parameters,
    latched_qos,
    qos_profile,
    read_parameters,
    unknown_parameters,
)
from .pipeline import Outputs, SegmentPipeline

NODE_NAME = "segment_node"
LIFECYCLE_NODE_NAME = "segment_lifecycle_node"
IMAGE_TOPIC = "image"
COMPRESSED_TOPIC = "image/compressed"
CAMERA_INFO_TOPIC = "camera_info"
MASK_TOPIC = "semantic_mask"
COLOR_TOPIC = "semantic_mask/color"
CONFIDENCE_TOPIC = "semantic_mask/confidence"
DYNAMIC_TOPIC = "semantic_mask/dynamic"
MASK_INFO_TOPIC = "semantic_mask/camera_info"
CLASSES_TOPIC = "semantic_mask/classes"
DIAGNOSTICS_TOPIC = "/diagnostics"
CLASSES_PARAMETER = "classes"
DIAGNOSTICS_PERIOD_S = 1.0
OUTPUT_ACK_TIMEOUT_S = 0.5  # per output publisher at a stop: reliable subscribers acknowledge the last masks


class StartupError(ValueError):
    """The node cannot start with its parameters (model, device, class list); one sentence says why."""


def load_segmenter(config: NodeConfig) -> tuple[StreamingSegmenter, ClassList]:
    """The segmenter and class list that ``config`` asks for; ``StartupError`` naming the parameter at fault."""
    _check_device(config.device)
    try:
        loaded = open_model(config.model, class_hint="the class_palette_file parameter")
    except (OSError, ValueError) as error:
        raise StartupError(f"parameter 'model' ({config.model!r}): {error}") from None
    try:
        segmenter = StreamingSegmenter(
            loaded.model, backend=config.backend, device=config.device, precision=config.precision,
            input_size=network_input_size(config, loaded), reference_offsets=config.reference_offsets,
            frame_period_s=config.frame_period_s, max_gap_s=config.max_gap_s,
            output_resolution=config.output_resolution, smoothing=config.smoothing,
            backend_options=backend_options(config.backend, compile_mode=config.compile_mode,
                                            fused_window_attention=config.fused_window_attention))
    except (ValueError, ImportError, RuntimeError) as error:
        raise StartupError(f"parameters backend ({config.backend}), device ({config.device}) and precision "
                           f"({config.precision}): {error}") from None
    segmenter.loaded = loaded
    try:
        if config.class_palette_file:
            classes, source = ClassList.load(config.class_palette_file), config.class_palette_file
        else:
            classes, source = loaded.classes, str(loaded.info.path)
    except (OSError, ValueError) as error:
        raise StartupError(f"parameter 'class_palette_file': {error}") from None
    if len(classes) != segmenter.num_classes:
        raise StartupError(f"parameter 'class_palette_file': the class list of {source} has {len(classes)} classes "
                           f"but the model predicts {segmenter.num_classes}; give a list with "
                           f"{segmenter.num_classes} classes")
    return segmenter, classes


def network_input_size(config: NodeConfig, loaded: LoadedModel) -> tuple[int, int]:
    """The input_height x input_width parameters; where one is unset (0), the checkpoint's recommended size
    (the scale it was trained at), else ``DEFAULT_INPUT_SIZE``."""
    if all(config.input_size):
        return config.input_size
    return loaded.input_size or DEFAULT_INPUT_SIZE


def input_size_note(config: NodeConfig, loaded: LoadedModel, size: tuple[int, int]) -> str:
    """``network input 256x480 (the checkpoint's recommended size)``: the size used and where it comes from."""
    if all(config.input_size):
        source = "the input_height and input_width parameters"
    elif loaded.input_size:
        source = "the checkpoint's recommended size; set input_height and input_width to change it"
    else:
        source = "the default: the checkpoint recommends none; set input_height and input_width to change it"
    return f"network input {size[0]}x{size[1]} ({source})"


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise StartupError(f"parameter 'device' is {device!r} but this machine has {count} usable CUDA device(s) "
                           f"(torch {torch.__version__}); use cpu" + (f" or cuda:0..cuda:{count - 1}" if count else ""))


def camera_info_topic(node: Node, image_topic: str, compressed: bool) -> str:
    """The camera_info topic: ``camera_info`` where a remapping names it, else the image topic's sibling
    (``/front/image_raw`` or ``/front/image_raw/compressed`` -> ``/front/camera_info``), the
    image_transport convention, so that remapping ``image`` alone finds the camera's calibration."""
    resolve = getattr(node, "resolve_topic_name", None)
    if resolve is None:  # an rclpy without it: the relative name, which remappings still move
        return CAMERA_INFO_TOPIC
    remapped = resolve(CAMERA_INFO_TOPIC)
    if remapped != resolve(CAMERA_INFO_TOPIC, only_expand=True):
        return remapped
    base = image_topic.removesuffix("/compressed") if compressed else image_topic
    return f"{base.rpartition('/')[0]}/{CAMERA_INFO_TOPIC}"


class SegmentRuntime:
    """What a configured node runs: the model, the publishers, the diagnostics timer; ``activate``
    subscribes and starts the worker, ``deactivate`` undoes that, ``destroy`` frees everything."""

    def __init__(self, node: Node, config: NodeConfig) -> None:
        self.node = node
        self.config = config
        self.segmenter, self.classes = load_segmenter(config)
        logger = node.get_logger()
        logger.info(f"{self.segmenter.loaded.message[0].upper()}{self.segmenter.loaded.message[1:]}.")
        note = input_size_note(config, self.segmenter.loaded, self.segmenter.config.input_size)
        logger.info(f"{note[0].upper()}{note[1:]}.")
        if self.segmenter.loaded.demo:
            logger.warning(f"{config.model} is {self.segmenter.loaded.demo}: expect wrong classes on real camera "
                           f"images; set the parameter 'model' to your own weights (a Hugging Face SegFormer "
                           f"folder, an mmseg .pth or an sdcpc checkpoint).")
        self.stats = NodeStats(frame_period_s=config.frame_period_s, max_gap_s=config.max_gap_s)
        self.dynamic_ids = self._dynamic_ids()
        output_qos = qos_profile(config.output_qos, config.output_qos_depth)

        def optional(wanted: bool, topic: str):
            return node.create_publisher(Image, topic, output_qos) if wanted else None

        self.outputs = Outputs(
            mask=node.create_publisher(Image, MASK_TOPIC, output_qos),
            color=optional(config.publish_color, COLOR_TOPIC),
            confidence=optional(config.publish_confidence, CONFIDENCE_TOPIC),
            dynamic=optional(config.publish_dynamic, DYNAMIC_TOPIC),
            camera_info=node.create_publisher(CameraInfo, MASK_INFO_TOPIC, output_qos))
        self._classes_publisher = node.create_publisher(String, CLASSES_TOPIC, latched_qos())
        self._classes_publisher.publish(String(data=self.classes.to_json()))
        self._diagnostics_publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._timer = node.create_timer(DIAGNOSTICS_PERIOD_S, self.publish_diagnostics)
        self._status_name = f"{node.get_namespace().rstrip('/')}/{node.get_name()}: semantic segmentation"
        self.pipeline: SegmentPipeline | None = None
        self._subscriptions = []

    def _dynamic_ids(self) -> list[int]:
        if not self.config.publish_dynamic:
            return []
        names = self.classes.names
        unknown = [name for name in self.config.dynamic_classes if name not in names]
        if unknown:
            self.node.get_logger().warning(
                f"dynamic_classes {', '.join(unknown)} are not classes of this model and are ignored; its classes: "
                f"{', '.join(names)}")
        return [names.index(name) for name in self.config.dynamic_classes if name in names]

    @property
    def active(self) -> bool:
        return self.pipeline is not None

    def activate(self) -> None:
        """Starts the worker and subscribes to the images and camera_info."""
        if self.active:
            return
        config, node = self.config, self.node
        self.pipeline = SegmentPipeline(
            self.segmenter, self.classes, self.outputs, self.stats, node.get_logger(),
            lambda: node.get_clock().now().nanoseconds, dynamic_ids=self.dynamic_ids,
            compressed=config.use_compressed, max_pixels=config.max_image_pixels,
            capacity=config.queue_size if config.process_every_frame else 1,
            max_queue_bytes=config.queue_limit_mib * 2**20)
        self.pipeline.start()
        message_type, topic = (CompressedImage, COMPRESSED_TOPIC) if config.use_compressed else (Image, IMAGE_TOPIC)
        images = node.create_subscription(message_type, topic, self.pipeline.submit,
                                          qos_profile(config.input_qos, config.input_qos_depth))
        # best effort matches reliable and best-effort camera_info publishers alike
        self._subscriptions = [images, node.create_subscription(
            CameraInfo, camera_info_topic(node, images.topic_name, config.use_compressed),
            self.pipeline.set_camera_info, qos_profile("sensor_data", 1))]
        node.get_logger().info(
            f"Segmenting {images.topic_name} (camera_info {self._subscriptions[1].topic_name}) with "
            f"{config.model} ({len(self.classes)} classes, "
            f"backend {config.backend}, device {config.device}, {config.precision}, input "
            f"{'x'.join(map(str, self.segmenter.config.input_size))}).")

    def deactivate(self) -> None:
        """Unsubscribes and stops the worker; the temporal memory is cleared."""
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
            self.segmenter.reset("the node was deactivated")

    def publish_diagnostics(self) -> None:
        status = diagnostic_status(self.stats.snapshot(), self._status_name, self.config.device,
                                   self.config.backend, self.active)
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(array)

    def destroy(self) -> None:
        """Deactivates, gives subscribers a moment to acknowledge the last masks (a stop right after a
        frame must not drop it), then releases the publishers, the timer and the model."""
        self.deactivate()
        node = self.node
        node.destroy_timer(self._timer)
        for publisher in vars(self.outputs).values():
            if publisher is not None:
                publisher.wait_for_all_acked(Duration(seconds=OUTPUT_ACK_TIMEOUT_S))
        for publisher in (*vars(self.outputs).values(), self._classes_publisher, self._diagnostics_publisher):
            if publisher is not None:
                node.destroy_publisher(publisher)
        device = self.segmenter.device
        self.segmenter = None
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


class _SegmentNodeBase:
    """Shared by both node flavours: parameters, the ``classes`` parameter, the runtime."""

    runtime: SegmentRuntime | None = None
    _managed = False  # True: parameters stay writable between cleanup and configure
    _writing_classes = False  # the node itself is setting the read-only 'classes' parameter

    @contextmanager
    def _releasing_on_failure(self):
        """Around a node's start: a refused parameter or model is logged under the node's own name and
        namespace (one sentence); on any failure, a stop signal included, the node is released and the
        error re-raised."""
        try:
            yield
        except BaseException as error:
            if isinstance(error, (ParameterError, StartupError)):
                self.get_logger().fatal(f"Cannot start: {error}")
            self.destroy_node()
            raise

    def _setup(self) -> NodeConfig:
        given = getattr(self, "_parameter_overrides", {})  # -p, --params-file, parameter_overrides
        for warning in unknown_parameters(given, self.get_name()):
            self.get_logger().warning(warning)
        config = declare_parameters(self, read_only=not self._managed)
        self.declare_parameter(CLASSES_PARAMETER, "", ParameterDescriptor(
            description="The model's class list as JSON (id, name, color); set by the node, read only.",
            additional_constraints="read only"))
        self.add_on_set_parameters_callback(self._on_set_parameters)  # after declaring: it guards 'classes'
        return config

    def _start(self, config: NodeConfig) -> None:
        self.runtime = SegmentRuntime(self, config)
        self._writing_classes = True
        try:
            self.set_parameters([Parameter(CLASSES_PARAMETER, value=self.runtime.classes.to_json())])
        finally:
            self._writing_classes = False

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        names = {p.name for p in parameters}
        if CLASSES_PARAMETER in names and not self._writing_classes:
            return SetParametersResult(successful=False, reason=f"'{CLASSES_PARAMETER}' is set by the node")
        names.discard(CLASSES_PARAMETER)
        if not names:
            return SetParametersResult(successful=True)
        if self.runtime is not None:
            return SetParametersResult(successful=False, reason="parameters apply when the node is configured; "
                                                                "clean it up (lifecycle cleanup) first")
        try:
            read_parameters(self, parameters)
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _free(self) -> None:
        if self.runtime is not None:
            self.runtime.destroy()
            self.runtime = None


class SegmentNode(_SegmentNodeBase, Node):
    """The plain node: parameters are read, the model loaded and the image topic subscribed at creation.

    Raises ``ParameterError`` / ``StartupError`` when it cannot start, after logging why under its own
    name and namespace and releasing the node. ``kwargs`` go to ``rclpy.node.Node`` (namespace,
    context, parameter_overrides, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        with self._releasing_on_failure():
            self._start(self._setup())
            self.runtime.activate()

    def destroy_node(self) -> None:
        self._free()
        super().destroy_node()


class SegmentLifecycleNode(_SegmentNodeBase, LifecycleNode):
    """The managed node: configure loads the model, activate subscribes, deactivate stops, cleanup frees."""

    _managed = True

    def __init__(self, node_name: str = LIFECYCLE_NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        with self._releasing_on_failure():
            self._setup()
        self.get_logger().info("Unconfigured: configure loads the model, activate subscribes.")

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._start(read_parameters(self))
        except (ParameterError, StartupError) as error:
            self.get_logger().error(f"Cannot configure: {error}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.runtime.activate()
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.runtime.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._free()
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._free()
        return super().on_shutdown(state)

    def destroy_node(self) -> None:
        self._free()
        super().destroy_node()


SPIN_PERIOD_S = 0.1  # the executor waits this long at most, so a stop signal is handled within it


def _init(args) -> None:
    """``rclpy.init`` without rclpy's signal handlers (``node_main`` has its own: rclpy's would shut the
    context down before the worker stops); ``StartupError`` for unparsable ROS arguments."""
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.logging import LoggingSeverity, get_logger_level, set_logger_level
    from rclpy.signals import SignalHandlerOptions

    set_logger_level("rcl", LoggingSeverity.FATAL)  # its "Failed to parse global arguments" repeats ours
    unknown = getattr(rclpy_implementation, "UnknownROSArgsError", RuntimeError)
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except unknown as error:
        names = re.findall(r"'((?:[^'\\]|\\.)*)'", str(error)) or [str(error)]  # str(error) is "['a', 'b']"
        raise StartupError(f"the ROS arguments cannot be used: unknown ROS argument(s) {' '.join(names)} after "
                           "--ros-args (quote a value with spaces)") from None
    except getattr(rclpy_implementation, "RCLError", RuntimeError) as error:
        reason = re.sub(r",? at [^,]*:\d+", "", str(error)).removeprefix("failed to initialize rcl: ")
        raise StartupError(f"the ROS arguments cannot be used: {' '.join(reason.split())}; see "
                           "https://docs.ros.org/en/rolling/How-To-Guides/Node-arguments.html") from None
    if get_logger_level("rcl") == LoggingSeverity.FATAL:  # not set by --log-level: back to the default
        set_logger_level("rcl", LoggingSeverity.UNSET)


def run_node(node_class, args=None, signals=None) -> int:
    """Runs a node of ``node_class`` until a stop signal (``node_main.StopSignals``); returns the exit status:
    0 after a stop, 2 when it cannot start (one sentence logged). The worker is stopped and the node
    destroyed before the context is shut down, and no signal interrupts that."""
    from .node_main import StopRequested

    node = None
    try:  # rclpy.init inside: a stop that arrives right after it still shuts the context down
        try:
            _init(args)
        except StartupError as error:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"Cannot start: {error}")
            return 2
        node = node_class()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (ParameterError, StartupError):  # logged by the node
        return 2
    except (StopRequested, KeyboardInterrupt, ExternalShutdownException) as stop:
        if node is not None:
            node.get_logger().info(f"Stopping ({stop or 'shutdown'}).")
    finally:
        if signals is not None:
            signals.stopping()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args=None) -> int:
    """Entry point of ``segment_node`` (``node_main.main``: signals are handled from its first line)."""
    from .node_main import main as node_main

    return node_main(args)


def lifecycle_main(args=None) -> int:
    """Entry point of ``segment_lifecycle_node``."""
    from .node_main import lifecycle_main as node_main

    return node_main(args)


if __name__ == "__main__":
    sys.exit(main())
