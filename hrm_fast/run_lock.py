"""One writer per run directory: ``with run_lock(run_dir): ...`` for train (and any command that
writes into a run).

The lock is a file, ``RUN/.hrm-fast.lock``, made with O_EXCL and holding the writer's pid and
host (``PID HOST``). It is removed on any exit the process survives (an exception, Ctrl-C,
SIGTERM through KeyboardInterrupt); one left by a killed process is stale: its pid no longer
runs on this host, and the next writer takes it over. A live writer's lock refuses the second
one in one line.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hrm_fast.errors import UserError
from hrm_fast.files import os_reason

LOCK_NAME = ".hrm-fast.lock"
FILL_SECONDS = 2.0  # an unreadable lock younger than this may still be being written


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read_holder(path: Path) -> tuple[str | None, dict | None]:
    """(raw text, parsed holder or None) of a lock file; (None, None) if it vanished."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError):
        return "?", None
    parts = raw.split()  # "PID HOST"
    if len(parts) != 2 or not parts[0].isdigit():
        return raw, None
    return raw, {"pid": int(parts[0]), "host": parts[1]}


def _try_create(path: Path, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{me['pid']} {me['host']}\n")
    return True


def acquire(run_dir: str | Path, flag: str = "--out") -> Path:
    """Take the run's lock (a stale one is taken over); UserError naming the live holder."""
    path = Path(run_dir) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        for _ in range(20):  # a lock that vanished or is being filled in: look again
            if _try_create(path, me):
                return path
            raw, holder = _read_holder(path)
            if raw is None:
                continue
            if holder is None:
                if raw == "?":
                    raise UserError(f"{flag} {run_dir}: cannot read its lock file {path}")
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < FILL_SECONDS:
                    time.sleep(0.25)  # its writer may be filling it in right now
                    continue
                # Garbage, or a writer killed between creating and filling it: stale.
            elif holder["host"] != me["host"]:
                raise UserError(
                    f"{flag} {run_dir}: another hrm-fast process (pid {holder['pid']} on "
                    f"{holder['host']}) is writing this run; if it is gone, delete {path}"
                )
            elif _pid_alive(holder["pid"]):
                raise UserError(
                    f"{flag} {run_dir}: another hrm-fast process (pid {holder['pid']}) is "
                    "writing this run; wait for it to end or choose another --out"
                )
            if _read_holder(path)[0] == raw:  # still the stale one: take it over
                path.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {run_dir}: cannot lock the run: {os_reason(e)}") from None
    raise UserError(f"{flag} {run_dir}: another process keeps taking its lock {path}")


def release(path: Path) -> None:
    """Remove the lock if it is still this process's."""
    _, holder = _read_holder(path)
    if holder is not None and holder["pid"] == os.getpid():
        try:
            path.unlink()
        except OSError:
            pass


@contextmanager
def run_lock(run_dir: str | Path, flag: str = "--out") -> Iterator[Path]:
    path = acquire(run_dir, flag)
    try:
        yield path
    finally:
        release(path)
