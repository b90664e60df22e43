"""Packaging checks: colcon build, package.xml, configuration files, launch files."""

import ast
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = 'sdcpc_ros'

# What a colcon workspace needs from this repository (never .venv, build, ...).
PACKAGE_FILES = ('package.xml', 'setup.py', 'setup.cfg', 'pyproject.toml', 'LICENSE', 'resource', 'launch',
                 'config', 'sdcpc_core', 'sdcpc_ros')

EXPECTED_CLASS_COUNTS = {'cityscapes': 19, 'camvid': 11, 'vspw': 124}

LAUNCH_ARGUMENTS = {
    'segment.launch.py': {
        'image_topic': '/camera/image_raw',
        'use_compressed': '',  # empty: not given, the params file decides
        'params_file': None,  # a substitution (installed config/segment.yaml)
        'namespace': '',
        'backend': '',
        'device': '',
        'log_level': 'info',
        'camera_info_topic': '',  # empty: beside the image topic
        'managed': 'false',
    },
    'two_cameras.launch.py': {
        'params_file': None,
        'backend': '',
        'device': '',
        'use_compressed': '',
        'log_level': 'info',
        'managed': 'false',
    },
}


def _setup_kwargs():
    """Keyword arguments of the setup() call in setup.py that are literals."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Constant):
            constants[node.targets[0].id] = node.value.value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
            kwargs = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    kwargs[kw.arg] = constants[kw.value.id]
                else:
                    with contextlib.suppress(ValueError):  # not a literal: not compared
                        kwargs[kw.arg] = ast.literal_eval(kw.value)
            return kwargs
    raise AssertionError('setup.py has no setup() call')


def _copy_package(dest):
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info', '.pytest_cache')
    for name in PACKAGE_FILES:
        src = ROOT / name
        assert src.exists(), f'{name} is missing from the repository'
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


# --------------------------------------------------------------------------- colcon


@pytest.fixture(scope='module')
def colcon_install(tmp_path_factory):
    """``colcon build`` of a copy of the package: (install base, package prefix, colcon output)."""
    if importlib.util.find_spec('colcon_core') is None or importlib.util.find_spec('colcon_ros') is None:
        reason = 'colcon-core / colcon-ros are not installed (pip install -e ".[test]")'
        print(reason)
        pytest.skip(reason)

    tmp_path = tmp_path_factory.mktemp('colcon')
    src = tmp_path / 'src'
    _copy_package(src / PACKAGE)
    build, install, log = tmp_path / 'build', tmp_path / 'install', tmp_path / 'log'
    env = dict(os.environ)
    env['COLCON_HOME'] = str(tmp_path / 'colcon_home')  # ignore the user's colcon defaults
    env.pop('COLCON_DEFAULTS_FILE', None)
    # This interpreter (and its setuptools) runs colcon and setup.py.
    cmd = [sys.executable, '-m', 'colcon', '--log-base', str(log), 'build',
           '--base-paths', str(src), '--build-base', str(build), '--install-base', str(install),
           '--event-handlers', 'console_direct+']
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return install, install / PACKAGE, proc  # colcon's default isolated install layout


def _site_packages(prefix):
    # lib/python3.X/site-packages (or dist-packages with a Debian interpreter)
    found = sorted(prefix.glob('lib*/python3*/*-packages/sdcpc_core/__init__.py'))
    assert len(found) == 1, f'sdcpc_core not (or twice) in the install tree: {found}'
    return found[0].parent.parent


def test_colcon_build(colcon_install, tmp_path):
    install, prefix, proc = colcon_install
    assert proc.returncode == 0, f'colcon build failed:\n{proc.stdout[-20000:]}'
    assert 'Finished <<< sdcpc_ros' in proc.stdout, proc.stdout[-5000:]

    for rel in (
        'share/ament_index/resource_index/packages/sdcpc_ros',
        'share/sdcpc_ros/package.xml',
        'share/sdcpc_ros/launch/segment.launch.py',
        'share/sdcpc_ros/launch/two_cameras.launch.py',
        'share/sdcpc_ros/config/segment.yaml',
        'lib/sdcpc_ros/sdcpc-model-info',
        'lib/sdcpc_ros/sdcpc-bag',
        'lib/sdcpc_ros/segment_node',
        'lib/sdcpc_ros/sdcpc-train',
        'lib/sdcpc_ros/sdcpc-eval',
        'lib/sdcpc_ros/sdcpc-synth',
        'lib/sdcpc_ros/sdcpc-convert',
        'lib/sdcpc_ros/segment_lifecycle_node',
    ):
        assert (prefix / rel).is_file(), f'{rel} is missing from the install tree'
    assert os.access(prefix / 'lib/sdcpc_ros/sdcpc-model-info', os.X_OK)
    assert os.access(prefix / 'lib/sdcpc_ros/segment_node', os.X_OK)

    site_packages = _site_packages(prefix)
    assert (site_packages / 'sdcpc_ros' / '__init__.py').is_file()
    for name in ('cityscapes', 'camvid', 'vspw'):  # class lists are package data of sdcpc_core
        assert (site_packages / 'sdcpc_core' / 'assets' / 'classes' / f'{name}.yaml').is_file()

    # Import the installed copy, not the repository's: run from an empty folder
    # with only the install tree on PYTHONPATH.
    probe_env = dict(os.environ)
    probe_env['PYTHONPATH'] = str(site_packages)
    probe = subprocess.run(
        [sys.executable, '-c', 'import sdcpc_core, sdcpc_ros; print(sdcpc_core.__file__); '
                               'print(sdcpc_ros.__file__)'],
        cwd=tmp_path, env=probe_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=120)
    assert probe.returncode == 0, probe.stdout
    lines = probe.stdout.splitlines()
    assert len(lines) == 2, probe.stdout
    for line in lines:
        assert Path(line).resolve().is_relative_to(install.resolve()), probe.stdout


def _node_env(site_packages):
    env = dict(os.environ)
    env['PYTHONPATH'] = str(site_packages)  # the installed packages only
    env['ROS_DOMAIN_ID'] = env.get('ROS_DOMAIN_ID') or str(random.SystemRandom().randint(1, 200))
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return env


@contextlib.contextmanager
def _tester(name, domain_id, process):
    """A node of the test's own (its rclpy context and executor, spun by the caller) next to ``process``,
    which is killed at the end if it still runs (with its process group, when it leads one: launch's
    nodes)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    tester = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(tester)
    try:
        yield tester, executor
    finally:
        if process.poll() is None:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        executor.shutdown()
        tester.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.slow
@pytest.mark.ros
def test_installed_segment_node_runs(colcon_install, tiny_temporal_model, tmp_path):
    """lib/sdcpc_ros/segment_node from the install tree: a clear error for an unknown model (exit
    status 2), and with a real checkpoint it segments an image published here, then stops on SIGINT."""
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed: pip install -e ".[ros]"')
    from sensor_msgs.msg import Image

    from sdcpc_core.weights import save_weights

    _, prefix, proc = colcon_install
    assert proc.returncode == 0, f'colcon build failed:\n{proc.stdout[-20000:]}'
    executable = prefix / 'lib' / PACKAGE / 'segment_node'
    params_file = prefix / 'share' / PACKAGE / 'config' / 'segment.yaml'
    env = _node_env(_site_packages(prefix))

    refused = subprocess.run(
        [str(executable), '--ros-args', '--params-file', str(params_file), '-p', 'model:=no_such_model'],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout
    assert "parameter 'model' ('no_such_model'): unknown checkpoint name 'no_such_model'" in refused.stdout
    assert 'Traceback' not in refused.stdout

    checkpoint = tmp_path / 'tiny.safetensors'
    save_weights(tiny_temporal_model, checkpoint)
    namespace = f'/installed_{os.getpid()}'
    node = subprocess.Popen(
        [str(executable), '--ros-args', '--params-file', str(params_file), '-r', f'__ns:={namespace}',
         '-p', f'model:={checkpoint}', '-p', 'input_height:=64', '-p', 'input_width:=96'],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with _tester('installed_node_tester', int(env['ROS_DOMAIN_ID']), node) as (tester, executor):
        masks = []
        tester.create_subscription(Image, f'{namespace}/semantic_mask', masks.append, 10)
        publisher = tester.create_publisher(Image, f'{namespace}/image', 10)
        image = Image(height=48, width=80, encoding='rgb8', step=240, data=bytes(range(256)) * 45)
        image.header.frame_id = 'camera'
        deadline = time.monotonic() + 90
        while not masks and time.monotonic() < deadline and node.poll() is None:
            image.header.stamp = tester.get_clock().now().to_msg()
            publisher.publish(image)
            executor.spin_once(timeout_sec=0.2)
        node.send_signal(signal.SIGINT)
        output, _ = node.communicate(timeout=30)
    assert masks, f'no mask from the installed node:\n{output[-5000:]}'
    assert (masks[0].height, masks[0].width, masks[0].encoding) == (48, 80, 'mono8')
    assert masks[0].header.frame_id == 'camera'
    assert node.returncode == 0, output[-5000:]
    assert f'Segmenting {namespace}/image' in output


# --------------------------------------------------------------------------- package.xml


def test_package_xml_matches_setup_py():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package'
    assert root.get('format') == '3'
    assert root.findtext('export/build_type') == 'ament_python'
    kwargs = _setup_kwargs()
    assert root.findtext('name') == kwargs['name'] == PACKAGE
    assert root.findtext('version') == kwargs['version']
    assert root.findtext('license') == kwargs['license']
    maintainer = root.find('maintainer')
    assert maintainer is not None and maintainer.get('email')
    exec_depends = {e.text for e in root.findall('exec_depend')}
    for key in ('rclpy', 'sensor_msgs', 'launch', 'launch_ros', 'ament_index_python',
                'python3-numpy', 'python3-yaml', 'python3-torch', 'python3-rosbags-pip'):
        assert key in exec_depends, key
    assert not any('safetensors' in key for key in exec_depends)  # no rosdep key: README says to pip install it
    assert (ROOT / 'resource' / PACKAGE).is_file()


def test_setup_cfg_script_dirs():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    assert cfg.get('develop', 'script_dir') == '$base/lib/sdcpc_ros'
    assert cfg.get('install', 'install_scripts') == '$base/lib/sdcpc_ros'


# --------------------------------------------------------------------------- config


def _config_files():
    return sorted((ROOT / 'config').rglob('*.yaml'))


def test_config_files_parse():
    files = _config_files()
    assert files
    for path in files:
        with open(path) as f:
            data = yaml.safe_load(f)
        assert isinstance(data, dict), path


def test_segment_params():
    with open(ROOT / 'config' / 'segment.yaml') as f:
        data = yaml.safe_load(f)
    assert list(data) == ['/**']
    params = data['/**']['ros__parameters']
    assert params['model'] == 'sdcpc_b0_synthetic'
    assert params['backend'] in ('eager', 'compile', 'onnxruntime', 'tensorrt')
    assert params['device'] == 'cpu'
    assert params['precision'] in ('fp32', 'fp16', 'bf16')
    assert params['input_height'] % 32 == 0 and params['input_width'] % 32 == 0
    assert params['reference_offsets'] == [9, 6, 3]
    assert params['output_resolution'] in ('camera', 'network')
    assert params['input_qos'] in ('sensor_data', 'default', 'reliable')
    assert params['output_qos'] in ('sensor_data', 'default', 'reliable')
    assert params['class_palette_file'] == ''
    assert params['max_image_pixels'] == 33177600
    for key in ('publish_color', 'publish_confidence', 'publish_dynamic', 'use_compressed',
                'process_every_frame'):
        assert isinstance(params[key], bool), key
    # ROS parameters must be one type per list and never null.
    for key, value in params.items():
        assert value is not None, key
        if isinstance(value, list):
            assert value and len({type(v) for v in value}) == 1, key
    cityscapes = {c['name'] for c in yaml.safe_load(
        (ROOT / 'sdcpc_core' / 'assets' / 'classes' / 'cityscapes.yaml').read_text())['classes']}
    assert set(params['dynamic_classes']) <= cityscapes


@pytest.mark.ros
def test_segment_params_are_the_node_defaults_and_commented():
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed: pip install -e ".[ros]"')
    from sdcpc_ros.parameters import NodeConfig

    text = (ROOT / 'config' / 'segment.yaml').read_text()
    params = yaml.safe_load(text)['/**']['ros__parameters']
    assert list(params) == NodeConfig.names()  # every parameter, in the node's order
    assert NodeConfig(**params) == NodeConfig()  # valid, and the same as the node's defaults
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith('    ') and not line.lstrip().startswith('#'):
            assert lines[index - 1].lstrip().startswith('#'), f'no comment above {line.strip()!r}'


@pytest.mark.parametrize('dataset', sorted(EXPECTED_CLASS_COUNTS))
def test_class_files(dataset):
    with open(ROOT / 'sdcpc_core' / 'assets' / 'classes' / f'{dataset}.yaml') as f:
        classes = yaml.safe_load(f)['classes']
    assert len(classes) == EXPECTED_CLASS_COUNTS[dataset]
    assert [c['id'] for c in classes] == list(range(len(classes)))
    names = [c['name'] for c in classes]
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names)
    colors = [tuple(c['color']) for c in classes]
    for color in colors:
        assert len(color) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
    assert len(set(colors)) == len(colors), 'colours must tell the classes apart'


# --------------------------------------------------------------------------- launch


def _is_installed_package(name):
    # The repository's launch/ folder would be found as a namespace package
    # named "launch": only a regular package counts.
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


@pytest.mark.parametrize('name', sorted(LAUNCH_ARGUMENTS))
def test_launch_file_compiles(name):
    path = ROOT / 'launch' / name
    compile(path.read_text(), str(path), 'exec')


@pytest.mark.ros
@pytest.mark.parametrize('name', sorted(LAUNCH_ARGUMENTS))
def test_launch_description(name):
    missing = [m for m in ('launch', 'launch_ros') if not _is_installed_package(m)]
    if missing:
        reason = f'{" and ".join(missing)} not importable (needs a ROS 2 install)'
        print(reason)
        pytest.skip(reason)
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location(name.replace('.', '_'), ROOT / 'launch' / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    expected = LAUNCH_ARGUMENTS[name]
    assert set(declared) == set(expected)
    for arg, default in expected.items():
        if default is not None:
            assert len(declared[arg].default_value) == 1
            assert declared[arg].default_value[0].text == default, arg



def test_launch_arguments_override_the_params_file_only_when_given():
    """segment.launch.py's parameter list (sdcpc_ros.launch_params, no launch needed): the file first, then
    only the arguments the user gave; an empty argument is "not given"."""
    from sdcpc_ros.launch_params import node_parameters, node_remappings

    none_given = {'backend': '', 'device': '', 'use_compressed': ''}
    assert node_parameters('/share/segment.yaml', none_given) == ['/share/segment.yaml']
    assert node_parameters('/share/segment.yaml', {**none_given, 'backend': 'onnxruntime', 'use_compressed': 'true'}) \
        == ['/share/segment.yaml', {'backend': 'onnxruntime', 'use_compressed': True}]
    assert node_parameters('f.yaml', {'device': 'cuda:1', 'use_compressed': 'False'}) == \
        ['f.yaml', {'device': 'cuda:1', 'use_compressed': False}]
    with pytest.raises(ValueError, match='launch argument use_compressed:=yes must be true or false'):
        node_parameters('f.yaml', {'use_compressed': 'yes'})
    assert node_remappings('/front/image_raw') == [('image', '/front/image_raw'),
                                                   ('image/compressed', '/front/image_raw/compressed')]
    assert node_remappings('/front/image_raw', '/front/calibration')[-1] == ('camera_info', '/front/calibration')


_LAUNCH_TWO = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

launch_file, params_file, prefix = sys.argv[1:4]


def include(namespace, **arguments):
    arguments = {'namespace': namespace, 'params_file': params_file, **arguments}
    return GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                                 launch_arguments=arguments.items())])


service = LaunchService()
service.include_launch_description(LaunchDescription([
    include(prefix + '_file', image_topic='/' + prefix + '_front/image_raw'),
    include(prefix + '_given', use_compressed='false', device='cpu'),
]))
sys.exit(service.run())
"""


@pytest.mark.slow
@pytest.mark.ros
def test_real_launch_honours_the_params_file(colcon_install, tiny_temporal_model, tmp_path):
    """segment.launch.py from the install tree, run by launch: a params file with use_compressed: true
    is obeyed unless the launch command gives use_compressed:=false; the camera_info is found beside the
    image topic; Ctrl-C (SIGINT to the process group) stops both nodes cleanly."""
    missing = [m for m in ('launch', 'launch_ros') if not _is_installed_package(m)]
    if missing:
        reason = f'{" and ".join(missing)} not importable (needs a ROS 2 install)'
        print(reason)
        pytest.skip(reason)
    pytest.importorskip('rclpy', reason='rclpy (ROS 2) is not installed: pip install -e ".[ros]"')
    from rcl_interfaces.srv import GetParameters

    from sdcpc_core.weights import save_weights

    _, prefix, proc = colcon_install
    assert proc.returncode == 0, f'colcon build failed:\n{proc.stdout[-20000:]}'
    checkpoint = tmp_path / 'tiny.safetensors'
    save_weights(tiny_temporal_model, checkpoint)
    params_file = tmp_path / 'segment.yaml'
    params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'model': str(checkpoint), 'input_height': 64, 'input_width': 96, 'use_compressed': True}}}))
    env = _node_env(_site_packages(prefix))
    launch_paths = {str(Path(importlib.util.find_spec(m).origin).parent.parent)
                    for m in ('launch', 'launch_ros', 'osrf_pycommon') if importlib.util.find_spec(m)}
    env['PYTHONPATH'] = os.pathsep.join([env['PYTHONPATH'], *sorted(launch_paths)])
    env['AMENT_PREFIX_PATH'] = os.pathsep.join(p for p in (str(prefix), os.environ.get('AMENT_PREFIX_PATH')) if p)
    name = f'lt{os.getpid()}'
    launch = subprocess.Popen([sys.executable, '-c', _LAUNCH_TWO, str(prefix / 'share' / PACKAGE / 'launch' /
                                                                   'segment.launch.py'), str(params_file), name],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # a process group of its own, as in a terminal
    values = {}
    with _tester('launch_tester', int(env['ROS_DOMAIN_ID']), launch) as (tester, executor):
        for namespace in (f'{name}_file', f'{name}_given'):
            client = tester.create_client(GetParameters, f'/{namespace}/segment_node/get_parameters')
            assert client.wait_for_service(timeout_sec=120.0), f'no node in /{namespace}'
            future = client.call_async(GetParameters.Request(names=['use_compressed', 'backend', 'input_height']))
            executor.spin_until_future_complete(future, timeout_sec=30.0)
            compressed, backend, height = future.result().values
            values[namespace] = [compressed.bool_value, backend.string_value, height.integer_value]
        deadline = time.monotonic() + 60
        while not tester.get_subscriptions_info_by_topic(f'/{name}_front/camera_info') and time.monotonic() < deadline:
            time.sleep(0.2)
        camera_info_readers = len(tester.get_subscriptions_info_by_topic(f'/{name}_front/camera_info'))
        os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C in a terminal: launch and both nodes get it
        output, _ = launch.communicate(timeout=60)
    assert values[f'{name}_file'] == [True, 'eager', 64], output[-5000:]  # the file's use_compressed holds
    assert values[f'{name}_given'] == [False, 'eager', 64], output[-5000:]  # the launch argument wins
    assert camera_info_readers == 1, output[-5000:]
    assert output.count('process has finished cleanly') == 2, output[-5000:]
    assert 'process has died' not in output and 'escalating' not in output, output[-5000:]
