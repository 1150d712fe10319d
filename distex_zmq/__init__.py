"""distex_zmq: a distributed process pool on a ZeroMQ broker, with the API of distex."""

from typing import TYPE_CHECKING, Any

from distex_zmq import _source_layout

_source_layout.install()  # before anything imports distex_zmq.broker or .worker

# ruff: noqa: E402

from .errors import (
    CrashLoopError,
    DistexError,
    HostConnectionError,
    PoolClosedError,
    ProtocolError,
    RemoteException,
    SerializationError,
    TaskOrigin,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartError,
)
from .hostspec import HostSpec
from .loops import LoopType
from .serialization import PickleType
from .version import __version__

if TYPE_CHECKING:
    from .pool import Pool
    from .poolmap import PoolMap
    from .status import HostStatus, PoolStatus, Totals, WorkerStatus

#: The names of ``status`` (dataclasses, made when their module is imported).
_STATUS_NAMES = ("HostStatus", "PoolStatus", "Totals", "WorkerStatus")


def __getattr__(name: str) -> Any:
    """Import ``Pool``, ``PoolMap`` and the status classes when first asked for.

    Every worker process imports this package too, and needs neither the
    pool nor eventkit (with numpy) nor the status: importing them took most
    of a worker's start-up. A pool does not import eventkit either, but
    eventkit's ``Event.poolmap`` is there as soon as both are
    (``_eventkit_hook``).
    """
    if name == "Pool":
        from .eventkit_hook import attach_poolmap
        from .pool import Pool

        attach_poolmap()
        globals()["Pool"] = Pool
        return Pool
    if name == "PoolMap":
        from .poolmap import PoolMap

        globals()["PoolMap"] = PoolMap
        return PoolMap
    if name in _STATUS_NAMES:
        from . import status

        value = getattr(status, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CrashLoopError",
    "DistexError",
    "HostConnectionError",
    "HostSpec",
    "HostStatus",
    "LoopType",
    "PickleType",
    "Pool",
    "PoolClosedError",
    "PoolMap",
    "PoolStatus",
    "ProtocolError",
    "RemoteException",
    "SerializationError",
    "TaskOrigin",
    "TaskTimeoutError",
    "Totals",
    "WorkerLostError",
    "WorkerStartError",
    "WorkerStatus",
    "__version__",
]
