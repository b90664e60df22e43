"""use_huge_pages: large CPU tensors advised for transparent huge pages, and the cases where it cannot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdcpc_core.runtime import cpu_memory
from sdcpc_core.runtime.cpu_memory import HUGE_PAGES_ENV, kernel_huge_pages_mode

needs_proc = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")

# Each case runs in a fresh interpreter: PyTorch reads the variable once, at its first large allocation.
PROBE = """
import sys
import torch
if sys.argv[1] == "allocate first":
    early = torch.empty(4 * 2 ** 20, dtype=torch.uint8)
from sdcpc_core.runtime.cpu_memory import HUGE_PAGES_ENV, _advised_for_huge_pages, use_huge_pages
import os
enabled = use_huge_pages()
tensor = torch.empty(8 * 2 ** 20, dtype=torch.uint8)
small = torch.empty(2 ** 20, dtype=torch.uint8)
print(enabled, _advised_for_huge_pages(tensor.data_ptr()), _advised_for_huge_pages(small.data_ptr()),
      os.environ[HUGE_PAGES_ENV])
"""


def _probe(case: str, env_value: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    if env_value is not None:
        env[HUGE_PAGES_ENV] = env_value
    proc = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.split()


@needs_proc
def test_large_tensors_are_advised_for_huge_pages_and_small_ones_are_not():
    assert _probe("fresh") == ["True", "True", "False", "1"]


@needs_proc
def test_an_explicit_zero_from_the_user_is_respected():
    assert _probe("fresh", env_value="0") == ["False", "False", "False", "0"]


@needs_proc
def test_too_late_after_torch_has_read_the_variable_is_reported():
    assert _probe("allocate first") == ["False", "False", "False", "1"]


def test_kernel_mode_is_the_bracketed_choice(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(cpu_memory, "_THP_SETTING", setting)
    assert kernel_huge_pages_mode() == "madvise"
    monkeypatch.setattr(cpu_memory, "_THP_SETTING", tmp_path / "missing")
    assert kernel_huge_pages_mode() == "unknown"
