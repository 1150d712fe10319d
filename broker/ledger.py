"""The tasks in the broker's hands, from ``submit`` until they finish, and the
barriers that wait for all of them (``run_on_all``, shutdown)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .records import Task

_logger = logging.getLogger("distex_zmq.broker")


class Ledger:
    """Active tasks by id; ``finish`` ends one and fires the barriers it held."""

    def __init__(self) -> None:
        #: tasks submitted and not finished, by id
        self.active: dict[int, Task] = {}
        self._barriers: list[_Barrier] = []

    def add(self, task: Task) -> None:
        self.active[task.id] = task

    def finish(self, task: Task) -> None:
        """``task`` is done for the broker: forget it and its payload."""
        self.active.pop(task.id, None)
        # a future holds its task: it must not hold the payload too (the
        # buffers are views of the caller's objects, which they keep alive)
        task.func_pickle = task.data = b""
        task.buffers = []
        task.refs = ()
        if self._barriers:
            for barrier in self._barriers:
                barrier.waiting.discard(task.id)
            self._fire()

    def when_finished(
        self, callback: Callable[[], None], dropped: Callable[[], None] | None = None
    ) -> None:
        """Call ``callback`` once every task active now has finished, or
        ``dropped``, if given, if the broker closes first."""
        self._barriers.append(_Barrier(set(self.active), callback, dropped))
        self._fire()

    def drop_barriers(self) -> None:
        """Forget the callbacks that wait (nothing will finish: the broker
        closes), and call their ``dropped``."""
        barriers, self._barriers = self._barriers, []
        for barrier in barriers:
            if barrier.dropped is not None:
                try:
                    barrier.dropped()
                except Exception:
                    _logger.exception("a callback of a barrier the broker dropped failed")

    def _fire(self) -> None:
        done = [b for b in self._barriers if not b.waiting]
        if done:
            self._barriers = [b for b in self._barriers if b.waiting]
            for barrier in done:
                # it runs inside the handling of a result (or a submit): an
                # error here must not cut that short, nor the other barriers
                try:
                    barrier.callback()
                except Exception:
                    _logger.exception("a callback waiting for the tasks before it failed")


class _Barrier:
    __slots__ = ("waiting", "callback", "dropped")

    def __init__(
        self,
        waiting: set[int],
        callback: Callable[[], None],
        dropped: Callable[[], None] | None,
    ):
        self.waiting = waiting
        self.callback = callback
        self.dropped = dropped
