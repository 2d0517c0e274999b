"""mixlora.runlock: one process per output folder, checked with real second processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixlora.runlock import LOCK_NAME, FolderLockedError, RunLock, run_lock
from mixlora.train.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# A second process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = textwrap.dedent("""
    import sys
    from mixlora.runlock import run_lock
    with run_lock(sys.argv[1], what="holder-test"):
        print("locked", flush=True)
        sys.stdin.read()
""")


def start_holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "locked\n", proc.stderr.read()
    return proc


def test_second_process_is_refused_with_the_holders_pid_and_then_admitted(tmp_path):
    folder = tmp_path / "out"
    holder = start_holder(folder)
    try:
        with pytest.raises(FolderLockedError) as err:
            with run_lock(folder, what="eval"):
                pytest.fail("the lock was granted while another process held it")
        message = str(err.value)
        assert str(folder) in message
        assert f"pid {holder.pid}: holder-test:" in message  # what the holder wrote into the lock file
        assert "Wait for it to finish, or choose another output folder" in message
        assert isinstance(err.value, ConfigError)  # train.py and eval.py turn ConfigErrors into exit status 2
    finally:
        holder.stdin.close()  # the holder leaves its with-block and exits
        assert holder.wait(timeout=60) == 0, holder.stderr.read()
    with run_lock(folder, what="eval") as lock:  # released by the holder: ours now
        assert lock.held
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}: eval: ")
    assert not lock.held


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = start_holder(tmp_path)
    with pytest.raises(FolderLockedError):
        RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)  # no clean-up code runs in the holder
    assert holder.wait(timeout=60) == -signal.SIGKILL
    lock = RunLock(tmp_path, what="training").acquire()  # the kernel released the dead process's lock
    try:
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}: training: ")
    finally:
        lock.release()
        holder.stdin.close()


def test_acquire_release_object_and_folder_creation(tmp_path):
    folder = tmp_path / "a/b"  # created on acquire, like an output folder
    first = RunLock(folder, what="training")
    assert first.acquire() is first and first.held and folder.is_dir()
    # A second lock object of this very process is refused too (flock belongs to each open of the file), so an
    # in-process second evaluation of the same folder is caught as well.
    with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}: training:"):
        RunLock(folder).acquire()
    with pytest.raises(RuntimeError, match="already held"):
        first.acquire()
    first.release()
    first.release()  # releasing twice is harmless (a finally after an explicit release)
    with RunLock(folder):
        pass
