"""What this process is to distex_zmq: a client, or a worker of a pool.

The worker's main marks its process (``mark_worker``); ``Pool`` reads it:
both may import this module, which imports nothing of either.
"""

from __future__ import annotations

_in_worker = False

#: The environment variable in which a local worker gets the client's
#: ``sys.argv`` (JSON), which it takes as its own.
SCRIPT_ARGV_ENV = "DISTEX_ZMQ_SCRIPT_ARGV"
#: The environment variable in which a local worker gets the values (JSON:
#: name -> value, or None for unset) of the variables that its launcher set
#: for the worker's own start (``PYTHONPATH``, ``PYTHONUNBUFFERED``, and the
#: other ``PYTHON*`` variables under ``-E``), which it puts back, so that the
#: processes its tasks start get the client's environment.
CLIENT_ENV_ENV = "DISTEX_ZMQ_CLIENT_ENV"
#: The environment variable in which a local worker gets the client's
#: ``sys.path`` (JSON), which comes first on its own.
CLIENT_PATH_ENV = "DISTEX_ZMQ_CLIENT_PATH"


def mark_worker() -> None:
    """Note that this process is a worker of a pool (its main calls this)."""
    global _in_worker
    _in_worker = True


def in_worker() -> bool:
    """Whether this process is a worker of a pool."""
    return _in_worker
