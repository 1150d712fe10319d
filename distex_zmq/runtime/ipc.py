"""The private directory of a pool's ipc socket, and the sweep of stale ones.

A Unix socket address holds at most ``MAX_SOCKET_PATH`` bytes of path, so
the broker's socket lives in a directory with a short path: one made under
``TMPDIR`` (``tempfile.gettempdir()``) when its path is short enough and
it can be made there, else under ``/tmp``, ``/var/tmp`` or ``/dev/shm``. Each directory is made by
``mkdtemp``: mode 0700, readable by this user only. Its name carries the
pid of the pool's process, so that pools killed before they cleaned up
(SIGKILL) can be recognized and their directories removed later: those
whose pid runs no more, and where no broker listens (a pool in another pid
namespace that shares ``/tmp``, a container's, has a pid that does not run
here).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time

#: Name prefix of a pool's private directory for its ipc socket, followed
#: by the pid of the pool's process.
IPC_PREFIX = "distex_zmq-"
#: The socket's file name in that directory.
SOCKET_NAME = "broker"
#: Bytes of path a Unix socket address holds on Linux (``sun_path`` is 108
#: bytes, with the terminating NUL).
MAX_SOCKET_PATH = 107
#: Where a socket directory goes when ``TMPDIR``'s path is too long: the
#: usual place of temporary files first, then a tmpfs that Linux always has.
FALLBACK_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
#: Seconds after which a directory without a socket is stale: a pool binds
#: its socket right after it makes the directory.
UNBOUND_STALE_AFTER = 60.0


def candidate_dirs() -> list[str]:
    """The directories that may hold socket directories, ``TMPDIR``'s first."""
    try:
        dirs = [tempfile.gettempdir()]
    except OSError:  # none of tempfile's takes a file (read-only): the fallbacks may
        dirs = []
    dirs.extend(d for d in FALLBACK_DIRS if d not in dirs)
    return dirs


def make_ipc_dir() -> str:
    """Make the private directory of the broker's socket; return its path.

    A candidate directory where it cannot be made (a full or read-only file
    system) is passed over for the next. Raises ``OSError`` when none
    takes it: ``ENAMETOOLONG`` naming the path and the limit when no
    candidate directory has a path short enough for the socket, else the
    error of the first that failed, naming each and why.
    """
    prefix = f"{IPC_PREFIX}{os.getpid()}-"
    too_long = []
    failed: list[tuple[str, OSError]] = []
    for base in candidate_dirs():
        if not os.path.isdir(base):
            failed.append((base, OSError(errno.ENOENT, "no such directory")))
            continue
        if not os.access(base, os.W_OK | os.X_OK):
            failed.append((base, OSError(errno.EACCES, "not writable")))
            continue
        try:
            path = tempfile.mkdtemp(prefix=prefix, dir=base)
        except OSError as e:  # full (ENOSPC, EDQUOT), read-only: the next may do
            failed.append((base, e))
            continue
        if len(socket_path(path).encode()) <= MAX_SOCKET_PATH:
            return path
        os.rmdir(path)
        too_long.append(socket_path(path))
    if failed:
        reasons = "; ".join(f"in {base}: {e.strerror or e}" for base, e in failed)
        if too_long:
            reasons += f"; {', '.join(too_long)} longer than {MAX_SOCKET_PATH} bytes"
        raise OSError(
            failed[0][1].errno,
            f"no directory for the pool's ipc socket could be made ({reasons}; tried "
            f"{', '.join(candidate_dirs())}). Free space there, or set TMPDIR to a "
            "writable directory with a short path",
        )
    raise OSError(
        errno.ENAMETOOLONG,
        f"no directory for the pool's ipc socket has a path short enough: a Unix socket "
        f"path holds at most {MAX_SOCKET_PATH} bytes, and {', '.join(too_long) or 'none'} "
        f"would be longer (tried {', '.join(candidate_dirs())}). Set TMPDIR to a shorter "
        "directory",
    )


def socket_path(ipc_dir: str) -> str:
    """The path of the broker's socket in ``ipc_dir``."""
    return os.path.join(ipc_dir, SOCKET_NAME)


def sweep_stale_ipc_dirs() -> None:
    """Remove the ipc directories of pools whose process died without cleaning
    up (a SIGKILL): ours, named with a pid that no longer runs, wherever a
    pool may have made them."""
    for tmp in candidate_dirs():
        try:
            names = os.listdir(tmp)
        except OSError:
            continue
        for name in names:
            pid = name[len(IPC_PREFIX) :].split("-", 1)[0]
            if not name.startswith(IPC_PREFIX) or not pid.isdigit():
                continue
            path = os.path.join(tmp, name)
            try:
                if os.lstat(path).st_uid != os.getuid():
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                if _nobody_listens(path):
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue  # alive (or not ours to judge)


def _nobody_listens(ipc_dir: str) -> bool:
    """Whether no broker listens on the socket in ``ipc_dir`` (a directory
    without one only once it is ``UNBOUND_STALE_AFTER`` old)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(socket_path(ipc_dir))
    except ConnectionRefusedError:
        return True  # the socket of a broker that is gone
    except FileNotFoundError:
        try:
            return time.time() - os.stat(ipc_dir).st_mtime > UNBOUND_STALE_AFTER
        except OSError:
            return False
    except OSError:
        return False
    finally:
        probe.close()
    return False  # a broker listens: a pool in another pid namespace
