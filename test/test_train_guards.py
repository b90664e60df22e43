"""``sdcpc-train`` refuses what a machine cannot do and damaged runs in one sentence, before writing anything.

Regression cases of a fault-injection run: unbounded config fields (threads, loader workers, iterations,
crop size), output paths that are files, a failed ``--init-from`` that left ``config.yaml`` behind, and
resuming from a damaged run (truncated or incomplete ``state.pt``, a pickle payload, a ``latest`` that is
not UTF-8 or points outside the run).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("cv2")

from test_train import tiny_config, write_tree

from sdcpc_core.train.checkpointing import CHECKPOINTS_DIR, LATEST, STATE_FILE, latest_checkpoint
from sdcpc_core.train.config import ConfigError
from sdcpc_core.train.trainer import DistEnv, Trainer


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"), frames=4)


@pytest.fixture(scope="module")
def finished_run(tree, tmp_path_factory) -> Path:
    """A two-step run with one checkpoint (iteration 2)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    trainer = Trainer(tiny_config(tree, out, schedule={"iterations": 2, "warmup_iters": 0}), env=DistEnv(),
                      progress=False)
    trainer.fit()
    trainer.close()
    return out


def run_cli(argv, capsys) -> tuple[int, str]:
    from sdcpc_core.tools.train import main

    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err.strip()


def config_file(tree, tmp_path, **sections) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tree, tmp_path / "unused", **sections).to_dict()))
    return path


# ------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("override, field", [
    ("runtime.threads=100000", "runtime.threads"),
    ("data.num_workers=100000", "data.num_workers"),
    ("schedule.iterations=1e20", "schedule.iterations"),
    ("schedule.iterations=100000000000000000000", "schedule.iterations"),
    ("schedule.iterations=10000000000", "schedule.iterations"),
    ("data.crop_size=[100000, 100000]", "data.crop_size"),
    ("data.base_scale=[100000, 100000]", "data.base_scale"),
    ("val.short_side=100000", "val.short_side"),
])
def test_fields_are_bounded_to_what_a_machine_can_do(override, field, tree, tmp_path, capsys):
    status, err = run_cli(["--config", config_file(tree, tmp_path), "--out", tmp_path / "run", "--set", override],
                          capsys)
    assert status == 2 and err.startswith(f"sdcpc-train: error: config field {field} must be") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_threads_bound_follows_the_cpu_count(tree, tmp_path):
    cpus = os.cpu_count() or 1
    tiny_config(tree, tmp_path, runtime={"threads": cpus})
    with pytest.raises(ConfigError, match=rf"runtime.threads must be an integer in 0..{cpus}"):
        tiny_config(tree, tmp_path, runtime={"threads": cpus + 1})


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_is_a_file_is_one_sentence(where, tree, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sub"
    status, err = run_cli(["--config", config_file(tree, tmp_path), "--out", out], capsys)
    assert status == 2 and "\n" not in err and "Traceback" not in err
    assert f"{blocker} is a file, not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_failed_init_from_leaves_nothing_behind(tree, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    out = tmp_path / "run"
    status, err = run_cli(["--config", config_file(tree, tmp_path), "--out", out, "--init-from", broken], capsys)
    assert status == 2 and str(broken) in err and "\n" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------------- damaged resume
def _damaged_copy(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _resume(run: Path, tree, capsys) -> tuple[int, str]:
    config = run / "config.yaml"
    return run_cli(["--config", config, "--out", run, "--resume"], capsys)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("damage, expected", [
    ("truncated", r"cannot resume from .*iter_000002: .*state.pt is not a readable PyTorch file"),
    ("missing_keys", r"cannot resume from .*iter_000002: .*state.pt lacks optimizer, scheduler"),
    ("wrong_types", r"cannot resume from .*iter_000002: .*state.pt: step must be an integer >= 0, got 'two'"),
    ("pickle", r"cannot resume from .*iter_000002: .*state.pt contains arbitrary Python objects.*will not be "
               r"unpickled"),
])
def test_damaged_state_is_refused_in_one_sentence(damage, expected, finished_run, tree, tmp_path, capsys):
    run = _damaged_copy(finished_run, tmp_path)
    state_file = latest_checkpoint(run) / STATE_FILE
    if damage == "truncated":
        state_file.write_bytes(state_file.read_bytes()[:200])
    elif damage == "missing_keys":
        torch.save({"step": 2, "next_sample": 4, "unreadable_images": 0}, state_file)
    elif damage == "wrong_types":
        state = torch.load(state_file, weights_only=True)
        torch.save({**state, "step": "two"}, state_file)
    else:
        state_file.write_bytes(pickle.dumps({"step": Payload()}, protocol=2))
    config_before = (run / "config.yaml").read_bytes()
    status, err = _resume(run, tree, capsys)
    import re

    assert status == 2 and "\n" not in err and "Traceback" not in err and re.search(expected, err), err
    assert (run / "config.yaml").read_bytes() == config_before


def test_latest_that_is_not_utf8_is_named(finished_run, tree, tmp_path, capsys):
    run = _damaged_copy(finished_run, tmp_path)
    pointer = run / CHECKPOINTS_DIR / LATEST
    pointer.write_bytes(b"\xff\xfeiter\x00")
    status, err = _resume(run, tree, capsys)
    assert status == 2 and "\n" not in err and f"{pointer} is not UTF-8 text" in err and "iter_000002" in err


@pytest.mark.parametrize("target", ["../../../outside/iter_000002", "/tmp/iter_000002", "iter_2/../../x"])
def test_latest_outside_the_run_is_refused(target, finished_run, tree, tmp_path, capsys):
    run = _damaged_copy(finished_run, tmp_path)
    outside = tmp_path / "outside" / "iter_000002"
    outside.mkdir(parents=True)
    for name in ("model.safetensors", STATE_FILE):
        (outside / name).write_bytes((latest_checkpoint(run) / name).read_bytes())
    pointer = run / CHECKPOINTS_DIR / LATEST
    pointer.write_text(target + "\n")
    with pytest.raises(ValueError, match=r"names '.*', which is not a checkpoint folder of this run"):
        latest_checkpoint(run)
    status, err = _resume(run, tree, capsys)
    assert status == 2 and "not a checkpoint folder of this run" in err


def test_latest_that_is_a_link_out_of_the_run_is_refused(finished_run, tmp_path):
    run = _damaged_copy(finished_run, tmp_path)
    real = latest_checkpoint(run)
    moved = tmp_path / "elsewhere"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)
    with pytest.raises(ValueError, match="not a checkpoint folder of this run"):
        latest_checkpoint(run)


def test_checkpoints_carry_the_recommended_input_size(finished_run):
    from sdcpc_core.weights.files import read_safetensors_metadata
    from sdcpc_core.weights.format import read_input_size

    weights = latest_checkpoint(finished_run) / "model.safetensors"
    assert read_input_size(read_safetensors_metadata(weights), weights) == (64, 96)  # data.base_scale [96, 64]
