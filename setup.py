"""Packaging of sdcpc_ros: one distribution that installs both Python packages.

* ``sdcpc_core``: the SD-CPC model, training, evaluation and runtime (no ROS).
* ``sdcpc_ros``: the ROS 2 (rclpy) front end.

Works both as an ordinary pip package (``pip install -c constraints.txt .``)
and as an ``ament_python`` package built by colcon, which additionally
installs the ament index marker, package.xml, launch files and configuration
under ``share/sdcpc_ros``.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = 'sdcpc_ros'
version = '0.1.0'
share = 'share/' + package_name


def _package_data(package):
    """Every non-Python file below ``package`` (class lists, shipped weights, op tables), relative to it.

    A walk, so that a data file added anywhere below the package ships without editing a list; the
    ``**`` pattern of package_data would do the same but needs setuptools 62.3 (ROS Humble has 59.6).
    """
    root = Path(__file__).resolve().parent / package
    return sorted(path.relative_to(root).as_posix() for path in root.rglob('*')
                  if path.is_file() and path.suffix not in ('.py', '.pyc', '.pyo')
                  and '__pycache__' not in path.parts)


ONNX_REQUIRES = ['onnx', 'onnxruntime', 'onnxscript']
_LINUX_X86_64 = "; platform_system == 'Linux' and platform_machine == 'x86_64'"

setup(
    name=package_name,
    version=version,
    description='SD-CPC video semantic segmentation: model runtime and ROS 2 node',
    long_description=__doc__,
    long_description_content_type='text/plain',
    maintainer='sdcpc maintainers',
    maintainer_email='maintainers@sdcpc.invalid',
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
    python_requires='>=3.10',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
    package_data={'sdcpc_core': _package_data('sdcpc_core')},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        (share, ['package.xml']),
        (share + '/launch', sorted(glob('launch/*.launch.py'))),
        (share + '/config', sorted(glob('config/*.yaml'))),
        (share + '/config/train', sorted(glob('config/train/*.yaml'))),
    ],
    install_requires=[
        # The code supports torch 2.11 and newer; constraints.txt pins the
        # exact build used for development and CI.
        'torch>=2.11',
        'numpy',
        'safetensors',
        'PyYAML',
        'tqdm',
        # image decoding, resizing and augmentation (a ROS install provides python3-opencv)
        'opencv-python-headless',
        # palette PNG label maps (VSPW), which OpenCV expands to colours
        'Pillow',
        # PNG plots in training, evaluation and bag reports
        'matplotlib',
        # rosbag2 reading and writing (mcap, sqlite3) without a ROS install; pure Python
        'rosbags',
    ],
    extras_require={
        # ROS 2 (Kilted) as pip wheels, for machines without a ROS install
        # (tests, CI). rmw_fastrtps_cpp is needed: rclpy fails to load without
        # an RMW. The wheels exist for Linux x86_64 only; elsewhere (e.g. a
        # Jetson) this extra installs nothing and a real ROS 2 install is used.
        'ros': [req + _LINUX_X86_64 for req in (
            'ros-rclpy',
            'ros-sensor-msgs',
            'ros-std-msgs',
            'ros-diagnostic-msgs',
            'ros-rcl-interfaces',
            'ros-lifecycle-msgs',
            'ros-rmw-fastrtps-cpp',
            'ros-ament-index-python',
        )],
        'onnx': ONNX_REQUIRES,
        'tensorrt': ['torch-tensorrt', 'tensorrt'],
        'test': [
            'pytest',
            'pytest-timeout',
            # linters (make lint, .ci/run); ruff's rule set grows between minor versions, so it is held
            'ruff~=0.17.6',
            'mypy~=2.4.1',
            'transformers',
            'colcon-core',
            'colcon-ros',
            'colcon-python-setup-py',
            'ros-ament-package',
            # runs the fused window-attention kernel in Triton's CPU interpreter in the tests
            'triton' + _LINUX_X86_64,
            *ONNX_REQUIRES,
        ],
    },
    zip_safe=True,
    entry_points={
        'console_scripts': [
            'sdcpc-model-info = sdcpc_core.tools.model_info:main',
            'sdcpc-export = sdcpc_core.tools.export:main',
            'sdcpc-convert = sdcpc_core.tools.convert:main',
            'sdcpc-synth = sdcpc_core.tools.synth:main',
            'sdcpc-train = sdcpc_core.tools.train:main',
            'sdcpc-eval = sdcpc_core.tools.evaluate:main',
            'sdcpc-bag = sdcpc_ros.bag.cli:main',
            'segment_node = sdcpc_ros.node_main:main',
            'segment_lifecycle_node = sdcpc_ros.node_main:lifecycle_main',
        ],
    },
)
