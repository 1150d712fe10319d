"""The worker process: its socket to the broker, reading TASK, STOP and
REFUSE, and sending results in batches; ``Runner`` (``running.py``) runs
the tasks.

::

    broker ROUTER  --TASK-->   DEALER  Worker._on_readable
                                         |  Runner.run each task (sync: at
                                         |  once; coroutine: as an asyncio task)
                   <--RESULT--         Runner.results, flushed once per batch

The worker grants the broker ``credits`` when it says hello; the broker never
sends more tasks than that, so the worker keeps no queue of its own. Results
of a message's tasks (of the messages waiting, when messages pile up) travel
back in one message, unless the batch runs longer than ``FLUSH_AFTER``
seconds, when what is done is sent at once, or a task that may run long
(``FLAG_FLUSH_FIRST``) is next: what is done is sent before it starts. Tiny
tasks that share a credit (``FLAG_GROUPED``) were guessed tiny from their
function's past: once one of them runs ``GROUPED_TASK_LIMIT`` or longer, the
later ones of that function are given back unrun. While a task runs after
which results wait, or a chunk runs, ``ResultWatch`` (``watch.py``) may send
the waiting results from its own thread: the main thread releases the
watch's lock for that task.

A result with buffers out of band (a large array) is sent as soon as its
task returns, without a copy, and the worker waits until ZeroMQ has sent
them before it runs anything else: a later task may change what the result
was (an output array it reuses), as it may under ``ProcessPoolExecutor``,
whose worker pickles a result before its next task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import socket
import sys
import time
from asyncio import _set_running_loop
from collections.abc import Callable
from typing import Any, cast

import zmq
from zmq.utils.monitor import parse_monitor_message

from distex_zmq.security import KeyPair, make_client
from distex_zmq.version import __version__
from distex_zmq.wire import frames as p
from distex_zmq.wire.zmqio import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    LonePoll,
    keep_alive,
    readable,
    recv_frames,
    send_frames,
)

from .logs import LogForwarder
from .running import Runner
from .watch import Entry

#: Seconds between checks that the process that started the worker lives.
PARENT_CHECK_INTERVAL = 1.0
#: A batch of results waits no longer than this for the rest of its batch.
FLUSH_AFTER = 0.001
#: Seconds a task of a group (tiny tasks sharing a credit) may run before
#: the later ones of its function in the message are given back.
GROUPED_TASK_LIMIT = p.GROUP_BELOW_US / 1e6
#: Seconds a worker polls for the next task after the pool's only one.
LONE_POLL = p.LONE_POLL_US / 1e6

_logger = logging.getLogger("distex_zmq.worker")


class Worker:
    """Connects to a broker and runs the tasks it sends until told to stop."""

    def __init__(
        self,
        endpoint: str,
        identity: bytes,
        credits: int,
        func_pickle: int,
        data_pickle: int,
        loop: asyncio.AbstractEventLoop,
        parent_pid: int = 0,
        curve: dict[str, str] | None = None,
        log_level: int = -1,
        heartbeat_ms: int = 0,
        script_module: str | None = None,
    ):
        self._endpoint = endpoint
        self._credits = credits
        self._loop = loop
        self._parent_pid = parent_pid
        self.runner = Runner(func_pickle, data_pickle, loop, self._schedule_flush, self._send)
        self.runner.share_script_globals()
        self.runner.script_as_main(script_module)
        self._flush_scheduled = False
        #: the context the tasks run in, one for them all, as in a process
        #: that calls its functions one after the other: what the
        #: initializer or a task sets in a ``ContextVar`` (``decimal``'s
        #: context is one) holds for the tasks after it. A callback of the
        #: loop runs in a copy of the context it was scheduled from, so
        #: ``_on_readable`` always runs in this one (``_read_soon``).
        self._context = contextvars.copy_context()
        #: the latest batch held the pool's only task (``FLAG_LONE``)
        self._lone = False
        #: polls for the next message after the pool's only task
        self._lone_poll = LonePoll(LONE_POLL)
        #: a message came while the latest results were made: read the
        #: messages waiting before sending results (see ``_on_readable``)
        self._coalesce = False
        self._stopping = False
        self.exit_code = 0
        #: the loop's signal wakeup fd, and ``runner.awaited`` when it was read
        self._wakeup_fd = -1
        self._awaited_seen = -1
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.setsockopt(zmq.ROUTING_ID, identity)
        if heartbeat_ms > 0 and endpoint.startswith("tcp://"):
            # a remote worker only receives while idle: without traffic of
            # its own it would never see a connection that died silently
            keep_alive(self._sock, heartbeat_ms / 1000)
        #: ``zmqio.readable``, inlined: the read loop asks for EVENTS after
        #: each send (typed once here: ``Callable[[int], int]`` builds a
        #: typing object each time it is evaluated)
        self._events = cast(Callable[[int], int], self._sock.getsockopt)
        if curve is not None:
            # the broker's TCP endpoint admits only the keys its pool gave out
            keys = KeyPair(curve["public"].encode(), curve["secret"].encode())
            make_client(self._sock, curve["server"].encode(), keys)
        if log_level >= 0:
            LogForwarder(log_level, self._send_message, loop).install()
        #: the events of the connection to the pool: a dropped one has lost
        #: what was on its way, which the pool would wait for for ever
        self._monitor: Any = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        #: the connection dropped and no ``CHECK`` came since (TCP)
        self._dropped = False
        self._sync_scheduled = False
        #: a message came from the broker: it read the HELLO
        self._heard = False
        #: the HELLO's body (``run``)
        self._info: dict[str, Any] = {}
        self.runner.connection_dropped = self._connection_dropped
        if credits > 1:
            # tasks may wait here behind a long one: it gives them back
            self.runner.watch.give_back(self._recv_waiting)

    def run(self) -> int:
        """Serve tasks until STOP, REFUSE or the loop stops; return the exit code."""
        sock = self._sock
        if "://[" in self._endpoint:  # an IPv6 address, which libzmq takes only so
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(self._endpoint)
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "credits": self._credits,
            "version": __version__,
            "python": sys.version.split()[0],
        }
        sock.send_multipart(p.hello(self._info))
        fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(fd, self._context.run, self._on_readable)
        self._read_soon()
        if self._parent_pid:
            self._loop.call_later(PARENT_CHECK_INTERVAL, self._check_parent)
        monitor = self._monitor
        self._loop.add_reader(int(monitor.getsockopt(zmq.FD)), self._on_monitor)
        # its FD signals an edge: the events before the reader are read here
        self._loop.call_soon(self._on_monitor)
        try:
            self._loop.run_forever()
        finally:
            self._loop.remove_reader(fd)
            self._loop.remove_reader(int(monitor.getsockopt(zmq.FD)))
            sock.disable_monitor()
            monitor.close(linger=0)
            self.runner.cancel_all()
            sock.close()
            self._ctx.term()
        return self.exit_code

    def _on_monitor(self) -> None:
        """Take the events of the connection to the pool. ZeroMQ connects
        again after a drop, but the messages on their way were lost, both
        ways, and the pool would wait for their tasks for ever.

        A local worker exits: its connection drops only when ZeroMQ in the
        client could not take a message (a result larger than the memory
        the client's process may take, say); its exit makes the pool run
        its tasks again, as after any death of a worker. A remote worker's
        TCP connection drops with the network (a reset, a NAT's timeout):
        it sends ``SYNC``, which reaches the broker once connected again,
        and the broker's ``CHECK`` settles which tasks were lost (``_sync``:
        ``HELLO`` again while it may have been lost)."""
        monitor = self._monitor
        while monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            if event["event"] != zmq.EVENT_DISCONNECTED or self._stopping:
                continue
            if not self._endpoint.startswith("ipc://"):
                self._dropped = True
                if not self._sync_scheduled:
                    self._sync_scheduled = True
                    self._loop.call_soon(self._sync)
                continue
            print(
                "distex_zmq worker: its connection to the pool dropped, and what it "
                "was sending may be lost (a message larger than the memory the pool's "
                "process may take?); exiting, so that the pool runs its tasks again",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

    def _connection_dropped(self) -> bool:
        """Whether the connection dropped and no ``CHECK`` came since (the
        events not taken yet too: a drop comes before any message of the
        connection after it)."""
        self._on_monitor()
        return self._dropped

    def _sync(self) -> None:
        """Ask the broker to check the tasks sent here (``SYNC``).

        Before any message came from the broker, the HELLO may have been
        lost with the connection, and the broker ignores ``SYNC`` from a
        worker it does not know: the worker says ``HELLO`` again, which
        admits it if the first was lost, and counts as ``SYNC`` if not;
        either way the broker sends ``CHECK``, which clears ``_dropped``."""
        self._sync_scheduled = False
        if self._stopping:
            return
        if self._heard:
            self._send_message(p.control(p.SYNC))
        else:
            self._send_message(p.hello({**self._info, "again": True}))

    def _check(self, buf: memoryview, count: int) -> None:
        """Answer a ``CHECK`` with the ids in it that this worker does not
        hold (``MISSING``), after the results it holds: every TASK sent
        before the ``CHECK`` has been read, so the broker runs those again
        that it still counts as here. From here on both sides count the
        functions held afresh."""
        round_, ids = p.read_task_ids(buf, count)
        if self.runner.results.entries:
            self._send_results()
        held = self.runner.awaiting
        missing = [task_id for task_id in ids if task_id not in held]
        self.runner.forget_functions()
        self._dropped = False
        # read in ``_on_readable``, which looks at the socket after it
        send_frames(self._sock, p.task_ids(p.MISSING, round_, missing))

    def _check_parent(self) -> None:
        self._exit_if_orphaned()
        self._loop.call_later(PARENT_CHECK_INTERVAL, self._check_parent)

    def _exit_if_orphaned(self) -> None:
        """Exit if the process that started this worker is gone. Linux's
        parent-death signal covers most deaths; this covers the rest
        (another OS, a parent that is not the process that started us)."""
        if self._parent_pid and os.getppid() != self._parent_pid:
            print("distex_zmq worker: the pool's process is gone; exiting", file=sys.stderr)
            os._exit(1)

    # receiving

    def _read_soon(self) -> None:
        """Call ``_on_readable`` from the loop, in the tasks' context."""
        self._loop.call_soon(self._on_readable, context=self._context)

    def _on_readable(self) -> None:
        # Not an EdgeReader: after the pool's only task the worker polls for
        # the next before its loop sleeps, which a reader that yields to the
        # loop after a number of messages cannot do.
        #
        # The socket must be asked for EVENTS after each send (a send can
        # consume the edge of the edge-triggered FD). When that look finds no
        # message, as it does nearly always at qsize=2, the results of the
        # next message are sent before the socket is asked again: a look (a
        # poll() in libzmq) less per message. When it finds one (messages
        # arrive while others run, as at qsize=16), the messages waiting are
        # read first and their results sent together: fewer, larger messages
        # both ways.
        sock = self._sock
        runner = self.runner
        events = self._events
        #: messages read by the watch while a task ran long: before the socket's
        stash = runner.watch.stash
        if self._stopping:
            return
        try:
            # the FD signalled, so a message nearly always waits: receiving it
            # at once spares a look at EVENTS first (a signal with no message
            # costs an exception, and resets the edge as a look does)
            frames: list[Any] | None = recv_frames(sock, NOBLOCK)
        except zmq.Again:
            return
        self._heard = True
        ready = 1
        while True:
            self._lone = False
            while ready:
                given = False
                if frames is None:
                    if stash:
                        frames, given = stash.popleft()
                    else:
                        frames = recv_frames(sock)
                try:
                    kind, count, buf = p.check(frames[0])
                    if kind == p.TASK:
                        if given:
                            self._account_message(buf, count, frames)
                        else:
                            self._run_tasks(buf, count, frames)
                    elif kind == p.STOP:
                        self._stop()
                    elif kind == p.CHECK:
                        self._check(buf, count)
                    elif kind == p.REFUSE:
                        self._refused(p.text_body(buf))
                    else:
                        raise p.ProtocolError(f"unknown message type {kind!r}")
                except p.ProtocolError as e:
                    _logger.error("dropped a message from the broker: %s", e)
                frames = None
                if self._stopping:
                    ready = False
                elif self._coalesce and (stash or events(EVENTS) & POLLIN):
                    continue  # read it too, and send the results together
                if runner.results.entries:
                    self._send_results()
                    if not self._stopping:
                        ready = events(EVENTS) & POLLIN  # a look after every send
                        self._coalesce = bool(ready)
                        if stash:
                            ready = True
                elif not self._stopping:
                    # the look just made found nothing, if coalescing
                    ready = 1 if stash else not self._coalesce and events(EVENTS) & POLLIN
            # after the pool's only task, the next one often follows at once
            if not self._lone or runner.running or self._stopping or not self._lone_poll(sock):
                return
            ready = True

    def _refused(self, reason: str) -> None:
        print(f"distex_zmq worker: refused by the broker: {reason}", file=sys.stderr)
        self.exit_code = 2
        self._stopping = True
        self._loop.stop()

    def _stop(self) -> None:
        self._stopping = True
        if self.runner.running:
            waiter = asyncio.gather(*self.runner.running, return_exceptions=True)
            waiter.add_done_callback(lambda _: self._loop.stop())
        else:
            self._loop.stop()

    # running a message's tasks

    def _run_tasks(self, buf: memoryview, count: int, frames: list[Any]) -> None:
        # A sync task runs as in a process of ProcessPoolExecutor, with no event
        # loop running in its thread: it may call ``asyncio.run`` or a library
        # whose sync API runs a loop of its own. The worker's loop, which calls
        # this from a callback, is the running loop again at the end, and so
        # is its signal wakeup fd (uvloop's, or asyncio's while it has signal
        # handlers), which a loop of the task clears when it removes its last
        # signal handler. The fd stays set while the task runs, so that a
        # signal for a handler of the worker's loop that comes meanwhile
        # reaches it after the task.
        #
        # Setting the fd costs two system calls, and reading it means setting
        # it: the fd is read only when code may have changed it on the loop
        # since it was last read (an awaited task, which may add or remove a
        # signal handler of the worker's loop), and set once, after the tasks.
        runner = self.runner
        if runner.running or runner.awaited != self._awaited_seen:
            self._awaited_seen = runner.awaited
            self._wakeup_fd = signal.set_wakeup_fd(-1)
            if self._wakeup_fd != -1:
                signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)
        _set_running_loop(None)
        try:
            self._run_message(buf, count, frames)
        finally:
            _set_running_loop(self._loop)
            signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)

    def _run_message(self, buf: memoryview, count: int, frames: list[Any]) -> None:
        runner = self.runner
        run = runner.run
        watch = runner.watch
        lock = watch.lock
        start = time.perf_counter()
        reader = p.Reader(buf, p.body(buf, count, p.TASK_ENTRY), frames)
        # the watch may take the entries not started while a task runs long
        watch.entries = entries = p.task_entries(buf, count)
        #: a function whose grouped task was not tiny after all
        slow_func = -1
        # The watch's lock is let go once results wait (or a chunk runs), so
        # that the watch may send them while the tasks after them run; it is
        # taken back only to send from this thread, and at the end.
        released = False
        try:
            for task_id, func_id, flags, func_len, data_len, nbuffers, skip in entries:
                if flags & p.FLAG_REF:
                    # a script function that the next task's data refers to
                    self._take_ref(reader, func_id, flags, data_len, nbuffers, skip)
                    continue
                func_pickle = reader.inline(func_len) if flags & p.FLAG_FUNC else None
                data, buffers = reader.data(data_len, nbuffers)
                if func_id == slow_func and flags & p.FLAG_GROUPED and func_pickle is None:
                    # give it back rather than run the group one slow task after
                    # the other: another worker may be free; its function counts
                    # as used, as the broker counts it (after the task's refs)
                    runner.functions.use(func_id)
                    runner.give_back(task_id)
                    continue
                if flags & p.FLAG_LONE:
                    self._lone = True
                if flags & p.FLAG_FLUSH_FIRST and runner.results.entries:
                    # a task that may run long: send what is done before it starts
                    if released:
                        lock.acquire()
                        released = False
                    self._send_results()
                    start = time.perf_counter()
                grouped = flags & p.FLAG_GROUPED
                if grouped:
                    began = time.perf_counter()
                if not released and (runner.results.entries or flags & p.FLAG_CHUNK):
                    # results wait, or a chunk runs: the watch may send them meanwhile
                    lock.release()
                    released = True
                    if not watch.polling:
                        watch.wake()
                watch.current = task_id
                if not watch.watching:
                    watch.wake()
                run(task_id, func_id, flags, func_pickle, data, buffers, skip)
                watch.current = -task_id
                if watch.taking:
                    self._took_back(reader)
                if runner.results.frames:
                    # a result out of band leaves before the next task can change it
                    if released:
                        lock.acquire()
                        released = False
                    self._send_results()
                    start = time.perf_counter()
                now = time.perf_counter()
                if grouped and now - began >= GROUPED_TASK_LIMIT:
                    slow_func = func_id
                if now - start > FLUSH_AFTER and runner.results.entries:
                    if released:
                        lock.acquire()
                        released = False
                    self._send_results()
                    start = time.perf_counter()
        finally:
            watch.entries = None
            if watch.current > 0:
                # a task did not return (an error of the worker's own): the
                # socket is the main thread's again
                watch.current = -watch.current
                if watch.taking:
                    with watch.sock_lock:
                        watch.taking = False
            if released:
                lock.acquire()

    def _took_back(self, reader: p.Reader) -> None:
        """The watch had the socket while the task that just returned ran
        long: wait until it lets go of it, then count the functions of the
        entries of this message that it gave back (``reader`` is at the
        first of them), as the broker counts them sent."""
        watch = self.runner.watch
        with watch.sock_lock:
            watch.taking = False
        taken, watch.taken = watch.taken, []
        if taken:
            self._account(taken, reader)

    def _take_ref(
        self, reader: p.Reader, func_id: int, flags: int, data_len: int, nbuffers: int, skip: int
    ) -> None:
        """Take a ``FLAG_REF`` entry: a script function that the next task's
        data refers to, with its pickle (``FLAG_FUNC``) or held already."""
        if flags & p.FLAG_FUNC:
            data, buffers = reader.data(data_len, nbuffers)
            self.runner.take_ref(func_id, data, buffers, skip)
        else:
            self.runner.take_ref(func_id, None, [], 0)

    def _account_message(self, buf: memoryview, count: int, frames: list[Any]) -> None:
        """A TASK message whose tasks the watch gave back: count its functions."""
        reader = p.Reader(buf, p.body(buf, count, p.TASK_ENTRY), frames)
        self._account(list(p.task_entries(buf, count)), reader)

    def _account(self, entries: list[Entry], reader: p.Reader) -> None:
        """Take the script functions and functions of ``entries``, whose
        tasks were given back unrun, as if they ran: the worker holds what
        the broker counts as sent (``RecentFunctions``)."""
        runner = self.runner
        for _, func_id, flags, func_len, data_len, nbuffers, skip in entries:
            if flags & p.FLAG_REF:
                self._take_ref(reader, func_id, flags, data_len, nbuffers, skip)
                continue
            func_pickle = reader.inline(func_len) if flags & p.FLAG_FUNC else None
            reader.data(data_len, nbuffers)
            runner.keep_function(func_id, func_pickle)

    # sending results and log records

    def _recv_waiting(self) -> list[Any] | None:
        """A message waiting in the socket, or None (the watch's thread,
        which has the socket)."""
        try:
            return recv_frames(self._sock, NOBLOCK)
        except zmq.Again:
            return None

    def _send_message(self, message: list[bytes]) -> None:
        """Send ``message`` (a log record, ``SYNC``) from a callback of the
        loop, then look at the socket: a send can consume the edge of its
        edge-triggered FD."""
        if self._sock.closed:
            return
        # a log record of a task comes while the watch may use the socket
        with self.runner.watch.sock_lock:
            send_frames(self._sock, message)
            look = not self._stopping and readable(self._sock)
        if look:
            self._read_soon()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _send(self, frames: list[Any]) -> None:
        """Send a message (``ChunkWatch``'s thread, while a chunk runs)."""
        send_frames(self._sock, frames)

    def _send_results(self) -> None:
        """Send the results collected (``_on_readable`` looks at the socket
        after each message, as it must after a send); with buffers out of
        band, return once ZeroMQ has sent them (``_wait_sent``)."""
        self._flush_scheduled = False
        results = self.runner.take_results()
        if results.frames:
            self._wait_sent(send_frames(self._sock, results.frames_out(), True))
        else:
            send_frames(self._sock, results.frames_out())

    def _wait_sent(self, trackers: list[Any]) -> None:
        """Wait until ZeroMQ has let go of the frames sent without a copy:
        the results' buffers are views of the objects the tasks returned,
        which the code run next may change. The broker reads them as they
        come; while it is out of reach, the worker waits as it would while
        a task runs, and exits if the process that started it is gone."""
        for tracker in trackers:
            while not tracker.done:
                try:
                    tracker.wait(PARENT_CHECK_INTERVAL)
                except zmq.NotDone:
                    self._exit_if_orphaned()

    def _flush(self) -> None:
        """Send the results collected, from a callback of the loop."""
        self._flush_scheduled = False
        if self.runner.results.entries:
            self._send_results()
            # a send can consume the edge of the edge-triggered FD: look again
            if not self._stopping and readable(self._sock):
                self._read_soon()
