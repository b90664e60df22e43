"""Atomic file writes, staging folders, exclusive output folders, with the permissions of the umask.

* ``atomic_write(target, write)``: readers see the old file or the complete new one, never a part.
* ``staging_folder(target)``: a fresh folder beside ``target`` to build it in (``.<name>.<pid>-<random>.tmp``).
* ``replace_path(source, target)``: renames a finished file or folder onto ``target``.
* ``publish_entries(staging, folder, names)``: moves several finished entries into ``folder`` so that
  a crash never leaves a new entry beside an old one.
* ``lock_folder(folder, what)``: an exclusive lock on an output folder for a whole run
  (``fcntl.flock`` on ``folder/.sdcpc.lock``); a second run on the folder gets ``FolderInUseError``.
* ``remove_stale_staging(folder, names, before)``: removes what killed runs left while writing.

Permissions: every file written here gets ``0666 & ~umask`` and every folder ``0777 & ~umask``
(``-rw-r--r--`` and ``drwxr-xr-x`` under umask 022), what ``open(path, "w")`` and ``mkdir`` give,
whatever mode the writer a caller passes creates its file with (safetensors writes ``0600``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOCK_FILE = ".sdcpc.lock"


class FolderInUseError(ValueError):
    """Another process holds the lock of an output folder, or the path cannot be one; one sentence says which."""


def atomic_write(target: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp",
                 fsync: bool = False) -> None:
    """Calls ``write(temporary_path)`` for a fresh file in ``target``'s folder, then renames it onto
    ``target``; the temporary file is removed if anything fails. ``suffix`` keeps the extension a
    writer may need; ``fsync`` flushes the file to disk before the rename. The temporary file is
    created exclusively with mode 0666, so the kernel applies the umask; that mode is set again after
    ``write`` (a writer may recreate the file with its own), so the result has the permissions a plain
    ``open(target, "w")`` would give it."""
    target = Path(target)
    temporary = _create_temporary(target, suffix)
    try:
        mode = os.stat(temporary).st_mode & 0o777  # 0666 & ~umask, read without touching the umask
        write(temporary)
        os.chmod(temporary, mode)
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


def _staging_name(target: Path, suffix: str) -> Path:
    """``.<name>.<pid>-<random><suffix>`` beside ``target``: hidden, and naming the process that writes it."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def _create_temporary(target: Path, suffix: str) -> str:
    """A new empty file beside ``target`` (``O_EXCL``: never an existing one), mode 0666 & ~umask."""
    while True:
        path = str(_staging_name(target, suffix))
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def staging_folder(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty folder beside ``target`` to build it in, mode 0777 & ~umask (``tempfile.mkdtemp``
    gives 0700, which a rename would then publish)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = _staging_name(target, suffix)
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames ``source`` (a file or a folder) onto ``target``; an existing ``target`` is renamed aside
    first (put back if the rename fails) and removed once the new one is in place."""
    publish_entries(Path(source).parent, Path(target).parent, [(Path(source).name, Path(target).name)])


def publish_entries(staging: str | os.PathLike, folder: str | os.PathLike,
                    names: Sequence[str | tuple[str, str]]) -> None:
    """Moves ``staging/<name>`` to ``folder/<name>`` for each of ``names`` (or ``(source name, target
    name)`` pairs), replacing what is there, in an order that a crash at any point cannot turn into a
    mix of old and new entries: every existing target is first renamed aside (in reverse order), then
    the new entries are moved in in the order of ``names``, then the old ones are removed. The last
    name (e.g. a report describing the others) is thus the commit mark: wherever it is present, the
    entries before it are of the same run. A failed rename puts the old entries back."""
    staging, folder = Path(staging), Path(folder)
    pairs = [(name, name) if isinstance(name, str) else name for name in names]
    retired: list[tuple[Path, Path]] = []
    placed: list[tuple[Path, Path]] = []
    try:
        for _, name in reversed(pairs):  # the commit mark goes first, so it never names an entry gone
            target = folder / name
            if target.exists() or target.is_symlink():
                aside = _staging_name(target, ".old")
                target.replace(aside)
                retired.append((aside, target))
        for source, name in pairs:
            (staging / source).replace(folder / name)
            placed.append((folder / name, staging / source))
    except BaseException:
        for new, back in reversed(placed):
            new.replace(back)
        for aside, target in reversed(retired):
            aside.replace(target)
        raise
    for aside, _ in retired:
        _remove(aside)


# ------------------------------------------------------------------------------------- folder locks
class FolderLock:
    """An exclusive ``fcntl.flock`` on ``folder/.sdcpc.lock``, held until ``release`` (or the process
    ends: the kernel drops it, so a killed run never leaves the folder locked). ``acquired``: the
    wall time it was taken; ``created``: the folders that ``lock_folder`` made, outermost first."""

    def __init__(self, folder: Path, descriptor: int, created: list[Path]) -> None:
        self.folder = folder
        self.acquired = time.time()
        self.created = created
        self._descriptor: int | None = descriptor

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def release(self, remove_created: bool = False) -> None:
        """Drops the lock; ``remove_created``: also removes the lock file and the folders that
        ``lock_folder`` created, where they hold nothing else (a failed first run leaves nothing)."""
        if self._descriptor is None:
            return
        if remove_created and self.created:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)  # while still locked: no one else took it
        os.close(self._descriptor)
        self._descriptor = None
        if remove_created:
            for path in reversed(self.created):
                try:
                    path.rmdir()
                except OSError:
                    break

    def __del__(self) -> None:  # an owner dropped without release: the lock goes with it
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.release(remove_created=exc_type is not None)


def lock_folder(folder: str | os.PathLike, what: str, *, option: str = "--out") -> FolderLock:
    """Creates ``folder`` if needed (mode 0777 & ~umask) and locks it for this process; ``FolderInUseError``
    (one sentence naming ``option`` and the process holding it) when another process has it, or when the
    path is not a folder. ``what`` names the run in the lock file, which that message quotes
    (``"sdcpc-bag eval"``)."""
    import fcntl

    folder = Path(folder)
    created = [p for p in (*reversed(folder.parents), folder) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FolderInUseError(f"{option} {folder} cannot be an output folder: it or a folder above it is a file; give "
                          "a folder path") from None
    except OSError as error:
        raise FolderInUseError(f"{option} {folder} cannot be created ({error.strerror or error}); give a writable "
                          "folder") from None
    path = folder / LOCK_FILE
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderInUseError(f"{option} {folder} is in use by another run ({_holder(path)}); wait for it to "
                              f"finish or choose another {option}") from None
        try:  # the file may have been removed (a failed first run cleaning up) between open and flock
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()}: {what}\n".encode(), 0)
    return FolderLock(folder, descriptor, created)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a running process"


_PID = re.compile(r"(\d+)-[0-9a-f]+")


def remove_stale_staging(folder: str | os.PathLike, names: Sequence[str], before: float) -> list[Path]:
    """Removes what runs killed while writing ``names`` in ``folder`` left there: entries
    ``.<name>.*`` (temporary files, staging and retired folders) last modified before ``before`` (the
    time this run locked the folder: no one else writes there since) or written by a process that no
    longer runs. Returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    prefixes = tuple(f".{name}." for name in names)
    for path in folder.iterdir():
        if not path.name.startswith(prefixes):
            continue
        try:
            modified = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        owner = _PID.match(path.name[len(next(p for p in prefixes if path.name.startswith(p))):])
        if modified < before or (owner is not None and not _alive(int(owner[1]))):
            _remove(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


__all__ = ["FolderInUseError", "FolderLock", "LOCK_FILE", "atomic_write", "lock_folder", "publish_entries",
           "remove_stale_staging", "replace_path", "staging_folder"]
