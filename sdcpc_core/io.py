"""Atomic file writes: readers see the old file or the complete new one, never a part."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(target: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp",
                 fsync: bool = False) -> None:
    """Calls ``write(temporary_path)`` for a fresh file in ``target``'s folder, then renames it onto
    ``target``; the temporary file is removed if anything fails. ``suffix`` keeps the extension a
    writer may need; ``fsync`` flushes the file to disk before the rename. The file gets the
    permissions a plain ``open(target, "w")`` would give it (0666 minus the umask), not the private
    0600 of the temporary file."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` can only be
    read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


__all__ = ["atomic_write"]
