"""Files and folders that readers see whole or not at all: atomic text files, an atomic folder swap, an OS lock that
keeps a second process off an output being written, and disk errors in one line."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import LmcError


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """A text handle on a temp file beside `path` (named for this process, created with the usual permissions),
    renamed over `path` when the block ends and removed if it fails: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename over it (never a half-written file)."""
    with atomic_text_file(path) as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def os_error(exc: OSError) -> LmcError:
    """Disk and permission errors -> one line."""
    where = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        return LmcError(f"disk full while writing {where}; free space and re-run the same command "
                        "(it continues from the last checkpoint)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LmcError(f"permission denied writing {where}; choose another --out")
    return LmcError(f"{exc.strerror or exc} {where}".strip())


def swap_into_place(built: Path, target: Path) -> None:
    """Move a finished folder over `target`. The old one is renamed aside first and removed after, so at every moment
    `target` is either the old folder or the whole new one."""
    if not target.exists():
        os.replace(built, target)
        return
    trash = target.with_name(f".{target.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(target, trash)
    os.replace(built, target)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def replace_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside `target` (locked for this process) to write into: swapped into place when the block
    ends, removed if it fails. The lock goes with the block, unless the caller already held it."""
    with outputs_released():
        hold_output(target)
        built = target.with_name(f".{target.name}.partial")
        try:
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir(parents=True)
            yield built
            swap_into_place(built, target)
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            raise


# ------------------------------------------------------------------------------------------------ output locks

_HELD: dict[Path, int] = {}  # lock file -> its descriptor, for the outputs this process writes (re-entrant)


def lock_file(target: Path) -> Path:
    """`.NAME.lock` beside the output NAME (a run folder, a report folder, a cache entry)."""
    target = Path(os.path.abspath(target.expanduser()))
    return target.with_name(f".{target.name}.lock")


def hold_output(target: Path, what: str | None = None) -> None:
    """Take the OS lock (flock) of `target` for this process, or stop with one line naming the process that holds
    it. The kernel drops the lock when its holder exits, killed or not, so a crashed run never blocks the next."""
    path = lock_file(target)
    if path in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LmcError(f"{what or target} is being written by process {holder}; wait for it to finish or "
                           "choose another output") from None
        if _same_file(fd, path):  # not a lock file its last holder unlinked while we waited to open it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[path] = fd


def release_output(target: Path) -> None:
    """Give the lock of `target` back and remove its file (a no-op where this process does not hold it)."""
    _release(lock_file(target))


@contextlib.contextmanager
def outputs_released() -> Iterator[None]:
    """The locks taken inside the block are given back when it ends, however it ends: a stage that stops on bad
    input after its --out was checked leaves no lock behind, while the locks of an enclosing search stay held."""
    before = set(_HELD)
    try:
        yield
    finally:
        for path in set(_HELD) - before:
            _release(path)


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        _release(path)


def _release(path: Path) -> None:
    fd = _HELD.pop(path, None)
    if fd is not None:
        path.unlink(missing_ok=True)  # unlinked while still locked: the next holder re-checks the inode
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
