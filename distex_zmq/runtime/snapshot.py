"""``Pool.status()`` on the pool loop: a ``PoolStatus`` made from the broker's
counters and records, the supervisor's roster and the client's task maker.

It looks at each worker and host once, and at no task but the first
``HELD_SHOWN`` each worker holds, so it is cheap enough to take in a loop;
it runs on the pool loop, so what it shows is consistent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
import time
from typing import TYPE_CHECKING, Protocol

from distex_zmq.broker import Broker, WorkerRecord
from distex_zmq.runtime.roster import Roster, WorkerPlace
from distex_zmq.tasks import TaskMaker

if TYPE_CHECKING:
    # imported when a status is first taken (``take_status``)
    from distex_zmq.status import PoolStatus, WorkerStatus


class StatusSource(Protocol):
    """What runs a pool loop and takes its status there: the runtime."""

    loop: asyncio.AbstractEventLoop

    @property
    def thread(self) -> threading.Thread:
        """The pool loop's thread."""

    @property
    def loop_running(self) -> bool:
        """The pool loop's thread has not ended."""

    def status(self, shut_down: bool) -> PoolStatus:
        """The status now (on the pool loop), or the last one."""


def status_threadsafe(source: StatusSource, shut_down: bool) -> PoolStatus:
    """``source.status`` from any thread: taken on the pool loop, waited for
    (taken at once on the pool loop itself, or once the loop has ended)."""
    thread = source.thread
    if threading.current_thread() is thread or not source.loop_running:
        return source.status(shut_down)
    future: concurrent.futures.Future[PoolStatus] = concurrent.futures.Future()
    try:
        source.loop.call_soon_threadsafe(_take, source, shut_down, future)
    except RuntimeError:  # the loop is closed: the last status
        return source.status(shut_down)
    while True:
        try:
            return future.result(timeout=0.05)
        except concurrent.futures.TimeoutError:
            if not source.loop_running:  # the loop ended before it got to it
                return source.status(shut_down)


async def status_async(source: StatusSource, shut_down: bool) -> PoolStatus:
    """``status_threadsafe`` for a coroutine: it waits without blocking its loop."""
    thread = source.thread
    if threading.current_thread() is thread or not source.loop_running:
        return source.status(shut_down)
    future: concurrent.futures.Future[PoolStatus] = concurrent.futures.Future()
    try:
        source.loop.call_soon_threadsafe(_take, source, shut_down, future)
    except RuntimeError:
        return source.status(shut_down)
    waiter = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait([waiter], timeout=0.05)
        if done:
            return waiter.result()
        if not source.loop_running:
            waiter.cancel()
            return source.status(shut_down)


def _take(
    source: StatusSource, shut_down: bool, future: concurrent.futures.Future[PoolStatus]
) -> None:
    try:
        future.set_result(source.status(shut_down))
    except BaseException as e:  # noqa: BLE001 - raised in the caller
        future.set_exception(e)


def take_status(
    broker: Broker,
    roster: Roster,
    tasks: TaskMaker,
    state: str,
    error: BaseException | None,
    configured: int,
) -> PoolStatus:
    """The pool now (on the pool loop)."""
    from distex_zmq.status import HostStatus, PoolStatus, Totals

    counts = broker.counts()
    records = {rec.identity: rec for rec in counts.workers}
    workers: list[WorkerStatus] = []
    lost = set()
    for rec in counts.lost:
        # (a worker the broker gave up on may not have exited yet)
        place = roster.lost.get(rec.identity) or roster.places.get(rec.identity)
        if place is not None:
            lost.add(rec.identity)
            workers.append(_worker(rec.identity, place, rec, "lost"))
    #: the workers that are leaving or lost, which their host does not count
    gone = set(lost)
    for identity, place in roster.places.items():
        if identity in lost:
            continue
        rec = records.get(identity)
        if rec is None and place.pid is not None:
            # it was ready, and the broker let it go (drained and told to
            # stop, or withdrawn): it leaves as its process exits
            worker_state = "leaving"
        elif rec is None or not rec.ready:
            worker_state = "starting"
        else:
            # draining: it runs what it holds and gets nothing new
            worker_state = "leaving" if rec.draining else "ready"
        if worker_state == "leaving":
            gone.add(identity)
        workers.append(_worker(identity, place, rec, worker_state))
    hosts = tuple(
        HostStatus(
            h.spec,
            h.kind,
            h.state,
            len(h.workers - gone),
            h.next_retry,
            h.last_error,
            python=h.python,
        )
        for h in roster.hosts.values()
    )
    totals = Totals(
        queued=counts.queued,
        in_flight=counts.in_flight,
        done=counts.done,
        failed=counts.failed,
        retried=counts.retried,
        workers_lost=counts.workers_lost,
        replacements=roster.replacements,
        grouped_tasks=counts.grouped_tasks,
        functions_cached=len(tasks.functions),
        tasks_submitted=tasks.made,
        renewals=roster.renewals,
    )
    return PoolStatus(state, error, configured, tuple(workers), hosts, totals, time.time())


def stopped(status: PoolStatus, state: str) -> PoolStatus:
    """``status`` as the last word of a pool that ended: in ``state``, with
    its workers and hosts ``"stopped"`` and nothing queued or running."""
    return dataclasses.replace(
        status,
        state=state,
        workers=tuple(
            dataclasses.replace(w, state="stopped", tasks_held=0, tasks=(), busy_since=None)
            for w in status.workers
        ),
        hosts=tuple(dataclasses.replace(h, state="stopped", workers=0) for h in status.hosts),
        totals=dataclasses.replace(status.totals, queued=0, in_flight=0),
        taken_at=time.time(),
    )


def _worker(
    identity: bytes, place: WorkerPlace, rec: WorkerRecord | None, state: str
) -> WorkerStatus:
    from distex_zmq.status import HELD_SHOWN, WorkerStatus

    running = {} if rec is None or state == "lost" else rec.running
    return WorkerStatus(
        name=identity.decode(errors="replace"),
        host=place.host if rec is None else rec.host,
        pid=place.pid if rec is None else rec.pid,
        kind=place.kind,
        state=state,
        tasks_held=len(running),
        done=0 if rec is None else rec.done,
        failed=0 if rec is None else rec.failed,
        started_at=place.started_at,
        python=None if rec is None else rec.python,
        tasks=tuple(task.describe() for task in itertools.islice(running.values(), HELD_SHOWN)),
        busy_since=rec.busy_since if running and rec is not None else None,
    )
