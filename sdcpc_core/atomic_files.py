"""Atomic file writes: readers see the old file or the complete new one, never a part."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def atomic_write(target: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp",
                 fsync: bool = False) -> None:
    """Calls ``write(temporary_path)`` for a fresh file in ``target``'s folder, then renames it onto
    ``target``; the temporary file is removed if anything fails. ``suffix`` keeps the extension a
    writer may need; ``fsync`` flushes the file to disk before the rename. The temporary file is
    created exclusively with mode 0666, so the kernel applies the umask and the result has the
    permissions a plain ``open(target, "w")`` would give it."""
    target = Path(target)
    temporary = _create_temporary(target, suffix)
    try:
        write(temporary)
        if fsync:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _create_temporary(target: Path, suffix: str) -> str:
    """A new empty file ``.<name>.<random><suffix>`` beside ``target`` (``O_EXCL``: never an existing one)."""
    while True:
        path = str(target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}"))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


__all__ = ["atomic_write"]
