"""Sends finished results while a task runs long, and gives back the tasks
held behind a long one: ``ResultWatch``.

A worker runs its tasks one after the other on its main thread and sends
their results in batches, so while one task (or one input of a chunk) runs
long, the results done before it would wait for it. ``ResultWatch`` is a
thread that looks every ``PARTIAL_AFTER`` seconds: results it saw waiting
at its previous look go out, the finished ones of a running chunk as
``STATUS_PARTIAL``. A chunk that has run ``CHUNK_BUDGET`` is split: the
thread closes its gate, so that it stops after the input it runs, and hands
back at once the inputs it has not started (``STATUS_SPLIT``, then
``STATUS_HANDED_BACK`` for each part), so that they do not wait for an
input that runs long.

The socket and the batch of results belong to whoever holds ``lock``: the
main thread holds it but while it runs a task after which results wait (or a
chunk), so the thread may send only then. While it runs a task, the main
thread only adds to the batch, which ``Writer.take_done`` allows.

A worker with more than one credit may hold tasks behind the one that runs,
in its TASK message or waiting in its socket. While the main thread runs
tasks, the thread also looks every ``LONG_LOOK`` seconds at ``current``,
the id of the task that runs (its negative once it returned), which the
main thread sets around each task. Once one task has run ``LONG_TASK``,
the thread takes the socket for a moment, even while the main thread holds
``lock``: it takes the entries of the running message that have not
started and the messages waiting in the socket, gives back their tasks
(``STATUS_LONG``, then ``STATUS_RETURNED`` for each) and keeps the messages
in ``stash`` for the main thread, which reads them before the socket (the
tasks only for the functions they carry, the others as usual). Who has the
socket is settled by ``taking`` and ``current`` under ``sock_lock``: the
thread sets ``taking``, then goes on only if ``current`` still names the
long task; the main thread sets ``current`` when the task returns, then,
if ``taking`` is set, waits for ``sock_lock`` and clears it, before it
touches the socket. So the main thread pays two stores and a load per
task, and no lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distex_zmq.serialization import ScriptGuess, dumps
from distex_zmq.wire import frames as p

#: The most parts a chunk's inputs are handed back in.
HAND_BACK_PARTS = 8

#: Seconds between the thread's looks: results wait no longer than about two.
PARTIAL_AFTER = p.CHUNK_PARTIAL_US / 1e6
#: Seconds a chunk may run before the inputs it has not started are handed back.
CHUNK_BUDGET = p.CHUNK_BUDGET_US / 1e6
#: Seconds without a watched task after which the thread sleeps until the next.
IDLE_AFTER = 0.1
#: Seconds a task runs after which the tasks held behind it are given back.
LONG_TASK = p.LONG_TASK_US / 1e6
#: Seconds between the thread's looks at the running task, while no result waits.
LONG_LOOK = LONG_TASK / 2

#: A TASK message's entry: id, function id, flags, sizes, ``skip``.
Entry = tuple[int, int, int, int, int, int, int]


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
        # of its first result (in the payload the broker holds: after a
        # split, that of the inputs it kept), when it started
        self._task_id: int | None = None
        self._results: list[Any] = []
        self._sent = 0
        self._skip = 0
        self._started = 0.0
        self._gate: list[Any] = []
        self._inputs: Iterator[Any] = iter(())
        #: the payload index where the chunk's inputs end once it was split
        self._end: int | None = None
        self._guess: ScriptGuess | None = None
        #: the first result entry waiting at the previous look
        self._seen: bytes | None = None
        # giving back the tasks held behind a long one (``give_back``)
        #: the thread looks at ``current`` (False: it waits for ``wake()``);
        #: always True while it gives back nothing (one credit)
        self.watching = True
        self._recv: Callable[[], list[Any] | None] | None = None
        #: the id of the task the main thread runs; its negative once it returned
        self.current = 0
        #: the thread has the socket until the main thread clears it
        self.taking = False
        #: held by the thread while it uses the socket outside ``lock``'s
        #: rule, and by the main thread to send while a task may run
        self.sock_lock = threading.Lock()
        #: the entries of the TASK message being run that have not started
        #: (the main thread sets it for each message)
        self.entries: Iterator[Entry] | None = None
        #: the entries of that message taken (not run: given back)
        self.taken: list[Entry] = []
        #: the messages read from the socket, in order: ``(frames, given
        #: back)``; the main thread reads them before the socket
        self.stash: deque[tuple[list[Any], bool]] = deque()
        #: ``current`` at the previous look, and since when it is so
        self._current = 0
        self._current_since = 0.0

    def give_back(self, recv: Callable[[], list[Any] | None]) -> None:
        """Give back the tasks held behind a long one; ``recv()`` reads a
        message from the socket, or None if none waits (main thread, before
        the first task)."""
        self._recv = recv
        self.watching = False

    def wake(self) -> None:
        """Start looking (main thread, after it released ``lock``, or set
        ``current`` while the thread does not look at it)."""
        self.polling = True
        if self._recv is not None:
            self.watching = True
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
        inputs: Iterator[Any],
        guess: ScriptGuess | None = None,
    ) -> None:
        """A chunk starts (main thread, ``lock`` released): ``results``
        collects its results, for the payload's inputs from ``skip`` on,
        which ``gate`` holds; the chunk takes its next input from ``inputs``,
        the list iterator of ``gate``, only while ``gate`` is not empty.
        ``guess``: that of its function's results (``ScriptGuess``)."""
        with self.lock:
            self._gate = gate
            self._inputs = inputs
            self._end = None
            self._guess = guess
            self._task_id = task_id
            self._results = results
            self._sent = 0
            self._skip = skip
            self._started = started

    def end(self) -> tuple[int, int | None]:
        """The chunk stops (main thread, ``lock`` released); return how many
        of its results were sent, and the payload index where its inputs
        end if it was split (None if not)."""
        with self.lock:
            self._task_id = None
            self._results = []
            self._gate = []
            self._inputs = iter(())
            self._guess = None
            return self._sent, self._end

    def _run(self) -> None:
        lock = self.lock
        while True:
            self._wake.wait()
            idle_since = time.perf_counter()
            interval = PARTIAL_AFTER
            while True:
                time.sleep(interval)
                if self._recv is not None and self._look_at_current():
                    idle_since = time.perf_counter()
                if lock.acquire(blocking=False):
                    try:
                        self._look()
                    finally:
                        lock.release()
                    idle_since = time.perf_counter()
                    interval = PARTIAL_AFTER
                    continue
                self._seen = None
                if self._recv is not None:
                    interval = LONG_LOOK
                if time.perf_counter() - idle_since < IDLE_AFTER:
                    continue
                # sleep; a release, or a task started, seen after ``polling``
                # and ``watching`` are False wakes it
                self._wake.clear()
                self.polling = False
                if self._recv is not None:
                    self.watching = False
                if lock.acquire(blocking=False):
                    lock.release()
                    self.polling = self.watching = True
                    continue
                if self._recv is not None and self.current != self._current:
                    self.polling = self.watching = True
                    continue
                break

    def _look_at_current(self) -> bool:
        """Give back the tasks held behind the running task once it has run
        ``LONG_TASK``; return whether a task started or runs."""
        current = self.current
        now = time.perf_counter()
        if current != self._current:
            self._current = current
            self._current_since = now
            return True
        if current <= 0:
            return False
        ran = now - self._current_since
        if ran >= LONG_TASK:
            self._take(current, ran)
        return True

    def _take(self, task_id: int, ran: float) -> None:
        """Give back what the worker holds behind task ``task_id``, which has
        run ``ran`` seconds, if it still runs (see the module's docstring)."""
        recv = self._recv
        assert recv is not None
        with self.sock_lock:
            if not self.taking:
                self.taking = True
                if self.current != task_id:
                    self.taking = False  # it returned: the main thread has the socket
                    return
            elif self.current != task_id:
                return  # it returned: the main thread waits to clear ``taking``
            # the main thread runs the task, and waits for ``sock_lock`` after it
            msg = p.Writer(p.RESULT)
            given = msg.entries
            pack = p.RESULT_ENTRY.pack
            entries = self.entries
            if entries is not None:
                self.entries = None
                rest = list(entries)  # the main thread's loop over them ends
                self.taken = rest
                for entry in rest:
                    if not entry[2] & p.FLAG_REF:
                        given.append(pack(entry[0], p.STATUS_RETURNED, 0, 0, 0, 0))
            stash = self.stash
            try:
                while (frames := recv()) is not None:
                    stash.append((frames, _give_back_message(frames, given)))
                if given:
                    elapsed = min(max(int(ran * 1e6), p.LONG_TASK_US), p.MAX_ELAPSED)
                    given.insert(0, pack(task_id, p.STATUS_LONG, elapsed, 0, 0, 0))
                    self._send(msg.frames_out())
            except Exception:  # noqa: BLE001, S110 - the socket is closing: the worker ends
                pass

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
                # over its budget: the chunk stops after the input it runs,
                # and the inputs not started go back now
                self._split(msg)
        if msg:
            try:
                with self.sock_lock:
                    self._send(msg.frames_out())
            except Exception:  # noqa: BLE001 - the socket is closing: the worker ends
                pass

    def _split(self, msg: p.Writer) -> None:
        """Close the running chunk's gate and add to ``msg`` the inputs it has
        not started, handed back: a ``STATUS_SPLIT`` entry with the inputs
        it still holds (those not answered, up to the one it runs), which
        are all it runs from now on, then a ``STATUS_HANDED_BACK`` entry per
        part of the others (``lock`` held, after ``_add_partial``)."""
        if self._inputs.__reduce__()[2:] == (0,):
            # no input started: the chunk's time went to loading it, or to a
            # main thread that lost its core, which says nothing of its
            # inputs; a later look splits it once one of them runs long
            return
        gate = self._gate
        inputs = gate.copy()  # the main thread only reads the gate
        gate.clear()  # one call: after it, the chunk's next input ends it
        # Where its iterator stands says how many inputs the chunk took: it
        # cannot move on once the gate is empty, but ends at the next input.
        # An iterator that ended already has no place: the main thread
        # hands back the inputs after the last it ran (``Runner._run_chunk``).
        state = self._inputs.__reduce__()
        if len(state) < 3:
            return
        taken = int(state[2])
        sent = self._sent
        if taken >= len(inputs):
            return  # every input started: nothing to hand back
        parts = payload_parts(inputs, taken, self._skip, self._dumps)
        if parts is None:
            return  # they do not pickle: the main thread runs them after its input
        try:
            held, held_buffers = dumps(tuple(inputs[sent:taken]), self._dumps)
        except BaseException:  # noqa: BLE001 - as above
            return
        self._end = self._skip + taken
        pack = p.RESULT_ENTRY.pack
        task_id = self._task_id
        entries = msg.entries
        size = msg.body(held, held_buffers)
        entries.append(pack(task_id, p.STATUS_SPLIT, 0, size, len(held_buffers), self._skip + sent))
        for mark, data, buffers in parts:
            size = msg.body(data, buffers)
            entries.append(pack(task_id, p.STATUS_HANDED_BACK, 0, size, len(buffers), mark))
        # the chunk's payload is the inputs it holds now: a later piece's
        # mark counts from the first of them (the result at ``sent``)
        self._skip = -sent

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


def payload_parts(
    items: Sequence[Any],
    index: int,
    offset: int,
    data_dumps: Callable[..., bytes],
    most: int = HAND_BACK_PARTS,
) -> list[tuple[int, bytes, list[Any]]] | None:
    """The inputs of ``items`` from ``index`` on, in up to ``most`` chunk
    payloads (so that several workers take them): ``(mark, pickle,
    buffers)`` each, ``mark`` the payload index of its first input, where
    ``items[0]`` is at ``offset``; None if they do not pickle."""
    step = -(-(len(items) - index) // most)
    try:
        return [
            (offset + mark, *dumps(tuple(items[mark : mark + step]), data_dumps))
            for mark in range(index, len(items), step)
        ]
    except BaseException:  # noqa: BLE001 - then they run where they are
        return None


def _give_back_message(frames: list[Any], given: list[bytes]) -> bool:
    """Add to ``given`` a ``STATUS_RETURNED`` entry for each task of
    ``frames``, if it is a well-formed TASK message; return whether it was."""
    try:
        kind, count, buf = p.check(frames[0])
        if kind != p.TASK:
            return False
        p.body(buf, count, p.TASK_ENTRY)
    except p.ProtocolError:
        return False  # the main thread logs it
    pack = p.RESULT_ENTRY.pack
    for entry in p.task_entries(buf, count):
        if not entry[2] & p.FLAG_REF:
            given.append(pack(entry[0], p.STATUS_RETURNED, 0, 0, 0, 0))
    return True
