"""What this process is to distex_zmq: a client, or a worker of a pool.

The worker's main marks its process (``mark_worker``); ``Pool`` reads it:
both may import this module, which imports nothing of either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_in_worker = False
#: a worker loads a task's function (imports its module): no pool may start
_loading_function = False

#: The environment variable in which a local worker gets the client's
#: ``sys.argv`` (JSON), which it takes as its own.
SCRIPT_ARGV_ENV = "DISTEX_ZMQ_SCRIPT_ARGV"
#: The environment variable in which a local worker gets the name of the
#: module that the client runs as ``__main__`` (``python -m pkg.script``).
SCRIPT_MODULE_ENV = "DISTEX_ZMQ_SCRIPT_MODULE"
#: The environment variable in which a local worker gets the values (JSON:
#: name -> value, or None for unset) of the variables that its launcher set
#: for the worker's own start (``PYTHONPATH``, ``PYTHONUNBUFFERED``, and the
#: other ``PYTHON*`` variables under ``-E``), which it puts back, so that the
#: processes its tasks start get the client's environment.
CLIENT_ENV_ENV = "DISTEX_ZMQ_CLIENT_ENV"
#: The environment variable in which a local worker gets the client's
#: ``sys.path`` (JSON), which comes first on its own.
CLIENT_PATH_ENV = "DISTEX_ZMQ_CLIENT_PATH"
#: The environment variable in which a local worker gets the descriptor of
#: the client's ``multiprocessing`` resource tracker, which it shares.
TRACKER_FD_ENV = "DISTEX_ZMQ_TRACKER_FD"


def mark_worker() -> None:
    """Note that this process is a worker of a pool (its main calls this)."""
    global _in_worker
    _in_worker = True


def in_worker() -> bool:
    """Whether this process is a worker of a pool."""
    return _in_worker


@contextlib.contextmanager
def loading_function() -> Iterator[None]:
    """While a worker loads a task's function, and so imports its module."""
    global _loading_function
    before, _loading_function = _loading_function, True
    try:
        yield
    finally:
        _loading_function = before


def refuse_start_while_loading() -> None:
    """Raise ``RuntimeError`` if this worker loads a task's function: a pool
    that starts now is one that the top level of the function's module
    uses, which each of its workers would import again, each starting a
    pool of its own, without end (as ``ProcessPoolExecutor`` refuses a
    process started while a spawned child imports the script)."""
    if _loading_function:
        raise RuntimeError(
            "a pool was used while this worker imported the module of a task's function: "
            "the module's top level uses a pool, and each of that pool's workers would "
            "import the module again and start a pool of its own, without end. Use the "
            'pool under `if __name__ == "__main__":` or in a function that the program '
            "calls, not at the top level of a module that tasks come from"
        )
