"""What the parts of the runtime know of the pool they serve.

``Runtime`` implements ``PoolState``; the supervisor, the bookkeeping of
workers that join or leave, the reconnections and the broker's hooks see
the pool through it and nothing else.
"""

from __future__ import annotations

from typing import Protocol

from distex_zmq.hostspec import HostSpec


class PoolState(Protocol):
    """What the supervisor needs to know of the pool it keeps running."""

    #: the pool is shutting down: exits are expected, nothing is replaced
    closing: bool
    #: why the pool cannot take tasks any more (None: it can)
    error: BaseException | None

    @property
    def is_up(self) -> bool:
        """Every worker was ready once: the start-up is over."""

    def fail(self, error: BaseException) -> None:
        """The pool cannot go on: fail what waits and refuse new tasks."""

    def local_endpoint(self) -> str:
        """The broker's ipc endpoint for a new local worker, bound again if
        its socket is gone."""

    def broker_port(self, spec: HostSpec) -> int:
        """The broker's TCP port for workers on ``spec``, bound on first need."""
