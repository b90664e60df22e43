"""Start the SD-CPC segment node for one camera.

Usage::

    ros2 launch sdcpc_ros segment.launch.py image_topic:=/camera/image_raw
    ros2 launch sdcpc_ros segment.launch.py namespace:=front \\
        image_topic:=/front/image_raw device:=cuda backend:=compile

The node subscribes to ``image`` (``sensor_msgs/Image``), or to
``image/compressed`` (``sensor_msgs/CompressedImage``) when ``use_compressed``
is true; both are remapped to ``image_topic``. ``camera_info`` is remapped to
``camera_info_topic``. Its outputs are relative names, so they end up under
``namespace``. Parameters come from ``params_file`` (default: the installed
``config/segment.yaml``); ``backend``, ``device`` and ``use_compressed`` given
here override the file. ``managed:=true`` starts the lifecycle variant
(``segment_lifecycle_node``), which waits for configure and activate.

Only APIs available since ROS 2 Humble are used, so the file runs unchanged on
Humble, Jazzy and Kilted.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'sdcpc_ros'


def generate_launch_description():
    image_topic = LaunchConfiguration('image_topic')
    camera_info_topic = LaunchConfiguration('camera_info_topic')
    managed = LaunchConfiguration('managed')
    use_compressed = LaunchConfiguration('use_compressed')
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    backend = LaunchConfiguration('backend')
    device = LaunchConfiguration('device')
    log_level = LaunchConfiguration('log_level')

    arguments = [
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='Camera image topic (sensor_msgs/Image); with '
                        'use_compressed:=true its "/compressed" sibling is used.'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='/camera/camera_info',
            description='sensor_msgs/CameraInfo of the camera; republished scaled to '
                        'the mask size on semantic_mask/camera_info.'),
        DeclareLaunchArgument(
            'use_compressed', default_value='false', choices=['true', 'false'],
            description='Subscribe to sensor_msgs/CompressedImage on '
                        '<image_topic>/compressed instead of raw images.'),
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
            'backend', default_value='eager',
            choices=['eager', 'compile', 'onnxruntime', 'tensorrt'],
            description='Inference backend (overrides params_file).'),
        DeclareLaunchArgument(
            'device', default_value='cpu',
            description='Inference device: cpu, cuda or cuda:N (overrides params_file).'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Logging level: debug, info, warn, error or fatal.'),
        DeclareLaunchArgument(
            'managed', default_value='false', choices=['true', 'false'],
            description='Start the managed (lifecycle) node, which loads the model on '
                        'configure and subscribes on activate.'),
    ]

    overrides = {
        'backend': ParameterValue(backend, value_type=str),
        'device': ParameterValue(device, value_type=str),
        'use_compressed': ParameterValue(use_compressed, value_type=bool),
    }

    node = Node(
        package=PACKAGE,
        executable=PythonExpression(
            ["'segment_lifecycle_node' if '", managed, "' == 'true' else 'segment_node'"]),
        name='segment_node',
        namespace=namespace,
        output='screen',
        emulate_tty=True,
        parameters=[params_file, overrides],
        remappings=[
            ('image', image_topic),
            ('image/compressed', [image_topic, '/compressed']),
            ('camera_info', camera_info_topic),
        ],
        arguments=['--ros-args', '--log-level', log_level],
    )

    return LaunchDescription([*arguments, node])
