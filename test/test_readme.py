"""The README's command lines work as written.

Every line of a fenced ``bash`` block in README.md is a command. Each one must either be run here
(``RUN``, ``RUN_SLOW``: in a temporary folder, with this interpreter's scripts first on PATH) or be
listed in ``NOT_RUN`` with the reason; a command added to README without either fails
``test_every_readme_command_is_run_or_listed``. The ``python`` blocks are run as well.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent

# Commands not run by this test, each with the reason.
NOT_RUN = {
    "make demo": "takes about a minute; the demo's code is run against the real node by test_ros_demo.py",
    "make test": "runs this test suite",
    "rosdep install --from-paths src --ignore-src -y": "needs rosdep and a ROS 2 workspace; installs system packages",
    "colcon build": "needs a ROS 2 workspace around the package; test_package.py builds one with colcon",
    "source install/setup.bash": "needs the workspace that colcon build makes",
    "ros2 launch sdcpc_ros segment.launch.py image_topic:=/camera/image_raw":
        "needs a ROS 2 install (ros2cli, launch_ros: not on PyPI); test_package.py checks the launch files",
    "ros2 launch sdcpc_ros segment.launch.py namespace:=front image_topic:=/front/image_raw device:=cuda "
    "backend:=tensorrt": "needs a ROS 2 install, a GPU and TensorRT",
    "ros2 launch sdcpc_ros two_cameras.launch.py device:=cuda": "needs a ROS 2 install and a GPU",
    "ros2 launch sdcpc_ros segment.launch.py managed:=true": "needs a ROS 2 install (ros2cli, launch_ros)",
    "ros2 run sdcpc_ros segment_node --ros-args -p model:=/path/to/model.safetensors -r image:=/camera/image_raw":
        "needs a ROS 2 install (ros2cli) and a checkpoint at that path; test_node.py runs the node",
    "sdcpc-bag play drive.mcap --rate 0.5 --remap /camera/image_raw:=/front/image_raw":
        "publishes into the live ROS graph for 20 s; test_bag_play.py covers play and remapping",
    "sdcpc-bag eval drive.mcap --live": "needs a running segment_node; test_ros_demo.py runs a live evaluation",
}

# Commands run here, each with a check of its output (a regular expression).
RUN = {
    "sdcpc-bag synth drive.mcap --seed 2000": r"wrote drive\.mcap",
    "sdcpc-model-info --variant sdcpc_b0 --num-classes 19 --size 512x1024": r"sdcpc_b0",
    "sdcpc-synth --help": r"usage: sdcpc-synth",
    "sdcpc-train --help": r"usage: sdcpc-train",
    "sdcpc-eval --help": r"usage: sdcpc-eval",
    "sdcpc-export --help": r"usage: sdcpc-export",
    "sdcpc-convert --help": r"usage: sdcpc-convert",
}

# Run here only in the full suite (slow); they may use the files of the RUN commands above.
RUN_SLOW = {
    "sdcpc-bag eval drive.mcap --model sdcpc_b0_synthetic --input-size 128x256": r"mIoU",
}


def fenced_blocks(language: str, text: str | None = None) -> list[str]:
    """The bodies of the README's fenced blocks in ``language``."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def commands(text: str | None = None) -> list[str]:
    """Every command line of the README's bash blocks, trailing comments and spaces removed."""
    lines = []
    for block in fenced_blocks("bash", text):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def environment() -> dict[str, str]:
    """This interpreter's scripts first on PATH, this checkout first on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), "PYTHONUNBUFFERED": "1"}


def run(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``command`` through the shell in its own process group, all of which is killed on a timeout."""
    with subprocess.Popen(command, shell=True, cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"{command!r} did not finish within {timeout} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def check(result: subprocess.CompletedProcess, command: str, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} exited with {result.returncode}:\n{output[-3000:]}"
    assert re.search(expected, output), f"{command!r} did not print {expected!r}:\n{output[-3000:]}"


def test_commands_are_parsed_from_bash_blocks_only():
    text = "```bash\nmake demo   # comment\n\n# a comment line\nsdcpc-bag synth x.mcap\n```\n" \
           "```python\nprint(1)\n```\n```\nnot a command\n```\n"
    assert commands(text) == ["make demo", "sdcpc-bag synth x.mcap"]
    assert fenced_blocks("python", text) == ["print(1)\n"]


def test_every_readme_command_is_run_or_listed():
    found = commands()
    listed = {**NOT_RUN, **RUN, **RUN_SLOW}
    unlisted = [c for c in found if c not in listed]
    assert not unlisted, f"README commands neither run by this test nor listed in NOT_RUN: {unlisted}"
    stale = [c for c in listed if c not in found]
    assert not stale, f"commands listed here that README no longer has: {stale}"
    assert len(RUN) + len(RUN_SLOW) + len(NOT_RUN) == len(listed), "a command is listed twice"


def test_readme_commands_run(tmp_path):
    """The cheap commands, in README order, each with a check of what it prints."""
    order = [c for c in commands() if c in RUN]
    assert order, "README has no command that this test runs"
    for command in order:
        check(run(command, tmp_path, timeout=300), command, RUN[command])
    bag = tmp_path / "drive.mcap"
    assert bag.stat().st_size > 0
    bag.unlink()  # over 100 MiB: not worth keeping in pytest's temporary folders


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 30 s on 2 idle cores; minutes when other jobs share them
def test_readme_slow_commands_run(tmp_path):
    for command in [c for c in commands() if c in RUN]:
        if command.startswith("sdcpc-bag synth"):  # the bag that the slow commands read
            check(run(command, tmp_path, timeout=300), command, RUN[command])
    for command in [c for c in commands() if c in RUN_SLOW]:
        check(run(command, tmp_path, timeout=1100), command, RUN_SLOW[command])
    (tmp_path / "drive.mcap").unlink()


def test_readme_python_blocks_run(tmp_path):
    blocks = fenced_blocks("python")
    assert blocks, "README has no python block"
    outputs = []
    for block in blocks:
        result = subprocess.run([sys.executable, "-"], input=block, cwd=tmp_path, env=environment(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"README python block failed:\n{block}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    assert "(240, 480)" in "".join(outputs)  # the streaming example's label map has the camera size
