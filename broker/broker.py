"""The broker: a ROUTER socket that hands tasks to workers as credits allow.

::

    caller threads                     pool loop (this module)
    --------------                     -----------------------
    Task (pickled) --submit()--> inbox --> queue --dispatch()--> ROUTER --> workers
                                                                   |
    sinks <--flush() once per batch-- deliver() <-- running <------+ RESULT

Only the pool loop touches the socket, the queue and the registry. Other
threads hand over tasks with ``submit`` (a deque append and at most one
wake-up per batch) and cancel with ``Task.cancelled``. The broker never
unpickles a task or a result: it routes on headers only. This module owns
the socket and hands each message on: ``Membership`` admits and retires
workers, ``Delivery`` takes their results, ``Dispatcher`` decides where
tasks go, ``Ledger`` keeps the tasks in hand and the barriers, ``Losses`` and
``TaskTimeouts`` handle what goes wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from distex_zmq.errors import SHUT_DOWN, PoolClosedError, ProtocolError
from distex_zmq.security import KeyPair, make_server
from distex_zmq.wire import frames as p
from distex_zmq.wire.frames import RecentFunctions
from distex_zmq.wire.zmqio import EdgeReader, LonePoll, keep_alive, recv_routed, send_routed

from .delivery import Delivery
from .dispatch import Dispatcher
from .held import HeldResults
from .ledger import Ledger
from .losses import Losses, TaskTimeouts
from .membership import Membership
from .records import BrokerCounts, BrokerHooks, Task, WorkerRecord
from .registry import Registry

_logger = logging.getLogger("distex_zmq.broker")

#: Seconds between probes of the workers that hold tasks (``Broker._probe``).
PROBE_INTERVAL = 5.0
#: Seconds the pool loop polls for the result of the pool's only task.
LONE_POLL = p.LONE_POLL_US / 1e6
#: Seconds the pool loop polls for the next result while a map's consumer
#: waits, after a task that ran less than this
RESULT_POLL_US = 200
RESULT_POLL = RESULT_POLL_US / 1e6
#: Peers whose first dropped message is logged on its own line (``DropLog``).
MAX_LOGGED_PEERS = 10
#: After them, one line in this many dropped messages.
DROP_LOG_EVERY = 1000
#: Messages of results, after a worker's last line of output, that read its
#: pipes first (``note_output``): it may print again, and the pipe is read
#: before its results only while this lasts.
PRINTS_WATCH = 1000


class DropLog:
    """The warnings about the messages the broker drops: the first message
    of each of the first ``MAX_LOGGED_PEERS`` peers, then one line in
    ``DROP_LOG_EVERY`` messages, so that a peer that sends garbage, or a
    flood of peers, cannot flood the log, and what it keeps stays bounded."""

    def __init__(self) -> None:
        #: the messages dropped, since the start
        self.dropped = 0
        self._peers: set[bytes] = set()

    def note(self, identity: bytes, why: str) -> None:
        """A message from ``identity`` was dropped, for the reason ``why``."""
        self.dropped += 1
        name = identity.decode(errors="backslashreplace")
        if identity not in self._peers and len(self._peers) < MAX_LOGGED_PEERS:
            self._peers.add(identity)
            _logger.warning(
                "dropped a message from %s: %s (its further messages are dropped without a line)",
                name,
                why,
            )
        elif self.dropped % DROP_LOG_EVERY == 0:
            _logger.warning(
                "dropped %d messages so far from peers that are not workers of this pool "
                "or sent malformed messages; the latest from %s: %s",
                self.dropped,
                name,
                why,
            )


class Broker:
    """Routes tasks to workers and results back to their sinks.

    ``hooks`` are the pool's part: initializers, readiness, and killing the
    workers that the broker gives up on. ``task_timeout``: seconds a task
    may run before its worker is killed (None: no limit).
    ``max_tasks_per_child``: tasks a worker is given before it drains and
    ``hooks.on_spent`` starts a fresh one (None: no limit).
    ``heartbeat_timeout``: seconds within which a dead TCP connection to a
    remote worker is closed (``zmqio.keep_alive``; None: TCP's own), and
    that a remote worker whose connection failed has to connect again
    (``Losses.unreachable``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        max_retries: int,
        task_timeout: float | None,
        hooks: BrokerHooks,
        max_tasks_per_child: int | None = None,
        heartbeat_timeout: float | None = None,
    ):
        self.loop = loop
        self._heartbeat_timeout = heartbeat_timeout
        self.registry = Registry()
        self._ledger = Ledger()
        self._hooks = hooks
        self._timeouts = (
            None if task_timeout is None else TaskTimeouts(loop, self.registry, task_timeout, hooks)
        )
        self._dispatcher = Dispatcher(
            self.registry,
            self._ledger,
            self._send,
            None if self._timeouts is None else self._timeouts.started,
            max_tasks_per_child,
            None if max_tasks_per_child is None else hooks.on_spent,
        )
        self._losses = Losses(
            loop,
            self.registry,
            self._ledger,
            self._dispatcher,
            self.dispatch,
            hooks,
            max_retries,
            task_timeout,
            heartbeat_timeout,
        )
        self._members = Membership(
            self.registry, self._dispatcher, self._losses, hooks, self._control, self.dispatch
        )
        self._held = HeldResults(loop, hooks, self._ledger.finish)
        self._delivery = Delivery(
            self.registry,
            self._ledger,
            self._dispatcher,
            self._members,
            self._timeouts,
            hooks,
            self.dispatch,
            self._held,
        )
        self._inbox = self._dispatcher.inbox
        #: the warnings about messages dropped (a peer that is no worker, or malformed)
        self.drops = DropLog()
        self._wake_pending = False
        self._lone_poll = LonePoll(LONE_POLL)
        #: the maps whose consumer waits for results now, its thread idle
        self.consumers_waiting: set[object] = set()
        self._result_poll = LonePoll(RESULT_POLL)
        self._closed = False
        #: what ``submit`` raises once the broker is closed
        self.closed_message = SHUT_DOWN
        #: the workers were asked to exit: no task goes to them any more
        self._stopping = False
        self._ctx = ctx
        self._sock: zmq.Socket[Any] | None = None  # made on the pool loop by bind()
        self._reader: EdgeReader | None = None
        self._probe_timer: asyncio.TimerHandle | None = None
        self.endpoints: list[str] = []

    @property
    def grouped_tasks(self) -> int:
        """Tasks sent in groups that shared a credit, since the start."""
        return self._dispatcher.grouped_tasks

    def counts(self) -> BrokerCounts:
        """The broker's counters and its workers now (pool loop; no task is
        looked at: the cost grows with the workers only)."""
        dispatcher, losses, delivery = self._dispatcher, self._losses, self._delivery
        workers = list(self.registry.workers.values())
        return BrokerCounts(
            workers=workers,
            lost=list(losses.lost),
            queued=dispatcher.queued,
            in_flight=sum(len(rec.running) for rec in workers),
            done=delivery.done,
            failed=delivery.failed + losses.failed,
            retried=losses.retried,
            workers_lost=losses.workers_lost,
            grouped_tasks=dispatcher.grouped_tasks,
        )

    # set-up and tear-down (pool loop)

    def bind(self, endpoint: str, curve: KeyPair | None = None, ipv6: bool = False) -> str:
        """Bind the socket; return the endpoint with the port actually taken.
        ``ipv6``: a TCP endpoint takes IPv6 too (``tcp://*``: both, where the
        machine has IPv6; ``tcp://[::1]``).

        With ``curve`` keys the endpoint is a CURVE server: encrypted, and
        open only to the clients that the context's ZAP handler admits.
        Options apply to the endpoints bound after them, so plain endpoints
        must be bound first; TCP endpoints keep their connections alive
        (``heartbeat_timeout``), which the ipc endpoint bound before them
        needs not.
        """
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.ROUTER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # a worker whose connection died unseen here connects again with
            # its identity: its new connection takes the place of the old one
            # (which would refuse it until TCP gave up on the old one)
            self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._reader = EdgeReader(
                self.loop, self._sock, self._on_message, recv=recv_routed, wait_more=self._wait_more
            )
            self._probe_timer = self.loop.call_later(PROBE_INTERVAL, self._probe)
        if endpoint.startswith("tcp://") and self._heartbeat_timeout is not None:
            keep_alive(self._sock, self._heartbeat_timeout)  # remote workers' connections
        if endpoint.startswith("tcp://"):
            self._sock.setsockopt(zmq.IPV6, int(ipv6))
        if curve is not None:
            make_server(self._sock, curve)
        elif self._sock.getsockopt(zmq.CURVE_SERVER):
            raise ValueError("bind plain endpoints before CURVE ones")
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            port = self._sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
            endpoint = f"{endpoint.rsplit(':', 1)[0]}:{port}"
        else:
            self._sock.bind(endpoint)
        self.endpoints.append(endpoint)
        return endpoint

    def expect(self, identity: bytes, remote: bool = False) -> None:
        """Admit a worker with this identity (given to it by its launcher);
        ``remote``: it connects over TCP, from another host."""
        self.registry.expect(identity, remote)

    def forget(self, identity: bytes) -> None:
        """Admit this identity no more (its worker will never connect)."""
        self._members.forget(identity)

    def retire(self, identity: bytes, drain: bool) -> None:
        """Take a worker out of the pool: it gets no new task; with ``drain``
        it finishes what it holds first (see ``Membership.retire``)."""
        self._members.retire(identity, drain)

    def close(self, error_factory: Callable[[Task], BaseException]) -> None:
        """Close the socket; fail every task not finished (pool loop)."""
        if self._closed:
            return
        # Closed first: a submitter that appends after the inbox is taken
        # below sees the flag and raises instead of waiting forever.
        self._closed = True
        self._losses.close()
        if self._timeouts is not None:
            self._timeouts.close()
        self._dispatcher.take_queued()
        self._held.release_all()  # results that came: theirs, not an error
        self._ledger.drop_barriers()  # nothing is drained: what waits fails
        self._losses.fail(list(self._ledger.active.values()), error_factory)
        if self._reader is not None:
            self._reader.close()
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)

    def fail_all(self, error_factory: Callable[[Task], BaseException]) -> None:
        """Fail every task that waits in the queue (no worker can run them)."""
        self._losses.fail(self._dispatcher.take_queued(), error_factory)

    def worker_lost(
        self,
        rec: WorkerRecord,
        how: str,
        timed_out: Task | None = None,
        blameless: bool = False,
    ) -> None:
        """Forget a worker that is gone; requeue or fail what it was running
        (see ``Losses.worker_lost``)."""
        self._losses.worker_lost(rec, how, timed_out, blameless)

    def stop_workers(self) -> None:
        """Ask every worker to finish and exit, and those that connect later;
        the tasks still queued stay there for ``close`` to fail."""
        self._stopping = True
        self._members.stop_all()

    # any thread

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue tasks (thread-safe); they are dispatched on the pool loop.

        The pool loop is woken only when it waits for work: while every
        credit is in use it takes the new tasks when the next result comes
        in, which spares a thread wake-up per batch.
        """
        self._inbox.extend(tasks)
        if self._closed:
            raise PoolClosedError(self.closed_message)
        if self._dispatcher.starving:
            self.wake()

    def wake(self) -> None:
        """Make the pool loop look at the inbox and the cancelled tasks."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._on_wake)
            except RuntimeError:  # loop closed: the pool is gone
                pass

    # pool loop

    def _on_wake(self) -> None:
        self._wake_pending = False
        dispatcher = self._dispatcher
        dispatcher.lone_sent = False
        self.dispatch()
        if dispatcher.lone_sent:
            self._poll_lone_result()
        if dispatcher.queued:  # no credit is free for them: a map may have ended
            dispatcher.drop_cancelled()

    def _poll_lone_result(self) -> None:
        """The pool's only task just went out (``FLAG_LONE``: one task at a
        time, say): poll for its result for up to ``LONE_POLL`` before the
        loop sleeps, which spares the pool loop a wake-up as its worker's
        poll spares the worker's. A wake-up from another thread (a submit,
        a cancel) ends the poll, so that the loop takes it at once."""
        assert self._sock is not None and self._reader is not None
        if self._lone_poll(self._sock, lambda: self._wake_pending):
            self._reader.read()

    def _wait_more(self, sock: zmq.Socket[Any]) -> bool:
        """The socket ran empty: whether the next result came within a poll
        of ``RESULT_POLL``, polled for while a map's consumer waits for
        results and the latest task answered was a single one that ran
        briefly (a map of tiny tasks, one per message, bound by round
        trips). The loop then handles it without sleeping, which spares the
        pool loop a wake-up per message; the consumer's thread is idle
        meanwhile, so the poll takes neither its core nor the GIL. A wake-up
        from another thread, or the consumer woken, ends the poll; polls
        that find nothing are skipped for a while (``LonePoll``)."""
        if (
            not self.consumers_waiting
            or self._wake_pending
            or self._dispatcher.latest_run >= RESULT_POLL_US
            or not self._ledger.active
        ):
            return False
        return self._result_poll(sock, self._poll_stop)

    def _poll_stop(self) -> bool:
        """Whether a poll for a result ends: another thread woke the loop,
        or no consumer waits any more."""
        return self._wake_pending or not self.consumers_waiting

    def note_output(self, identity: bytes, ticket: int) -> None:
        """Worker ``identity`` wrote lines that ``ticket`` writes: its
        results wait for them, as for its log records (``HeldResults``)."""
        rec = self.registry.get(identity)
        if rec is not None and ticket:
            rec.log_ticket = ticket
            rec.prints = PRINTS_WATCH

    def dispatch(self) -> None:
        """Send queued tasks to workers with free credits, idle workers first."""
        if self._closed or self._stopping or self._reader is None:
            return
        if self._dispatcher.dispatch():
            self._reader.poke()  # a send can take the edge of the socket's FD

    def _send(self, rec: WorkerRecord, frames: list[Any]) -> None:
        assert self._sock is not None
        try:
            send_routed(self._sock, rec.identity, frames)
        except zmq.ZMQError as e:
            self._losses.unreachable(rec, f"its connection failed ({e})")

    def _probe(self) -> None:
        """Send a probe to each worker that holds tasks.

        A worker cut off alive (its process runs, its connection is gone) is
        found only by a send to it that fails, and a worker that runs a long
        task is sent nothing else until it is done. A probe never waits: a
        worker whose queue is full is connected.
        """
        self._probe_timer = None
        if self._closed or self._sock is None:
            return
        probe = p.probe()
        sent = False
        for rec in list(self.registry.workers.values()):
            if rec.running and not rec.unreachable:
                try:
                    self._sock.send_multipart([rec.identity, *probe], zmq.DONTWAIT)
                    sent = True
                except zmq.Again:
                    pass
                except zmq.ZMQError as e:
                    self._losses.unreachable(rec, f"its connection failed ({e})")
        if sent and self._reader is not None:
            self._reader.poke()  # a send can take the edge of the socket's FD
        self._probe_timer = self.loop.call_later(PROBE_INTERVAL, self._probe)

    def _on_message(self, frames: list[Any]) -> None:
        identity = frames[0]  # bytes (``recv_routed``)
        try:
            kind, count, buf = p.check(frames[1])
            if kind == p.RESULT:
                rec = self.registry.get(identity)
                if rec is None:
                    if self._members.retired(identity):
                        return  # it was removed with drain=False: its tasks run elsewhere
                    if any(lost.identity == identity for lost in self._losses.lost):
                        return  # late, from a worker given up (its host lost, say)
                    raise ProtocolError("result from an unknown worker")
                self._delivery.on_results(rec, buf, count, frames[1:])
            elif kind == p.HELLO:
                again = self._members.hello(identity, buf)
                if again is not None:  # said again: its connection dropped
                    self._check(again)
            elif kind == p.SYNC:
                rec = self.registry.get(identity)
                if rec is not None:
                    self._check(rec)
            elif kind == p.MISSING:
                rec = self.registry.get(identity)
                if rec is not None:
                    self._delivery.on_missing(rec, *p.read_task_ids(buf, count))
            elif kind == p.LOG:
                rec = self.registry.get(identity)
                if rec is not None:
                    rec.log_ticket = self._hooks.on_log(rec, bytes(buf[p.HEAD.size :]))
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except ProtocolError as e:
            self.drops.note(identity, str(e))
            if "version" in str(e):
                self._control(identity, p.REFUSE, str(e).encode())
        except Exception:
            _logger.exception("error handling a message from %r", identity)

    def _check(self, rec: WorkerRecord) -> None:
        """``rec``'s connection dropped and came back (its ``SYNC``, or its
        ``HELLO`` again before it heard from the pool): ask it which of the
        tasks sent to it it holds (``CHECK``), as what was on its way either
        way may be lost; its ``MISSING`` answers. The functions it holds are
        counted afresh from here, as the worker counts them from the
        ``CHECK`` on."""
        rec.sync_round += 1
        rec.known_funcs = RecentFunctions()
        _logger.info("the connection of %s dropped and came back: checking its tasks", rec)
        self._losses.reconnected(rec)
        self._send(rec, p.task_ids(p.CHECK, rec.sync_round, list(rec.running)))
        if self._reader is not None:
            self._reader.poke()  # a send can take the edge of the socket's FD
        self.dispatch()  # it may take tasks again

    def _control(self, identity: bytes, kind: bytes, body: bytes = b"") -> None:
        """Send STOP or REFUSE, if the peer can still be reached and takes it
        now: a peer that sends and never reads (its queue full) must not
        block the pool loop."""
        if self._sock is not None:
            try:
                self._sock.send_multipart([identity, *p.control(kind, body)], zmq.DONTWAIT)
            except zmq.ZMQError:  # zmq.Again included
                pass
            if self._reader is not None:
                self._reader.poke()  # a send can take the edge of the socket's FD

    # barriers: run_on_all and shutdown wait for what was submitted before them

    def active_ids(self) -> set[int]:
        """The ids of the tasks submitted and not finished."""
        return set(self._ledger.active)

    def when_drained(
        self, callback: Callable[[], None], dropped: Callable[[], None] | None = None
    ) -> None:
        """Call ``callback`` once every task submitted so far has finished;
        ``dropped``, if given, instead if the broker closes (or has closed)
        before."""
        if self._closed:
            if dropped is not None:
                dropped()
            return
        self.dispatch()
        self._dispatcher.drop_cancelled()
        self._ledger.when_finished(callback, dropped)

    def pin_to_all(self, make_task: Callable[[], Task]) -> list[Task]:
        """Give each ready worker a task of its own, made by ``make_task()``;
        return the tasks."""
        tasks = []
        for rec in self.registry.ready_workers():
            task = make_task()
            self._dispatcher.pin(rec, task)
            self._ledger.add(task)
            tasks.append(task)
        self.dispatch()
        return tasks
