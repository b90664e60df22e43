"""sdcpc_core.atomic_files: all-or-nothing writes and publishing, folder locks, stale staging, and the
permissions of the umask for every file and folder the writers make."""
import os
import stat

import pytest

from sdcpc_core.atomic_files import (
    FolderInUseError,
    atomic_write,
    lock_folder,
    publish_entries,
    remove_stale_staging,
    replace_path,
    staging_folder,
)


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


# --------------------------------------------------------------------------------- folders, publishing
def _umask(mask):
    """Runs the block under ``mask``."""
    import contextlib

    @contextlib.contextmanager
    def block():
        previous = os.umask(mask)
        try:
            yield
        finally:
            os.umask(previous)
    return block()


def _modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_writers_follow_the_umask_even_when_the_writer_creates_0600(tmp_path):
    """safetensors creates its file 0600; a staging folder from tempfile.mkdtemp is 0700: both would be
    published so. Under umask 022 every file must be -rw-r--r-- and every folder drwxr-xr-x."""
    def private_writer(path):
        os.remove(path)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    with _umask(0o022):
        (tmp_path / "out").mkdir()
        atomic_write(tmp_path / "out" / "weights.safetensors", private_writer)
        staging = staging_folder(tmp_path / "out" / "report")
        (staging / "report.json").write_text("{}")
        replace_path(staging, tmp_path / "out" / "report")
    assert _modes(tmp_path / "out") == {".": 0o755, "weights.safetensors": 0o644, "report": 0o755,
                                        "report/report.json": 0o644}


def test_weights_checkpoints_and_reports_follow_the_umask(tmp_path, tiny_temporal_model):
    from sdcpc_core.classes import ClassList
    from sdcpc_core.eval.metrics import ConfusionMatrix
    from sdcpc_core.eval.report import EvaluationReport, write_report
    from sdcpc_core.train.checkpointing import save_checkpoint
    from sdcpc_core.weights import save_weights

    with _umask(0o022):
        save_weights(tiny_temporal_model, tmp_path / "weights" / "final.safetensors")
        save_checkpoint(tmp_path / "run", 1, tiny_temporal_model, {"step": 1}, {}, keep=2)
        report = EvaluationReport("t", ClassList.generic(3), ConfusionMatrix(3), {}, "vspw", [])
        write_report(report, tmp_path / "eval" / "report")
    for root in ("weights", "run", "eval"):
        for path, mode in _modes(tmp_path / root).items():
            expected = 0o755 if (tmp_path / root / path).is_dir() else 0o644
            assert mode == expected, (root, path, oct(mode))


_KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
from sdcpc_core.atomic_files import publish_entries
folder, after = Path(sys.argv[1]), int(sys.argv[2])
renames, real = [0], Path.replace
def replace(self, target):
    if renames[0] == after:
        os.kill(os.getpid(), signal.SIGKILL)
    renames[0] += 1
    return real(self, target)
Path.replace = replace
publish_entries(folder / "stage", folder, ["semantic_mask.mcap", "report"])
"""


@pytest.mark.parametrize("killed_after", range(5))
def test_a_kill_while_publishing_never_leaves_a_report_beside_another_runs_bag(tmp_path, killed_after):
    """SIGKILL after each rename of publishing a bag and its report over older ones: where a report is,
    the bag beside it is of the same run (the report is the commit mark)."""
    import subprocess
    import sys

    for base, run in ((tmp_path, "old"), (tmp_path / "stage", "new")):
        base.mkdir(exist_ok=True)
        (base / "semantic_mask.mcap").write_text(run)
        (base / "report").mkdir()
        (base / "report" / "report.json").write_text(run)
    run = subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, str(tmp_path), str(killed_after)], timeout=120)
    assert run.returncode == (0 if killed_after == 4 else -9)
    bag, report = tmp_path / "semantic_mask.mcap", tmp_path / "report" / "report.json"
    if report.exists():
        assert bag.exists() and bag.read_text() == report.read_text(), killed_after
    if killed_after == 4:
        assert report.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
            "report", "semantic_mask.mcap", "stage"]


def test_a_failed_publish_puts_the_old_entries_back(tmp_path, monkeypatch):
    from pathlib import Path

    for base, value in ((tmp_path, "old"), (tmp_path / "stage", "new")):
        base.mkdir(exist_ok=True)
        (base / "a").write_text(value)
        (base / "b").write_text(value)
    real = Path.replace

    def replace(self, target):
        if self == tmp_path / "stage" / "b":
            raise OSError("disk gone")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        publish_entries(tmp_path / "stage", tmp_path, ["a", "b"])
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "stage"]
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["a", "b"]


# ------------------------------------------------------------------------------------------ locks
def test_a_locked_folder_refuses_a_second_run_until_released(tmp_path):
    out = tmp_path / "new" / "out"
    first = lock_folder(out, "sdcpc-bag eval")
    with pytest.raises(FolderInUseError, match=rf"--out {out} is in use by another run \(pid {os.getpid()}: "
                                               r"sdcpc-bag eval\); wait for it to finish or choose another --out"):
        lock_folder(out, "sdcpc-train")
    first.release()
    second = lock_folder(out, "sdcpc-train")
    assert second.created == []  # the folder exists now
    second.release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderInUseError, match="cannot be an output folder: it or a folder above it is a file"):
        lock_folder(tmp_path / "file" / "sub", "sdcpc-train")


def test_a_failed_first_run_removes_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError, match="no frame"), lock_folder(tmp_path / "a" / "b", "test"):
        raise RuntimeError("no frame")
    assert list(tmp_path.iterdir()) == []


def test_the_lock_of_a_killed_run_is_free(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sdcpc_core.atomic_files import "
                               "lock_folder; lock = lock_folder(sys.argv[1], 'holder'); print('locked', flush=True); "
                               "time.sleep(600)", str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}: holder"):
            lock_folder(tmp_path / "out", "second")
    finally:
        holder.kill()
        holder.wait(30)
    lock_folder(tmp_path / "out", "second").release()  # the kernel dropped the dead process's lock


def test_only_stale_staging_entries_are_removed(tmp_path):
    import time

    lock = lock_folder(tmp_path, "test")
    old = [tmp_path / ".final.safetensors.123-ab12.tmp", tmp_path / ".report.k2j3h4g5"]
    dead = tmp_path / f".semantic_mask.mcap.{2**22 + 1}-cd34.tmp"  # above Linux's pid_max: never a live process
    mine = tmp_path / f".semantic_mask.mcap.{os.getpid()}-ef56.tmp"
    kept = [tmp_path / "final.safetensors", tmp_path / ".notes.txt", mine]
    for path in [*old, dead, *kept]:
        path.write_text("x")
    for path in old:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    removed = remove_stale_staging(tmp_path, ["final.safetensors", "report", "semantic_mask.mcap"], lock.acquired)
    assert sorted(removed) == sorted([*old, dead])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".sdcpc.lock", *(p.name for p in kept)])
    lock.release()


# ----------------------------------------------------------------------------------------- training
def test_training_locks_its_folder_cleans_leftovers_and_follows_the_umask(tmp_path, capsys):
    """Two sdcpc-train on one --out: the second is refused in one sentence (exit status 2). A run clears
    what a killed one left, and writes its files and folders with the umask's permissions."""
    pytest.importorskip("cv2")
    import time

    import yaml
    from test_train import tiny_config, write_tree

    from sdcpc_core.tools.train import main as train

    tree = write_tree(tmp_path / "tree", frames=4)
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tree, out, schedule={"iterations": 2, "warmup_iters": 0}).to_dict()))

    with lock_folder(out, "sdcpc-train"):
        assert train(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"is in use by another run (pid {os.getpid()}: sdcpc-train); wait for it to finish or "
                        "choose another --out (runtime.out_dir)") and err.count("error:") == 1, err

    leftover = out / ".final.safetensors.99-0a1b.tmp"
    leftover.write_bytes(b"half a file")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    with _umask(0o022):
        assert train(["--config", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    assert not leftover.exists()
    modes = _modes(out)
    assert modes["final.safetensors"] == 0o644 and modes["checkpoints"] == 0o755
    iterations = [path for path in modes if path.startswith("checkpoints/iter_")]
    assert iterations and all(modes[path] == (0o755 if (out / path).is_dir() else 0o644) for path in iterations)
