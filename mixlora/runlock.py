"""One writer per output folder: an exclusive, non-blocking advisory lock on ``FOLDER/.lock``.

Two processes appending to the same run or evaluation folder interleave their files (every prediction written
twice, checkpoints overwritten by a run that started later), so entry points take this lock on their output
folder for as long as they write to it, and a second process stops at once with a message instead of waiting.

Why ``fcntl.flock`` and not "create a file if absent": the kernel drops a flock when its holder exits for any
reason, SIGKILL and out-of-memory kills included, so a crashed run never leaves a stale lock that someone has
to delete by hand. The lock file itself stays behind (empty of meaning once unlocked) and is reused.
The pid and command written into it only make the error message useful; they are never trusted for locking.

Caveats: flock is advisory (only processes that ask for it are kept out) and works between processes on one
machine. On NFS, Linux emulates flock with POSIX byte-range locks, which works on NFSv4 but not reliably on
older mounts or when two *machines* share a folder; use distinct output folders there. Under multi-process
(distributed) training take the lock in rank 0 only: the other ranks are the same run, and would be locked out.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Optional

from mixlora.train.settings import ConfigError

LOCK_NAME = ".lock"

__all__ = ["LOCK_NAME", "FolderLockedError", "RunLock", "run_lock"]


class FolderLockedError(ConfigError):
    """Another process holds the lock of the folder. A :class:`ConfigError`, so entry points exit with status 2."""


class RunLock:
    """The lock of one folder; ``acquire()``/``release()``, or use it as a context manager (see :func:`run_lock`).

    Args:
        folder: the output folder (created if missing); the lock file is ``folder/.lock``.
        what: what this process does there ("eval", "training"), for the message another process will show.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`FolderLockedError` at once if another process holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: the holder's pid/command must stay readable until we own the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{self.folder} is in use by another process ({holder}); two processes writing the same folder "
                "would mix their files. Wait for it to finish, or choose another output folder "
                "(output_dir=...).") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {self.what}: {_command()}\n".encode("utf-8", "replace"))
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (a no-op if not held). The file stays: deleting it would let a third process lock a
        new file while a second still waits on the old one."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(folder: str | os.PathLike, what: str = "a run") -> RunLock:
    """``with run_lock(folder, what="eval"):`` holds ``folder/.lock`` for the block (see the module docstring).

    Raises :class:`FolderLockedError` (a ``ConfigError``) on entry if another process holds it.
    """
    return RunLock(folder, what)


def _command() -> str:
    text = " ".join(sys.argv) or sys.executable
    return text if len(text) <= 300 else text[:297] + "..."


def _read_holder(fd: int) -> str:
    """What the holder wrote into the lock file, e.g. "pid 123: eval: eval.py run=..."; a fallback if empty."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError as err:
        return f"its details are unreadable: {err}"
    return text or "it has not written its pid yet"
