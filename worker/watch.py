"""Sends finished results while a task runs long: ``ResultWatch``.

A worker runs its tasks one after the other on its main thread and sends
their results in batches, so while one task (or one input of a chunk) runs
long, the results done before it would wait for it. ``ResultWatch`` is a
thread that looks every ``PARTIAL_AFTER`` seconds: results it saw waiting
at its previous look go out, the finished ones of a running chunk as
``STATUS_PARTIAL``; a chunk that has run ``CHUNK_BUDGET`` has its gate
closed, so that it stops before its next input and hands back the rest.

The socket and the batch of results belong to whoever holds ``lock``: the
main thread holds it but while it runs a task after which results wait (or a
chunk), so the thread may send only then. While it runs a task, the main
thread only adds to the batch, which ``Writer.take_done`` allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from distex_zmq.serialization import ScriptGuess, dumps
from distex_zmq.wire import frames as p

#: Seconds between the thread's looks: results wait no longer than about two.
PARTIAL_AFTER = p.CHUNK_PARTIAL_US / 1e6
#: Seconds a chunk may run before the inputs it has not started are handed back.
CHUNK_BUDGET = p.CHUNK_BUDGET_US / 1e6
#: Seconds without a watched task after which the thread sleeps until the next.
IDLE_AFTER = 0.1


class ResultWatch:
    """The thread that sends results that would wait behind a long task.

    ``send(frames)`` sends a RESULT message; ``batch()`` is the worker's batch
    of results not sent; ``data_dumps`` pickles results; ``is_awaitable(value)``
    tells a chunk's results that are awaited later (never sent in pieces).
    Made on the main thread, which then holds ``lock``.
    """

    def __init__(
        self,
        send: Callable[[list[Any]], None],
        batch: Callable[[], p.Writer],
        data_dumps: Callable[..., bytes],
        is_awaitable: Callable[[Any], bool],
    ):
        self._send = send
        self._batch = batch
        self._dumps = data_dumps
        self._is_awaitable = is_awaitable
        #: held by the main thread but while it runs a watched task
        self.lock = threading.Lock()
        self.lock.acquire()
        #: the thread looks (False: it waits for ``wake()``)
        self.polling = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # the chunk that runs (task id None: none): its results list, which
        # the main thread appends to, how many were sent, the payload index
        # of its first result, when it started
        self._task_id: int | None = None
        self._results: list[Any] = []
        self._sent = 0
        self._skip = 0
        self._started = 0.0
        self._gate: list[Any] = []
        self._guess: ScriptGuess | None = None
        #: the first result entry waiting at the previous look
        self._seen: bytes | None = None

    def wake(self) -> None:
        """Start looking (main thread, after it released ``lock``)."""
        self.polling = True
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="distex_zmq-result-watch", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def begin(
        self,
        task_id: int,
        results: list[Any],
        started: float,
        skip: int,
        gate: list[Any],
        guess: ScriptGuess | None = None,
    ) -> None:
        """A chunk starts (main thread, ``lock`` released): ``results``
        collects its results, for the payload's inputs from ``skip`` on,
        which ``gate`` holds; the chunk takes its next input only while
        ``gate`` is not empty. ``guess``: that of its function's results
        (``ScriptGuess``)."""
        with self.lock:
            self._gate = gate
            self._guess = guess
            self._task_id = task_id
            self._results = results
            self._sent = 0
            self._skip = skip
            self._started = started

    def end(self) -> int:
        """The chunk stops (main thread, ``lock`` released); return how many
        of its results were sent."""
        with self.lock:
            self._task_id = None
            self._results = []
            self._gate = []
            self._guess = None
            return self._sent

    def _run(self) -> None:
        lock = self.lock
        while True:
            self._wake.wait()
            idle_since = time.perf_counter()
            while True:
                time.sleep(PARTIAL_AFTER)
                if lock.acquire(blocking=False):
                    try:
                        self._look()
                    finally:
                        lock.release()
                    idle_since = time.perf_counter()
                    continue
                self._seen = None
                if time.perf_counter() - idle_since < IDLE_AFTER:
                    continue
                # sleep; a release seen after ``polling`` is False wakes it
                self._wake.clear()
                self.polling = False
                if lock.acquire(blocking=False):
                    lock.release()
                    self.polling = True
                    continue
                break

    def _look(self) -> None:
        """Send what waited since the previous look (``lock`` held)."""
        batch = self._batch()
        entries = batch.entries
        first = entries[0] if entries else None
        msg = batch.take_done() if first is not None and first is self._seen else None
        self._seen = None if msg is not None else first
        if self._task_id is not None:
            if msg is None:
                msg = p.Writer(p.RESULT)
            self._add_partial(msg)
            results = self._results
            if (
                self._gate
                and time.perf_counter() - self._started >= CHUNK_BUDGET
                and not (results and self._is_awaitable(results[0]))
            ):
                # over its budget: the chunk stops before its next input,
                # whose worker hands back the rest
                self._gate.clear()
        if msg:
            try:
                self._send(msg.frames_out())
            except Exception:  # noqa: BLE001 - the socket is closing: the worker ends
                pass

    def _add_partial(self, msg: p.Writer) -> None:
        """Add the running chunk's results not sent yet, if it ran long enough."""
        results = self._results
        done = len(results)  # the main thread only appends
        sent = self._sent
        now = time.perf_counter()
        if done <= sent or now - self._started < PARTIAL_AFTER:
            return
        if self._is_awaitable(results[0]):
            return
        try:
            data, buffers = dumps(results[sent:done], self._dumps, None, self._guess)
        except BaseException:  # noqa: BLE001 - the main thread reports it with the rest
            return
        task_id = self._task_id
        assert task_id is not None
        elapsed = min(int((now - self._started) * 1e6), p.MAX_ELAPSED)
        size = msg.body(data, buffers)
        entry = p.RESULT_ENTRY.pack(
            task_id, p.STATUS_PARTIAL, elapsed, size, len(buffers), self._skip + done
        )
        msg.entries.append(entry)
        self._sent = done
