"""Training checkpoints, written atomically.

Layout inside a run folder::

    checkpoints/iter_000100/model.safetensors   weights + model config + class list (save_weights)
    checkpoints/iter_000100/state.pt            optimiser, scheduler, grad scaler, step, next sample
    checkpoints/latest                          the name of the newest complete checkpoint folder

A checkpoint folder is built under a temporary name in ``checkpoints/`` and renamed when both files
are complete; ``latest`` is then replaced (``os.replace``) and the oldest folders beyond ``keep`` are
removed. A run killed at any moment therefore leaves ``latest`` naming a complete checkpoint.
``state.pt`` holds only tensors and plain values and is read with ``torch.load(weights_only=True)``;
its entries are checked before anything is restored (``read_state``). ``latest`` is only followed to an
``iter_<step>`` folder directly inside ``checkpoints/``: a damaged or edited pointer is refused, naming it.
It stores no RNG state: the trainer seeds torch, numpy and python from ``(seed, rank, step)`` at every
step and the clip stream from ``(seed, sample index)``, so the step and the next sample index are all
a resume needs, for every process (not only the one that writes checkpoints) and any worker count.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from ..atomic_files import atomic_write, staging_folder
from ..weights import load_weights, save_weights
from ..weights.files import load_torch

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
    """The folder ``checkpoints/latest`` names, or None when there is none.

    ``ValueError`` naming the pointer when it is not UTF-8 or names anything but a complete ``iter_<step>``
    folder directly inside ``checkpoints/`` (a pointer is never followed out of the run)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    found = ", ".join(p.name for _, p in list_checkpoints(run_dir)) or "none"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{pointer} is not UTF-8 text; it must hold the name of a checkpoint folder of this run "
                         f"(found: {found}): write the newest one's name into it") from None
    target = folder / name
    inside = _NAME.match(name) is not None and not target.is_symlink() and (
        not target.exists() or target.resolve().parent == folder.resolve())
    if not inside:
        raise ValueError(f"{pointer} names {name[:80]!r}, which is not a checkpoint folder of this run (an iter_<step> "
                         f"folder in {folder}; found: {found}): write the newest one's name into it")
    if not (target / WEIGHTS_FILE).is_file() or not (target / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {name}, which is not a complete checkpoint folder "
                                f"({WEIGHTS_FILE} + {STATE_FILE})")
    return target


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
    staging = staging_folder(folder / name)  # mode 0777 & ~umask, as the published folder must have
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


# The entries of state.pt and what each must be.
STATE_ENTRIES: dict[str, tuple[type, str]] = {
    "optimizer": (dict, "a mapping"), "scheduler": (dict, "a mapping"), "scaler": (dict, "a mapping"),
    "step": (int, "an integer >= 0"), "next_sample": (int, "an integer >= 0"),
    "unreadable_images": (int, "an integer >= 0"),
}


def read_state(folder: Path) -> dict:
    """The training state of a checkpoint folder, checked entry by entry; ``ValueError`` naming the file."""
    file = Path(folder) / STATE_FILE
    state = load_torch(file)  # weights_only: a pickle payload is refused, never run
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a training state")
    absent = [name for name in STATE_ENTRIES if name not in state]
    if absent:
        raise ValueError(f"{file} lacks {', '.join(absent)}")
    for name, (kind, accepted) in STATE_ENTRIES.items():
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise ValueError(f"{file}: {name} must be {accepted}, got {str(value)[:40]!r}")
    return state


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict:
    """Loads the weights of a checkpoint folder into ``model`` (strictly) and returns its training state;
    ``ValueError`` (``cannot resume from <folder>: ...``) for a damaged one, before the model is touched."""
    try:
        state = read_state(folder)
        load_weights(model, folder / WEIGHTS_FILE, strict=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot resume from {folder}: {error}") from None
    return state


__all__ = ["CHECKPOINTS_DIR", "LATEST", "STATE_ENTRIES", "STATE_FILE", "WEIGHTS_FILE", "atomic_write",
           "atomic_write_text", "checkpoint_name", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "read_state", "remove_stale_temporaries", "save_checkpoint"]
