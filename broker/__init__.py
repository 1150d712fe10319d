"""The broker of distex_zmq: routes pickled tasks to workers as credits allow.

Its users import from here only, never from its modules.
"""

from .broker import Broker
from .records import (
    INIT_TAG,
    STATUS_LOCAL_ERROR,
    BrokerCounts,
    BrokerHooks,
    InitNotSent,
    ResultSink,
    Task,
    WorkerRecord,
)
from .registry import Registry

__all__ = [
    "INIT_TAG",
    "STATUS_LOCAL_ERROR",
    "Broker",
    "BrokerCounts",
    "BrokerHooks",
    "InitNotSent",
    "Registry",
    "ResultSink",
    "Task",
    "WorkerRecord",
]
