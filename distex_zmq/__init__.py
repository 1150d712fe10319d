"""distex_zmq: a distributed process pool on a ZeroMQ broker, with the API of distex."""

# first: makes distex_zmq.broker and .worker importable from a source checkout
from . import _source_layout  # noqa: F401, I001
from .errors import (
    CrashLoopError,
    DistexError,
    HostConnectionError,
    PoolClosedError,
    ProtocolError,
    RemoteException,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartError,
)
from .hostspec import HostSpec
from .loops import LoopType
from .pool import Pool
from .poolmap import PoolMap
from .serialization import PickleType
from .version import __version__

__all__ = [
    "CrashLoopError",
    "DistexError",
    "HostConnectionError",
    "HostSpec",
    "LoopType",
    "PickleType",
    "Pool",
    "PoolClosedError",
    "PoolMap",
    "ProtocolError",
    "RemoteException",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerStartError",
    "__version__",
]
