"""sdcpc_core imports without ROS: every module of the package, in a fresh interpreter in which ROS 2
(rclpy, the message packages) and rosbags cannot be imported.

A module that imports one of them at import time fails this test, and so does one that tries and catches
the ImportError: the blocker records every attempt. Imports inside functions are not seen here, nor
``__main__`` modules (importing one runs its program; each only calls a module that is imported here).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCKED = ("rclpy", "rosbags", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces",
           "builtin_interfaces")

# Runs in the subprocess: argv[1] is the JSON list of blocked top-level names; prints one JSON object.
_SCRIPT = r"""
import importlib
import importlib.abc
import importlib.util
import json
import os
import pkgutil
import sys
import traceback

BLOCKED = frozenset(json.loads(sys.argv[1]))
attempts = []  # [importing sdcpc_core module, blocked module]


class BlockROS(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in BLOCKED:
            return None
        frame, importer = sys._getframe(1), "?"
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if name == "sdcpc_core" or name.startswith("sdcpc_core."):
                importer = name
                break
            frame = frame.f_back
        attempts.append([importer, fullname])
        raise ImportError(f"{fullname} is blocked: sdcpc_core must import without ROS", name=fullname)


for name in list(sys.modules):  # nothing blocked may be imported already (e.g. by a .pth file)
    if name.partition(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, BlockROS())


def walk(directory, prefix):
    # Module names from the file system, without importing anything (pkgutil.walk_packages imports
    # each package to find its children).
    for info in pkgutil.iter_modules([directory], prefix):
        if info.name.rpartition(".")[2] == "__main__":  # runs its program when imported
            continue
        yield info.name
        if info.ispkg:
            yield from walk(os.path.join(directory, info.name.rpartition(".")[2]), info.name + ".")


root = importlib.util.find_spec("sdcpc_core").submodule_search_locations[0]
modules = ["sdcpc_core", *walk(root, "sdcpc_core.")]
failures = {}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
for importer, blocked in attempts:
    failures.setdefault(importer, f"imports {blocked}")
print(json.dumps({"root": root, "modules": modules, "failures": failures, "attempts": attempts}))
"""


def _import_everything() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(BLOCKED)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_core_module_imports_without_ros():
    result = _import_everything()
    assert Path(result["root"]) == ROOT / "sdcpc_core"  # this checkout's package, not an installed copy
    problems = "\n".join(f"{name}: {message}" for name, message in sorted(result["failures"].items()))
    assert not result["failures"], f"sdcpc_core modules that do not import without ROS:\n{problems}"
    assert result["attempts"] == []
    # The walk found the package's modules (a walk that found nothing would pass vacuously).
    modules = result["modules"]
    for expected in ("sdcpc_core.models.sdcpc", "sdcpc_core.ops", "sdcpc_core.runtime", "sdcpc_core.train.losses",
                     "sdcpc_core.eval.metrics", "sdcpc_core.tools.cli"):
        assert expected in modules, f"{expected} not found by the walk: {modules}"
    assert len(modules) >= 40 and len(modules) == len(set(modules)), modules
