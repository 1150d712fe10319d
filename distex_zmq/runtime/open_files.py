"""Room for the pool's workers under the process's limit of open files.

Each worker holds file descriptors in the client: a local one about four
(its connection to the broker, the pipes of its output, its process), a
remote one one or two (its connection, and its end of an SSH tunnel). With
none left, libzmq aborts the whole process (an assertion in its accept,
``SIGABRT``, no Python error) when the broker takes a worker's connection.
So before a worker starts, ``OpenFiles.make_room`` checks that it fits under
the soft limit (``ulimit -n``) with ``SPARE`` descriptors to spare for the
program and the pool's own sockets. When it does not, the soft limit is
raised to the hard one, as servers do at start; when even that is too low,
it raises ``OSError(EMFILE)`` saying how many the workers need, the limits,
and what to do, before the worker starts.
"""

from __future__ import annotations

import errno
import logging
import os

try:
    import resource
except ImportError:  # not on Unix: no limit to look at
    resource = None  # type: ignore[assignment]

_logger = logging.getLogger("distex_zmq.pool")

#: Descriptors a local worker holds in the client.
LOCAL_WORKER_FILES = 4
#: Descriptors a remote worker holds in the client.
REMOTE_WORKER_FILES = 2
#: Descriptors left free for the program and the pool's own sockets.
SPARE = 64


def open_count() -> int:
    """How many file descriptors this process has open."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return 0  # no /proc: the limit alone decides


class OpenFiles:
    """Counts down the descriptors known to be free; looks again (and raises
    the limit, or refuses) once a worker would take the last ``SPARE``."""

    def __init__(self) -> None:
        #: descriptors free at the last look, less those of workers since
        self._free = 0

    def make_room(self, files: int, starting: int, what: str) -> None:
        """Make room for a worker that holds ``files`` descriptors here, or
        raise ``OSError(EMFILE)``; ``starting`` workers started before it
        may not hold theirs yet (a remote one connects later); ``what`` names
        the worker in the message."""
        if self._free - files >= SPARE:
            self._free -= files
            return
        if resource is None:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self._free = 1 << 30
            return
        in_use = open_count() + starting * files
        need = in_use + files + SPARE
        if need > soft:
            raised = _raise_soft_limit(soft, hard, need)
            if raised < need:
                raise OSError(
                    errno.EMFILE,
                    f"no room for {what} under this process's limit of open files "
                    f"({soft}, hard limit {_limit(hard)}): {in_use} are open (those "
                    f"of workers that start counted), a worker holds about {files}, "
                    f"and {SPARE} are kept for the program; "
                    "raise the limit (ulimit -n, LimitNOFILE= of a systemd service, "
                    "--ulimit nofile= of docker) or start fewer workers",
                )
            soft = raised
        self._free = soft - in_use - files


def _raise_soft_limit(soft: int, hard: int, need: int) -> int:
    """Raise the soft limit of open files to the hard one; return the soft
    limit now."""
    target = hard if hard != resource.RLIM_INFINITY else max(need, 2 * soft)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        _logger.warning("could not raise the limit of open files to %d: %s", target, e)
        return soft
    _logger.info("raised this process's limit of open files from %d to %d", soft, target)
    return target


def _limit(value: int) -> str:
    return "unlimited" if resource is not None and value == resource.RLIM_INFINITY else str(value)
