"""The broker of distex_zmq: routes pickled tasks to workers as credits allow."""

from .broker import Broker
from .registry import Registry, WorkerRecord
from .task import ResultSink, Task

__all__ = ["Broker", "Registry", "ResultSink", "Task", "WorkerRecord"]
