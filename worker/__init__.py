"""The worker process of distex_zmq: ``python -m distex_zmq.worker``."""

from .worker import Worker

__all__ = ["Worker"]
