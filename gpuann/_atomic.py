"""Atomic file replacement: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file in the same folder.

    On success the file is flushed and fsynced, given the usual permissions, renamed over
    ``path`` and the folder fsynced. On any error the temporary file is removed and ``path`` is
    left as it was.

    The temporary name is short whatever the target's (``.gpuann-<tag>.<pid>.<random>.tmp``,
    where ``<tag>`` is a hash of the target name), so any legal file name can be saved to; and a
    save first removes temporaries of the same target left by a process that no longer runs
    (one killed mid-save).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> with atomic_write(target) as f:
    ...     _ = f.write(b"hello")
    >>> target.read_bytes()
    b'hello'
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"path: folder {str(directory)!r} does not exist")
    tag = hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    _remove_stale(directory, tag)
    tmp = directory / f".gpuann-{tag}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(directory: Path, tag: str) -> None:
    """Remove temporaries for this target whose writing process is gone."""
    for stale in directory.glob(f".gpuann-{tag}.*.tmp"):
        parts = stale.name.split(".")
        pid = int(parts[2]) if len(parts) == 5 and parts[2].isdigit() else None
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                stale.unlink()


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
