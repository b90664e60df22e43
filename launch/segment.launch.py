"""Start the SD-CPC segment node for one camera.

Usage::

    ros2 launch sdcpc_ros segment.launch.py image_topic:=/camera/image_raw
    ros2 launch sdcpc_ros segment.launch.py namespace:=front \\
        image_topic:=/front/image_raw device:=cuda backend:=compile

The node subscribes to ``image`` (``sensor_msgs/Image``), or to
``image/compressed`` (``sensor_msgs/CompressedImage``) when ``use_compressed``
is true; both are remapped to ``image_topic``. ``camera_info`` is remapped to
``camera_info_topic`` when given; otherwise the node listens beside the image
topic (``/front/image_raw`` -> ``/front/camera_info``). Its outputs are
relative names, so they end up under ``namespace``.

Parameters come from ``params_file`` (default: the installed
``config/segment.yaml``), then the node's own defaults. ``backend``,
``device`` and ``use_compressed`` override the file only when given on the
command line: left out (their default is empty), the file decides
(``sdcpc_ros.launch_params``). ``managed:=true`` starts the lifecycle variant
(``segment_lifecycle_node``), which waits for configure and activate.

Only APIs available since ROS 2 Humble are used, so the file runs unchanged on
Humble, Jazzy and Kilted.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from sdcpc_ros.launch_params import OVERRIDES, node_parameters, node_remappings

PACKAGE = 'sdcpc_ros'
BACKENDS = ['eager', 'compile', 'cudagraph', 'onnxruntime', 'tensorrt']


def _segment_node(context):
    """The node, built once the launch arguments have values (so that empty ones can be left out)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    managed = value('managed') == 'true'
    return [Node(
        package=PACKAGE,
        executable='segment_lifecycle_node' if managed else 'segment_node',
        name='segment_node',
        namespace=value('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=node_parameters(value('params_file'), {name: value(name) for name in OVERRIDES}),
        remappings=node_remappings(value('image_topic'), value('camera_info_topic')),
        arguments=['--ros-args', '--log-level', value('log_level')],
    )]


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='Camera image topic (sensor_msgs/Image); with '
                        'use_compressed:=true its "/compressed" sibling is used.'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='',
            description='sensor_msgs/CameraInfo of the camera; republished scaled to '
                        'the mask size on semantic_mask/camera_info. Empty: the '
                        'camera_info beside image_topic.'),
        DeclareLaunchArgument(
            'use_compressed', default_value='', choices=['', 'true', 'false'],
            description='Subscribe to sensor_msgs/CompressedImage on '
                        '<image_topic>/compressed instead of raw images. Empty: '
                        'as params_file says.'),
        DeclareLaunchArgument(
            'params_file',
            # Resolved through the ament index (get_package_share_directory)
            # when the launch file runs.
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), 'config', 'segment.yaml']),
            description='YAML file with the node parameters.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its output topics.'),
        DeclareLaunchArgument(
            'backend', default_value='', choices=['', *BACKENDS],
            description='Inference backend; overrides params_file when given. Empty: '
                        'as params_file says.'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device: cpu, cuda or cuda:N; overrides params_file '
                        'when given. Empty: as params_file says.'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Logging level: debug, info, warn, error or fatal.'),
        DeclareLaunchArgument(
            'managed', default_value='false', choices=['true', 'false'],
            description='Start the managed (lifecycle) node, which loads the model on '
                        'configure and subscribes on activate.'),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_segment_node)])
