"""Writing files and folders so that a crash never leaves half of one: the project's one atomic writer.

A file is written to a temporary name in its destination's folder, flushed to disk, given its final
mode, and renamed over the destination in one ``os.replace``: a reader (or a crash) sees the old
file or the new one. A folder (a converted model) is built under a temporary name beside its
destination and swapped into place; on Linux the swap is one ``renameat2(RENAME_EXCHANGE)``, so the
destination is never missing, even for an instant; elsewhere it is two renames, and a crash between
them is repaired by the next write into the same place (:func:`recover`).

Modes follow the user's umask, as ``open()`` would create the file: 0o666 & ~umask for a file,
0o777 & ~umask for a folder, and an existing file keeps its own mode when it is replaced.
Temporary names carry the writer's process id, ``.NAME.tmp-PID-XXXX``, so a later run can tell
the leftovers of a killed writer (whose process is gone) from those of one still running.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

PathLike = str | os.PathLike


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The mode a replaced file keeps, or the one a new file gets under the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


@contextmanager
def atomic_file(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` in one step
    (fsynced, with :func:`new_file_mode`). ``suffix`` ends the temporary name (an image writer
    that picks the format from the extension needs the real one)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_with(path: PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` on a temporary path with ``path``'s extension, then move it into place."""
    path = Path(path)
    with atomic_file(path, suffix=path.suffix or ".tmp") as tmp:
        writer(tmp)


# Folders ----------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _pid_of(name: str, dest_name: str, kind: str) -> int | None:
    prefix = f".{dest_name}.{kind}-"
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def recover(dest: PathLike, log: Callable[[str], None] = print) -> None:
    """Repair what a killed folder writer left beside ``dest``: put a set-aside old ``dest`` back if
    ``dest`` is missing, and remove the temporary folders of writers whose process is gone."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for entry in sorted(dest.parent.iterdir()):
        for kind in ("old", "tmp"):
            pid = _pid_of(entry.name, dest.name, kind)
            if pid is None or _alive(pid):
                continue
            if kind == "old" and (entry / dest.name).exists() and not dest.exists():
                os.replace(entry / dest.name, dest)
                log(f"recovered {dest} from {entry} (an earlier replacement was interrupted)")
            log(f"removing {entry}, left by an interrupted run (process {pid})")
            shutil.rmtree(entry, ignore_errors=True)


def temporary_folder(dest: PathLike) -> Path:
    """A fresh folder beside ``dest`` to build it in, with the umask's mode (mkdtemp makes 0o700)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-{os.getpid()}-"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux's renameat2; False where it is not available."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def swap_into_place(tmp: PathLike, dest: PathLike) -> None:
    """Make the finished folder ``tmp`` the folder ``dest``; an existing ``dest`` is replaced.

    With an atomic exchange ``dest`` always exists; without one the old ``dest`` is first renamed
    aside (``.NAME.old-PID-*``), which :func:`recover` puts back if a crash comes before the second
    rename."""
    tmp, dest = Path(tmp), Path(dest)
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old dest
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-{os.getpid()}-"))
    os.replace(dest, old / dest.name)
    try:
        os.replace(tmp, dest)
    except OSError:
        os.replace(old / dest.name, dest)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)
