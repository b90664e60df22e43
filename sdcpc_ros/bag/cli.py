"""``sdcpc-bag``: write, evaluate and play rosbag2 bags (no ``ros2 bag`` needed).

Examples::

    sdcpc-bag synth drive.mcap [--frames 300] [--size 240x480] [--format rgb8|bgr8|jpeg]
                               [--storage mcap|sqlite3] [--distro humble|jazzy|kilted] [--seed 0]
    sdcpc-bag eval drive.mcap [--image-topic /camera/image_raw] [--label-topic /camera/labels]
                              [--model sdcpc_b0_synthetic] [--input-size 480x864] [--params-file segment.yaml]
                              [--out drive_eval] [--consistency-mode vspw|corrected] [--overwrite]
                              [--smoothing none|ema:A|window[:O1,O2,..]]
    sdcpc-bag eval drive.mcap --live [--rate 1.0] [--wait 30]      # segment_node must be running
    sdcpc-bag play drive.mcap [--rate 1.0] [--loop] [--remap /camera/image_raw:=/image] [--topics ...]

``synth`` writes a synthetic drive (``sdcpc_ros.bag.synth``). ``eval`` runs every frame through the
segment node's pipeline offline (``sdcpc_ros.bag.offline``), or with ``--live`` plays the bag to a
running node and scores what it publishes (``sdcpc_ros.bag.live``); both write ``OUT/report/`` and
``OUT/semantic_mask.mcap`` (``--out`` defaults to ``<bag>_eval`` or ``<bag>_live`` beside the bag).
``play`` publishes a bag with its recorded timing (``sdcpc_ros.bag.play``).

Offline, the node's parameters come from ``--params-file`` (a ROS 2 parameter file such as
``config/segment.yaml``; the ``ros__parameters`` of ``/**`` or ``segment_node``), then the options
``--model``, ``--backend``, ``--device``, ``--precision``, ``--input-size`` and ``--smoothing`` (the
node's training-free temporal smoothing, ``sdcpc_core.eval.smoothing``: e.g. ``ema:0.5`` or ``window``)
override them. Without ``--input-size`` and without ``input_height`` / ``input_width`` in the parameter file (or
with them 0, as in ``config/segment.yaml``), the network input is the checkpoint's recommended size, as in the node.

``eval`` locks its output folder for the run (a second ``eval`` on it is refused), builds the bag and
the report in a staging folder inside it and publishes them only when the run succeeded, the bag
first and the report last (``sdcpc_core.atomic_files.publish_entries``): a failed ``--overwrite`` run
keeps the previous outputs, a failed run into a new folder leaves nothing, and leftovers of killed
runs are removed. Existing outputs are refused without ``--overwrite``. ``--domain-id`` takes
0..232 (the DDS default port mapping has no ports above). User mistakes (a missing topic, a damaged
bag, an unsupported encoding, an existing or busy output, a bad option or remap rule) are one
sentence on stderr with exit status 2; Ctrl-C gives 130.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

PROG = "sdcpc-bag"
OFFLINE_OPTIONS = ("model", "backend", "device", "precision", "input_size", "params_file", "smoothing")
LIVE_OPTIONS = ("rate", "wait", "settle", "classes", "domain_id")
_PARAMETER_SECTIONS = ("/**", "**", "segment_node", "/segment_node")
Command = Callable[[argparse.Namespace], int]  # a tool's body: parsed arguments in, exit status out


def positive_number(text: str) -> float:
    """argparse type for a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from sdcpc_core.eval.metrics import VC_MODES
    from sdcpc_core.tools.cli import ToolParser, at_least, image_size, in_range, smoothing

    from .bagfiles import DEFAULT_DISTRO, DISTROS, MASK_TOPIC, STORAGES
    from .play import MAX_DOMAIN_ID, QOS_CHOICES
    from .synth import IMAGE_FORMATS

    parser = ToolParser(prog=PROG, description="Write, evaluate and play rosbag2 bags for the SD-CPC segment node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{synth,eval,play}")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--distro", choices=tuple(DISTROS), default=DEFAULT_DISTRO,
                         help=f"message definitions for written bags and for bags that embed none (default "
                              f"{DEFAULT_DISTRO})")
        sub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    synth = commands.add_parser("synth", help="write a synthetic drive (images, camera_info, labels) as a bag")
    synth.add_argument("out", type=Path, metavar="OUT", help="bag to write: NAME.mcap, NAME.db3 or a bag folder NAME")
    synth.add_argument("--frames", type=at_least(1), default=None,
                       help="frames of the drive (default: the config's, 300)")
    synth.add_argument("--size", type=image_size, default=None,
                       help="image HEIGHTxWIDTH (default: the config's, 240x480)")
    synth.add_argument("--fps", type=positive_number, default=None, help="frame rate in Hz (default: the config's, 30)")
    synth.add_argument("--config", type=Path, default=None, help="YAML file of SyntheticConfig fields")
    synth.add_argument("--seed", type=at_least(0), default=0, help="drive seed (default 0)")
    synth.add_argument("--format", choices=IMAGE_FORMATS, default="rgb8",
                       help="raw Image encoding, or jpeg for a CompressedImage topic (default rgb8)")
    synth.add_argument("--jpeg-quality", type=at_least(1), default=90, help="JPEG quality 1..100 (default 90)")
    synth.add_argument("--storage", choices=tuple(STORAGES), default=None,
                       help="storage of a bag folder (default mcap; .mcap / .db3 names imply theirs)")
    synth.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    synth.add_argument("--image-topic", default=None,
                       help="image topic (default /camera/image_raw, or /camera/image_raw/compressed for jpeg)")
    synth.add_argument("--label-topic", default="/camera/labels", help="label topic (default /camera/labels)")
    synth.add_argument("--camera-info-topic", default="/camera/camera_info",
                       help="camera_info topic (default /camera/camera_info)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    common(synth)

    evaluate = commands.add_parser("eval", help="segment a bag's images and score them against its labels")
    evaluate.add_argument("bag", type=Path, metavar="BAG", help="bag: NAME.mcap, NAME.db3 or a bag folder")
    evaluate.add_argument("--image-topic", default=None,
                          help="Image or CompressedImage topic (default /camera/image_raw, else "
                               "/camera/image_raw/compressed)")
    evaluate.add_argument("--label-topic", default=None,
                          help="mono8 ground-truth topic (default /camera/labels when present; '' for none)")
    evaluate.add_argument("--camera-info-topic", default=None,
                          help="camera_info topic (default /camera/camera_info when present; '' for none)")
    evaluate.add_argument("--mask-topic", default=MASK_TOPIC, help=f"mask topic (default {MASK_TOPIC})")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="output folder for report/ and the mask bag (default <bag>_eval, live <bag>_live)")
    evaluate.add_argument("--storage", choices=tuple(STORAGES), default="mcap",
                          help="output bag storage (default mcap)")
    evaluate.add_argument("--consistency-mode", choices=VC_MODES, default="vspw",
                          help="mVC definition: the public VSPW script's (default) or the corrected one")
    evaluate.add_argument("--overlays", type=at_least(0), default=8,
                          help="frames drawn as ground truth | prediction overlays (default 8)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    offline = evaluate.add_argument_group("offline evaluation (the default)")
    offline.add_argument("--params-file", type=Path, default=None, help="segment node parameter file (YAML)")
    offline.add_argument("--model", default=None, help="shipped model name or checkpoint path (default: the node's)")
    offline.add_argument("--backend", default=None, help="eager, compile, onnxruntime or tensorrt (default eager)")
    offline.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    offline.add_argument("--precision", default=None, help="fp32, fp16 or bf16 (default fp32)")
    offline.add_argument("--input-size", type=image_size, default=None,
                         help="network input HEIGHTxWIDTH, multiples of 32 (default: the node's input_height and "
                              "input_width, else the checkpoint's recommended size, e.g. 256x480 for "
                              "sdcpc_b0_synthetic, else 480x864)")
    offline.add_argument("--smoothing", type=smoothing, default=None,
                         help="temporal smoothing of the probabilities: none, ema:A (0 < A <= 1, e.g. ema:0.5) or "
                              "window[:O1,O2,..] (default: the node's, none)")
    live = evaluate.add_argument_group("live evaluation (--live: a segment_node must be running)")
    live.add_argument("--live", action="store_true", help="play the bag to a running segment_node and score its masks")
    live.add_argument("--rate", type=positive_number, default=None, help="playback rate (default 1: real time)")
    live.add_argument("--wait", type=positive_number, default=None,
                      help="seconds to wait for the node to connect (default 30)")
    live.add_argument("--settle", type=positive_number, default=None,
                      help="longest wait in seconds for late masks after the last frame (default 5; the wait "
                           "adapts to the node's pace, at least 1 s)")
    live.add_argument("--classes", default=None,
                      help="class list (shipped name or YAML) when the node latches none on <mask topic>/classes")
    live.add_argument("--domain-id", type=in_range(0, MAX_DOMAIN_ID), default=None,
                      help=f"ROS domain id, 0..{MAX_DOMAIN_ID} (default: ROS_DOMAIN_ID)")
    common(evaluate)

    play = commands.add_parser("play", help="publish a bag's topics with their recorded timing")
    play.add_argument("bag", type=Path, metavar="BAG", help="bag: NAME.mcap, NAME.db3 or a bag folder")
    play.add_argument("--rate", type=positive_number, default=1.0, help="playback rate (default 1: real time)")
    play.add_argument("--loop", action="store_true", help="play again and again until Ctrl-C")
    play.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="play only these topics")
    play.add_argument("--remap", nargs="+", default=[], metavar="OLD:=NEW", help="publish topic OLD as NEW")
    play.add_argument("--qos", choices=QOS_CHOICES, default="reliable",
                      help="publisher reliability (default reliable; every subscriber accepts it)")
    play.add_argument("--depth", type=at_least(1), default=10, help="publisher history depth (default 10)")
    play.add_argument("--delay", type=at_least(0), default=0,
                      help="whole seconds to wait before playing, for subscribers to connect (default 0)")
    play.add_argument("--domain-id", type=in_range(0, MAX_DOMAIN_ID), default=None,
                      help=f"ROS domain id, 0..{MAX_DOMAIN_ID}: the DDS default port mapping has no ports for larger "
                           "ones (default: ROS_DOMAIN_ID)")
    common(play)
    return parser


def require_ros(what: str) -> None:
    """``ValueError`` naming the install step when rclpy and the message packages cannot be imported."""
    import importlib

    try:
        for module in ("rclpy", "sensor_msgs.msg"):
            importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"{what} needs the ROS 2 Python packages ({error}); install them with the 'ros' extra "
                         "(pip install -e '.[ros]', as 'make venv' does) or source a ROS 2 installation") from None


def user_errors(run: Command, errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> Command:
    """``run`` for ``run_tool``: ``errors`` (a user's mistakes: BagError, ParameterError, StartupError,
    unreadable files) become ``UserError`` (one sentence, exit status 2); Ctrl-C is exit status 130.
    Outputs are only ever renamed into place when complete, so an interruption leaves none."""
    from sdcpc_core.tools.cli import UserError

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except errors as error:
            raise UserError(str(error)) from None
    return guarded


def main(argv: list[str] | None = None) -> int:
    """Runs ``sdcpc-bag``; returns the exit status (2 for argument and user errors, 130 on Ctrl-C)."""
    from sdcpc_core.tools.cli import run_tool

    commands = {"synth": _synth, "eval": _evaluate, "play": _play}
    return run_tool(build_parser(), user_errors(lambda args: commands[args.command](args)), argv)


# ---------------------------------------------------------------------------------------------- synth
def _synth(args) -> int:
    import dataclasses

    from sdcpc_core.data.synthetic import SyntheticConfig, keep_heap

    from .synth import write_synthetic_bag

    keep_heap()  # this command only renders and writes frames: twice as fast
    config = SyntheticConfig.from_yaml(args.config) if args.config is not None else SyntheticConfig()
    changes = {"num_frames": args.frames, "fps": args.fps}
    if args.size is not None:
        changes.update(height=args.size[0], width=args.size[1])
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    result = write_synthetic_bag(args.out, config, args.seed, image_format=args.format, storage=args.storage,
                                 distro=args.distro, overwrite=args.overwrite, frame_id=args.frame_id,
                                 jpeg_quality=args.jpeg_quality, image_topic=args.image_topic,
                                 label_topic=args.label_topic, camera_info_topic=args.camera_info_topic,
                                 progress=args.progress)
    print(result.summary_line())
    return 0


# ----------------------------------------------------------------------------------------------- eval
def read_params_file(path: Path) -> dict:
    """The ``ros__parameters`` of ``/**`` and ``segment_node`` in a ROS 2 parameter file (later ones win)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"parameter file {path} is not valid YAML ({error})") from None
    nodes = data if isinstance(data, dict) else {}
    sections = [section.get("ros__parameters") for name, section in nodes.items()
                if name in _PARAMETER_SECTIONS and isinstance(section, dict)]
    sections = [section for section in sections if isinstance(section, dict)]
    if not sections:
        raise ValueError(f"parameter file {path} has no ros__parameters for {' or '.join(_PARAMETER_SECTIONS[::2])}")
    return {key: value for section in sections for key, value in section.items()}


def node_config(args):
    """The segment node's ``NodeConfig`` from ``--params-file`` and the option overrides."""
    from sdcpc_core.options import check_names

    from ..parameters import NodeConfig

    values = read_params_file(args.params_file) if args.params_file is not None else {}
    check_names(values, NodeConfig.names(), "parameter", valid_label="the segment node's parameters",
                context=f"parameter file {args.params_file}: ")
    for name in ("model", "backend", "device", "precision", "smoothing"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.input_size is not None:
        values["input_height"], values["input_width"] = args.input_size
    return NodeConfig(**values)


def _misplaced(args, names) -> str:
    """``--a, --b apply`` / ``--a applies`` for the options of ``names`` that were given, or ``""``."""
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]
    return f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'}" if given else ""


def _evaluate(args) -> int:
    require_ros("sdcpc-bag eval (it runs the segment node's pipeline)")
    from .scoring import EvalOutputs

    bag: Path = args.bag
    misplaced = _misplaced(args, OFFLINE_OPTIONS if args.live else LIVE_OPTIONS)
    if misplaced and args.live:
        raise ValueError(f"{misplaced} to offline evaluation; with --live the running node's parameters apply")
    if misplaced:
        raise ValueError(f"{misplaced} to live evaluation only; add --live")
    out = args.out if args.out is not None else bag.with_name(f"{bag.stem}_{'live' if args.live else 'eval'}")
    outputs = EvalOutputs.under(out, args.storage)
    options = dict(image_topic=args.image_topic, label_topic=args.label_topic, camera_info_topic=args.camera_info_topic,
                   mask_topic=args.mask_topic, consistency_mode=args.consistency_mode, num_overlays=args.overlays,
                   storage=args.storage, distro=args.distro, overwrite=args.overwrite, progress=args.progress)
    if args.live:
        from sdcpc_core.classes import ClassList

        from .live import evaluate_live

        classes = ClassList.load(args.classes) if args.classes is not None else None
        result = evaluate_live(bag, outputs, rate=args.rate or 1.0, wait_s=args.wait or 30.0,
                               settle_s=args.settle or 5.0, classes=classes, domain_id=args.domain_id, **options)
    else:
        from .offline import evaluate_offline

        result = evaluate_offline(bag, node_config(args), outputs, **options)
    print(result.summary_line())
    return 0


# ----------------------------------------------------------------------------------------------- play
def _play(args) -> int:
    import os
    import time

    require_ros("sdcpc-bag play")
    from .bagfiles import BagReader
    from .play import BagPlayer, RosSession, parse_remaps

    remaps = parse_remaps(args.remap)
    with BagReader(args.bag, args.distro) as reader, RosSession(f"sdcpc_bag_player_{os.getpid()}",
                                                                args.domain_id) as session:
        player = BagPlayer(session.node, reader, args.topics, remaps, args.qos, args.depth)
        time.sleep(args.delay)
        result = player.play(rate=args.rate, loop=args.loop, progress=args.progress)
    print(result.summary_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
