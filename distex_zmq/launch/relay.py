"""Forwards what a host's workers write to the pool that owns them.

An SSH agent and a spawner read their workers' stdout and stderr line by
line (``launch/local.py``) and hand the lines to an ``OutputRelay``, which
sends them as ``control.Output`` events (batched, long lines split; a line
not ended yet goes as a partial line that the next lines continue). A worker
that writes faster than ``RATE`` characters a second (beyond a ``BURST``)
loses lines rather than slowing its host down; the next event that gets
through says how many were dropped, and so does a send that fails (a pool
that does not read: the spawner never blocks on it). Lines dropped after a
partial line are reported at once, so that the pool ends that line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from distex_zmq.wire import control

#: Characters a second that one worker may forward, on average.
RATE = 1 << 20
#: Characters a worker may forward at once beyond the rate.
BURST = 4 << 20


class OutputRelay:
    """Turns workers' output lines into ``Output`` events for ``send``.

    ``send(event)`` returns False when the event could not be sent; its
    lines count as dropped.
    """

    def __init__(self, send: Callable[[control.Output], bool]):
        self._send = send
        #: per worker: characters it may still send, when that was reckoned,
        #: lines dropped and not yet reported, its pid
        self._budget: dict[bytes, list[float]] = {}
        #: ``(identity, stream)`` whose last line sent is not ended yet
        self._open: set[tuple[bytes, str]] = set()

    def forward(
        self, identity: bytes, pid: int, stream: str, lines: list[str], partial: bool = False
    ) -> None:
        """Send the lines a worker wrote (``stream``: ``"out"`` or ``"err"``;
        ``partial``: the last one is not ended yet)."""
        now = time.monotonic()
        budget = self._budget.get(identity)
        if budget is None:
            budget = self._budget[identity] = [float(BURST), now, 0, pid]
        budget[0] = min(BURST, budget[0] + (now - budget[1]) * RATE)
        budget[1] = now
        size = sum(len(line) + 1 for line in lines)
        if size > budget[0]:
            budget[2] += len(lines)
            if (identity, stream) in self._open:
                # the rest of a line it began is lost: the pool ends that
                # line now (with the count) rather than at the next event
                self._open.discard((identity, stream))
                if self._send(control.Output(identity, pid, stream, [], int(budget[2]))):
                    budget[2] = 0
            return
        budget[0] -= size
        events = control.output_events(identity, pid, stream, lines, int(budget[2]), partial)
        budget[2] = 0
        for event in events:
            if not self._send(event):
                budget[2] += len(event.lines)
        if partial:
            self._open.add((identity, stream))
        elif self._open:
            self._open.discard((identity, stream))

    def forget(self, identity: bytes) -> None:
        """The worker exited: report what it dropped last, and forget it."""
        self._open.difference_update({(identity, "out"), (identity, "err")})
        budget = self._budget.pop(identity, None)
        if budget is not None and budget[2]:
            self._send(control.Output(identity, int(budget[3]), "err", [], int(budget[2])))
