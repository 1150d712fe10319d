"""Results that wait for their tasks' log records (``HeldResults``).

A worker sends a task's log records before its result, but the client's
log handlers run on a thread of their own (``output.OutputWriter``), so a
result could reach the caller before the records its task logged. A result
whose worker sent records that are not handled yet waits here until they
are: when the caller has a result, the records its task logged before it
returned have been handled, as with a function called in the caller's own
process (a ``caplog`` test sees them). Only the delivery waits: the
worker's credits are free at once and the dispatch goes on.

A handler that hangs (no record handled for ``HOLD_LIMIT`` seconds) holds
no result longer: what waits goes, and until a record is handled again,
results do not wait.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from .records import BrokerHooks, ResultSink, Task

#: Seconds a result waits at most for the records before it.
HOLD_LIMIT = 2.0


class HeldResults:
    """Results held for their records, on the pool loop; ``finish(task)``
    ends a task in the ledger as it is released."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        hooks: BrokerHooks,
        finish: Callable[[Task], None],
    ):
        self._loop = loop
        self._hooks = hooks
        self._finish = finish
        #: ``(ticket, task, status, value)``, in the order they came
        self._held: list[tuple[int, Task, int, Any]] = []
        #: the highest ticket a callback waits for
        self._awaited = 0
        self._timer: asyncio.TimerHandle | None = None
        self._handled_at_arm = 0
        #: ``logs_handled()`` when a hold ran out (-1: none did): the
        #: handlers are stuck there, and results do not wait until they move
        self._stuck_at = -1

    def must_wait(self, ticket: int) -> bool:
        """Whether a result that came after the record of ``ticket`` waits."""
        handled = self._hooks.logs_handled()
        return ticket > handled and handled != self._stuck_at

    def hold(self, ticket: int, task: Task, status: int, value: Any) -> None:
        """Deliver ``task``'s result once the record of ``ticket`` is handled."""
        self._held.append((ticket, task, status, value))
        if self._timer is None:
            self._arm()
        if ticket > self._awaited:
            self._awaited = ticket
            self._hooks.when_logs_handled(ticket, functools.partial(self._release, ticket))

    def release_all(self) -> None:
        """Deliver every result held now (the broker closes)."""
        self._release(None)

    def _arm(self) -> None:
        self._handled_at_arm = self._hooks.logs_handled()
        self._timer = self._loop.call_later(HOLD_LIMIT, self._ran_out)

    def _ran_out(self) -> None:
        """``HOLD_LIMIT`` passed: if no record was handled meanwhile, a
        handler hangs, and what is held goes now."""
        self._timer = None
        handled = self._hooks.logs_handled()
        if handled != self._handled_at_arm:
            self._arm()
            return
        self._stuck_at = handled
        self._release(None)

    def _release(self, ticket: int | None) -> None:
        """Deliver the results held for records up to ``ticket`` (None: all)."""
        held = self._held
        if ticket is None:
            due, self._held = held, []
        else:
            due = [item for item in held if item[0] <= ticket]
            self._held = [item for item in held if item[0] > ticket]
        if not self._held and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sinks: set[ResultSink] = set()
        for _, task, status, value in due:
            self._finish(task)
            if not task.cancelled:
                task.sink.deliver(task, status, value)
                sinks.add(task.sink)
        for sink in sinks:
            sink.flush()
