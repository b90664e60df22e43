"""Example: one SD-CPC segment node per camera, for a front and a rear camera.

Usage::

    ros2 launch sdcpc_ros two_cameras.launch.py device:=cuda

Includes segment.launch.py twice: namespace ``front`` reading
``/front/image_raw`` (and ``/front/camera_info``) and namespace ``rear``
reading ``/rear/image_raw`` (and ``/rear/camera_info``). The
outputs of each node are published under its namespace. Both nodes share the
same parameters file (its ``/**`` key matches any namespace); ``backend``,
``device`` and ``use_compressed`` override it only when given.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'sdcpc_ros'

CAMERAS = (  # namespace, image topic, camera_info topic
    ('front', '/front/image_raw', '/front/camera_info'),
    ('rear', '/rear/image_raw', '/rear/camera_info'),
)

# Launch arguments passed through unchanged to every segment.launch.py.
FORWARDED = ('params_file', 'backend', 'device', 'use_compressed', 'log_level', 'managed')


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare(PACKAGE), 'config', 'segment.yaml']),
            description='YAML file with the node parameters (both cameras).'),
        DeclareLaunchArgument(
            'backend', default_value='',
            choices=['', 'eager', 'compile', 'cudagraph', 'onnxruntime', 'tensorrt'],
            description='Inference backend. Empty: as params_file says.'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device: cpu, cuda or cuda:N. Empty: as params_file says.'),
        DeclareLaunchArgument(
            'use_compressed', default_value='', choices=['', 'true', 'false'],
            description='Subscribe to <image_topic>/compressed. Empty: as params_file says.'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Logging level of the nodes.'),
        DeclareLaunchArgument(
            'managed', default_value='false', choices=['true', 'false'],
            description='Start the managed (lifecycle) nodes.'),
    ]

    segment_launch = PathJoinSubstitution(
        [FindPackageShare(PACKAGE), 'launch', 'segment.launch.py'])

    cameras = []
    for namespace, image_topic, camera_info_topic in CAMERAS:
        launch_arguments = {name: LaunchConfiguration(name) for name in FORWARDED}
        launch_arguments.update({'namespace': namespace, 'image_topic': image_topic,
                                 'camera_info_topic': camera_info_topic})
        # A scoped group keeps each include's launch configurations apart.
        cameras.append(GroupAction([
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(segment_launch),
                launch_arguments=launch_arguments.items()),
        ]))

    return LaunchDescription(arguments + cameras)
