"""Writing outputs safely: atomic replacement, an appending log, and one-line OS errors.

Every file a command writes (checkpoints, config.json, eval.json, eval.png, probe.json) goes to a
temporary file in the same folder, is fsynced, then renamed over its final name: a full disk or an
I/O error leaves the previous version intact and no temporary file behind.

Exit codes: a path that cannot be used before any work starts is bad input (2); a write that fails
after work has begun (disk full, I/O error mid-run) exits ``errors.EXIT_WRITE_FAILED`` (4).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from hrm_fast.errors import UserError


def os_reason(e: OSError) -> str:
    """``No space left on device (ENOSPC)``: the OS message and its errno name, on one line."""
    name = errno.errorcode.get(e.errno) if e.errno is not None else None
    text = e.strerror or str(e) or type(e).__name__
    return " ".join(f"{text} ({name})".split()) if name else " ".join(text.split())


def prepare_dir(path: str | Path, flag: str) -> Path:
    """Create ``path`` if needed and prove it takes a new file; a UserError (exit 2) otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hrm-fast-write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = f"{flag} {p}" if flag else str(p)
        raise UserError(f"{where}: cannot write there: {os_reason(e)}") from None
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` to a temporary file, fsync, rename over ``path``.

    Raises the OSError of the step that failed; the temporary file is removed first.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would; mkstemp gives 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)  # make a rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` hold ``src``'s bytes, atomically: a hard link renamed over ``dst`` (no copy,
    and ``dst`` outlives the deletion of ``src``), or a copy where the file system has no links.
    Raises the OSError of the step that failed; the old ``dst`` stays intact."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    try:
        _remove_quietly(str(tmp))
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        _remove_quietly(str(tmp))
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        with open(src, "rb") as f_src:
            atomic_write(dst, lambda f: shutil.copyfileobj(f_src, f))
        return
    _fsync_dir(dst.parent)


def write_output(path: str | Path, data: str | bytes, error=UserError) -> Path:
    """Atomically write a result file; an OSError becomes ``error`` naming the path."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        atomic_write(path, lambda f: f.write(raw))
    except OSError as e:
        raise error(f"{path}: cannot write: {os_reason(e)}") from None
    return path


class AppendLog:
    """An append-only text log (metrics.jsonl): a failed append is cut back to whole lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        data = line.encode()
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            try:  # drop the partial line so the log stays valid JSON lines
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
