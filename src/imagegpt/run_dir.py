"""The run directory of a training run: its lock, its log, its leftovers, and disk-full errors.

- :class:`RunLock`: an OS lock (``fcntl.flock``) on ``out_dir/.lock`` held for the whole run. The kernel drops it
  when the process ends, however it ends (``kill -9`` included), so it is never stale; a second run into the
  same directory is refused at once with the holder's PID.
- :func:`read_log` / :func:`rewrite_log` / :func:`append_log`: ``log.jsonl`` tolerates a partial last line (the
  disk filled, or the process died, mid-append), and is rewritten atomically.
- :func:`remove_stale_temp_files`: the hidden ``.NAME.*.tmp`` files and ``.step-*.tmp`` directories an atomic
  write leaves behind when it is killed.
- :class:`DiskFullError`: ENOSPC / EDQUOT turned into one line that says the disk is full and where.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from imagegpt.checkpoint import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["RunLock", "RunLocked", "DiskFullError", "is_disk_full", "read_log", "rewrite_log", "append_log",
           "remove_stale_temp_files", "LOCK_FILE"]  # fmt: skip

LOCK_FILE = ".lock"


class RunLocked(OSError):
    """Another process holds the run directory's lock."""


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the message says where and what is intact."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)  # one argument: str() is the message alone, without "[Errno 28]"
        self.errno = code


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class RunLock:
    """An exclusive lock on a run directory for as long as this object holds it (use as a context manager).

    Without ``fcntl`` (Windows) there is no lock: a warning says so and the run goes on.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("no fcntl here: %s is not locked against a second run", self.path.parent)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = _read_pid(self.path)
            raise RunLocked(f"{self.path.parent} is in use by another training run (PID {holder}, lock file "
                            f"{self.path}); wait for it to end or stop it, or train into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock; the file stays (deleting it would race)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def read_log(path: Path, upto_step: int | None = None) -> list[dict]:
    """The records of ``log.jsonl`` (with ``step <= upto_step``). A partial last line is dropped with a warning
    naming the file; a bad line elsewhere is a ValueError naming the file and line."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); delete it to resume without the old log") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with a step")
        except ValueError as e:
            if number == len(lines):  # the last line, without its newline: an interrupted append
                logger.warning("%s: dropped a partial last line (%d characters) left by an interrupted write",
                               path, len(line))  # fmt: skip
                break
            raise ValueError(f"{path}, line {number}, is not a log record ({e}); delete that line (or the file) "
                             "to resume") from None  # fmt: skip
        records.append(record)
    return [r for r in records if upto_step is None or r["step"] <= upto_step]


def rewrite_log(path: Path, records: list[dict]) -> None:
    """Replace ``log.jsonl`` atomically: a crash leaves the old file or the new one."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def remove_stale_temp_files(*directories: Path) -> list[Path]:
    """Delete what interrupted atomic writes left in ``directories`` (``.NAME.*.tmp``); returns what went.

    Call it only while holding the run's :class:`RunLock`: nobody else is writing there then.
    """
    removed = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for p in directory.glob(".*.tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed))  # fmt: skip
    return removed
