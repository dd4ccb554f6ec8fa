"""The run directory's lock: one edgetune process, and one thread of it, works in a run at a time."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import InputError
from edgetune.pathnames import beside


@dataclass
class _Held:
    owner: threading.Thread
    fd: int | None  # None where this system or directory cannot lock
    holder: str  # what a refused thread is told is working there
    depth: int = 1


_held_locks: dict[Path, _Held] = {}  # lock file -> the thread that holds it, which re-enters it
_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(run_dir: Path | str, command: str) -> Iterator[None]:
    """One edgetune process at a time works in a run directory: a second `make demo`, or an
    `edgetune bench` started while `edgetune export` still writes, is refused, where it would race
    the first over the same files. The lock is an flock on a file beside the directory (it stays
    when `run` sets an old run aside by renaming it), and the kernel drops it when the process
    ends, kill -9 included, so a crash never leaves a stale lock. Re-entrant within the thread
    that holds it (`edgetune run` holds it while its stages take it again); another thread of the
    process (a service's job pool) is refused as another process is."""
    run_dir = Path(run_dir).resolve()
    path = beside(run_dir, ".", ".lock")  # shortened for a name near the limit: never skipped
    me = threading.current_thread()
    with _guard:
        held = _held_locks.get(path)
        if held is not None and held.owner is not me:
            raise _busy(run_dir, held.holder)
        if held is None:
            fd = _take_lock(path, run_dir, command)
            held = _held_locks[path] = _Held(me, fd, f"`edgetune {command}` (pid {os.getpid()})", 0)
        held.depth += 1
    try:
        yield
    finally:
        with _guard:
            held.depth -= 1
            if not held.depth:
                del _held_locks[path]
                if held.fd is not None:
                    # a run that failed before it held anything (its folder removed, or never
                    # made) leaves no lock file: `runs/.demo-20261207-162927.lock` piled up, one
                    # per failed tune. Removed while still locked; a process that opened it
                    # meanwhile finds it gone once it locks it, and takes a new one (_take_lock).
                    # Nothing here may raise before the close: the lock would stay held
                    if not os.path.isdir(run_dir):
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                    os.close(held.fd)


def _busy(run_dir: Path, holder: str) -> InputError:
    return InputError(
        f"{run_dir}: busy: {holder} is working in this run directory; wait for it to finish "
        "or use another run directory"
    )


def _take_lock(path: Path, run_dir: Path, command: str) -> int | None:
    """The locked file's descriptor; None where this system or directory cannot lock (no lock, as
    before: the stage reports its own error if it cannot write there either)."""
    try:
        import fcntl
    except ImportError:
        return None
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise _busy(run_dir, holder) from None
        except OSError:  # a filesystem without flock
            os.close(fd)
            return None
        if _still_there(fd, path):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the file at the path now
    else:
        return None
    try:  # who holds it, for the message a refused process gives
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`edgetune {command}` (pid {os.getpid()})".encode(), 0)
    except OSError:  # a full disk: the lock holds without the name; an open fd left would hold it for good
        pass
    return fd


def _still_there(fd: int, path: Path) -> bool:
    """Whether the locked descriptor is the file at `path` (not one its last holder removed)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
