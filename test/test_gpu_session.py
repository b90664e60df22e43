"""bench/gpu_session.sh: the one-command GPU session runs its steps, logs each, keeps going past failures, fits
one device call and gathers the results in summary.md."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_session.sh"
BUDGET_S = 450  # 7.5 minutes of steps: one device call of at most 8 minutes, start-up of a fresh machine aside


def test_step_time_limits_fit_one_device_call():
    limits = dict(re.findall(r"^run_step (\w+) (\d+) ", SCRIPT.read_text(), flags=re.MULTILINE))
    assert set(limits) == {"environment", "tests", "window_attention", "streaming_eager", "streaming_cudagraph",
                           "streaming_compile", "train", "op_count"}
    assert sum(int(v) for v in limits.values()) <= BUDGET_S, limits


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_selected_steps_run_log_and_summarise(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), STEPS="environment tests window_attention", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["environment", "tests", "window_attention"]
    assert lines[0].startswith("environment: exit 0") and lines[1].startswith("tests: exit 0")
    environment = (tmp_path / "environment.log").read_text()
    assert f"torch {torch.__version__}" in environment and "safetensors:" in environment
    if not torch.cuda.is_available():  # the GPU benchmark refuses politely, the run goes on
        assert lines[2].startswith("window_attention: exit 2")
        assert "no CUDA device" in (tmp_path / "window_attention.log").read_text()
    assert not (tmp_path / "train.log").exists()  # steps not selected do not run

    summary = (tmp_path / "summary.md").read_text()
    sections = dict(re.findall(r"^## (.+?)\n\n(.*?)(?=^## |\Z)", summary, flags=re.MULTILINE | re.DOTALL))
    assert list(sections) == [
        "Environment", "CUDA tests", "Window attention op (ms per call, CUDA events)",
        "Streaming, fp16, eager (ms per frame)", "Streaming, fp16, cudagraph (ms per frame)",
        "Streaming, fp16, compile (ms per frame)", "Training: vspw_b1 on synthetic 480x853 videos, 40 iterations",
        "Op counts (ATen operators per streaming frame, GPU path)"]
    assert f"torch {torch.__version__}" in sections["Environment"]
    assert re.search(r"\d+ (passed|skipped)", sections["CUDA tests"])  # the pytest summary lines
    if importlib.util.find_spec("triton") is not None:  # the interpreter test ran, and says which triton
        assert re.search(r"triton \d+\.\d+\.\d+ interpreter", sections["CUDA tests"])
    if not torch.cuda.is_available():
        assert "needs a CUDA device" in sections["CUDA tests"]
        assert "no CUDA device" in sections["Window attention op (ms per call, CUDA events)"]
    for name in ("Streaming, fp16, eager (ms per frame)", "Op counts (ATen operators per streaming frame, GPU path)"):
        assert sections[name].strip() == "not run (not in STEPS)"
