"""Training checkpoints, written atomically.

Layout inside a run folder::

    checkpoints/iter_000100/model.safetensors   weights + model config + class list (save_weights)
    checkpoints/iter_000100/state.pt            optimiser, scheduler, grad scaler, step, next sample
    checkpoints/latest                          the name of the newest complete checkpoint folder

A checkpoint folder is built under a temporary name in ``checkpoints/`` and renamed when both files
are complete; ``latest`` is then replaced (``os.replace``) and the oldest folders beyond ``keep`` are
removed. A run killed at any moment therefore leaves ``latest`` naming a complete checkpoint.
``state.pt`` holds only tensors and plain values and is read with ``torch.load(weights_only=True)``.
It stores no RNG state: the trainer seeds torch, numpy and python from ``(seed, rank, step)`` at every
step and the clip stream from ``(seed, sample index)``, so the step and the next sample index are all
a resume needs, for every process (not only the one that writes checkpoints) and any worker count.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..atomic_files import atomic_write
from ..weights import load_weights, save_weights

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
_NAME = re.compile(r"^iter_(\d+)$")


def atomic_write_text(target: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``target`` through a temporary file in the same folder."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(target, write)


def checkpoint_name(step: int) -> str:
    return f"iter_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders ``(step, path)``, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``checkpoints/latest`` names, or None when there is none."""
    pointer = Path(run_dir) / CHECKPOINTS_DIR / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which is not a complete checkpoint folder "
                                f"({WEIGHTS_FILE} + {STATE_FILE})")
    return folder


def remove_stale_temporaries(run_dir: Path) -> None:
    """Removes the temporary files and folders (``.<name>.*``) a run killed while writing left behind."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    for path in folder.glob(".*") if folder.is_dir() else ():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict, metadata: dict,
                    keep: int) -> Path:
    """Writes ``checkpoints/iter_<step>/`` atomically, points ``latest`` at it and keeps the newest ``keep``."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}."))
    try:
        save_weights(model, staging / WEIGHTS_FILE, metadata=metadata)
        torch.save(state, staging / STATE_FILE)
        final = folder / name
        if final.exists():  # written before by a run that was resumed from an older checkpoint
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(folder / LATEST, name + "\n")
    for _, old in list_checkpoints(run_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict:
    """Loads the weights of a checkpoint folder into ``model`` (strictly) and returns its training state."""
    load_weights(model, folder / WEIGHTS_FILE, strict=True)
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


__all__ = ["CHECKPOINTS_DIR", "LATEST", "STATE_FILE", "WEIGHTS_FILE", "atomic_write", "atomic_write_text",
           "checkpoint_name", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "remove_stale_temporaries",
           "save_checkpoint"]
