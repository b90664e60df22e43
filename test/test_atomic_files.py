"""sdcpc_core.atomic_files.atomic_write: all or nothing, with ordinary file permissions."""
import os
import stat

import pytest

from sdcpc_core.atomic_files import atomic_write


def _write_text(text):
    def write(path):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return write


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_has_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "weights.safetensors", _write_text("new"), fsync=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "weights.safetensors").stat().st_mode) == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(path):
        _write_text("partial")(path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    atomic_write(target, _write_text("new"))
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
