"""bench/gpu_session.sh: the one-command GPU session runs its steps, logs each, and keeps going past failures."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_session.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_selected_steps_run_log_and_summarise(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), STEPS="environment window_attention", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["environment", "window_attention"]
    assert lines[0].startswith("environment: exit 0")
    environment = (tmp_path / "environment.log").read_text()
    assert f"torch {torch.__version__}" in environment and "safetensors:" in environment
    if not torch.cuda.is_available():  # the GPU benchmark refuses politely, the run goes on
        assert lines[1].startswith("window_attention: exit 2")
        assert "no CUDA device" in (tmp_path / "window_attention.log").read_text()
    assert not (tmp_path / "tests.log").exists()  # steps not selected do not run
