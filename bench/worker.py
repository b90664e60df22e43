"""Runs one benchmark case in a fresh Python process, so that its peak memory is its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run_worker(script: str, args: list[str], extra_env: dict[str, str] | None = None) -> dict:
    """Runs ``python script *args`` with the repository on PYTHONPATH; returns the JSON object the
    worker prints on its last line of output, or ``{"error": <last line of stderr>}``."""
    env = dict(os.environ, **(extra_env or {}))
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, os.path.abspath(script), *args], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": tail}
    return json.loads(lines[-1])
