"""What a second thread in the client costs the pyzmq floor.

``run.py``'s ``pyzmq`` column is one thread that blocks in libzmq: it sends
a task, blocks for a result, sends the next. A pool whose broker runs on a
thread of its own (distex_zmq's pool loop) cannot do that: the caller's
thread hands tasks to the broker's thread and the broker's thread hands
results back. This script measures, in one run and interleaved, the same
ROUTER/DEALER traffic with the same workers (``_rawzmq_worker.py``) and the
same in-flight window, driven in four ways, with no pool code at all:

- ``blocking``: ``run.py``'s floor, one thread blocking in libzmq;
- ``one_loop``: one thread, the caller's event loop (uvloop) reading the
  ROUTER through ``add_reader``: the floor of a broker on the caller's loop;
- ``two_threads``: the caller's event loop and a broker thread that blocks
  in ``zmq_poll`` (no event loop); tasks cross over a deque and an eventfd,
  results over ``call_soon_threadsafe``, one wake-up per batch either way:
  the floor of a broker thread with the least Python a broker can have;
- ``two_loops``: as ``two_threads``, the broker thread running a uvloop
  loop as distex_zmq's pool loop does;
- ``distex_zmq``: the pool itself, ``Pool(2, qsize=2)`` made on the
  caller's loop, ``map_async`` and ``await run_async`` as ``run.py`` runs
  them, and ``distex_zmq_sync``: its blocking ``run`` from the same thread
  while the loop does not run.

Rows: ``g`` at chunksize=1 (decimal strings, a message per task, ``qsize``
in flight per worker), at chunksize=100 (a pickled tuple per message), and
one task at a time (the caller waits for each result: ``await`` in the
loop, or a blocking wait from a plain thread for ``two_threads_sync``).

``python benchmarks/floor_threads.py --rounds 3``; prints, per round, each
variant's rate and its share of ``blocking``'s in that round.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import tasks
import uvloop
import zmq

from distex_zmq import Pool

NUM_WORKERS = 2
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rawzmq_worker.py")


class Cluster:
    """A ROUTER bound on ipc and ``NUM_WORKERS`` echo workers."""

    def __init__(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="floor-")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{self.tmpdir}/router"
        self.sock.bind(endpoint)
        self.procs = [
            subprocess.Popen([sys.executable, WORKER, endpoint]) for _ in range(NUM_WORKERS)
        ]
        self.workers = [self.sock.recv_multipart()[0] for _ in range(NUM_WORKERS)]

    def close(self) -> None:
        for worker in self.workers:
            self.sock.send_multipart([worker, b"stop"])
        for proc in self.procs:
            proc.wait(timeout=10)
        self.sock.close()
        self.ctx.term()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` (its ``EVENTS``)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def socket_fd(sock: zmq.Socket[Any]) -> int:
    """The file descriptor that signals ``sock``'s events."""
    return cast(int, sock.getsockopt(zmq.FD))


def messages(n: int, chunksize: int) -> Iterator[list[bytes]]:
    """The task messages of ``g`` over ``range(n)``, as the floor sends them."""
    if chunksize == 1:
        return ([b"+%d" % i] for i in range(n))
    items = iter(range(n))
    return (
        [b"chunk", pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL)]
        for chunk in iter(lambda: tuple(itertools.islice(items, chunksize)), ())
    )


def decode(frame: zmq.Frame, chunksize: int) -> int:
    """The sum of the results in a result message."""
    if chunksize == 1:
        return int(frame.bytes)
    return sum(pickle.loads(frame.buffer))


def expected(n: int) -> int:
    """Sum of ``g(i) = i + 2`` over ``range(n)``."""
    return n * (n - 1) // 2 + 2 * n


# ------------------------------------------------------------------ blocking


def map_blocking(cluster: Cluster, n: int, chunksize: int, qsize: int) -> int:
    """``run.py``'s floor: one thread, blocking receives."""
    sock = cluster.sock
    free = [w for w in cluster.workers for _ in range(qsize)]
    busy = total = 0
    for message in messages(n, chunksize):
        if not free:
            worker, frame = sock.recv_multipart(copy=False)
            total += decode(frame, chunksize)
            free.append(worker.bytes)
            busy -= 1
        sock.send_multipart([free.pop(), *message], copy=False)
        busy += 1
    for _ in range(busy):
        worker, frame = sock.recv_multipart(copy=False)
        total += decode(frame, chunksize)
    return total


def latency_blocking(cluster: Cluster, n: int) -> list[float]:
    """One task at a time, one thread."""
    sock, worker, clock = cluster.sock, cluster.workers[0], time.perf_counter
    out = []
    for _ in range(n):
        t0 = clock()
        sock.send_multipart([worker, b"12345678"])
        sock.recv_multipart(copy=False)
        out.append(clock() - t0)
    return out


# ------------------------------------------------------------------ one loop


async def map_one_loop(cluster: Cluster, n: int, chunksize: int, qsize: int) -> int:
    """One thread: the caller's loop reads the ROUTER through ``add_reader``."""
    loop = asyncio.get_running_loop()
    sock = cluster.sock
    free = [w for w in cluster.workers for _ in range(qsize)]
    source = messages(n, chunksize)
    state = {"busy": 0, "total": 0, "more": True}
    done = loop.create_future()

    def feed() -> None:
        while free and state["more"]:
            message = next(source, None)
            if message is None:
                state["more"] = False
                break
            sock.send_multipart([free.pop(), *message], copy=False)
            state["busy"] += 1

    def on_readable() -> None:
        while readable(sock):
            while True:
                try:
                    worker, frame = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                state["total"] += decode(frame, chunksize)
                state["busy"] -= 1
                free.append(worker.bytes)
                feed()
        if not state["more"] and not state["busy"] and not done.done():
            done.set_result(state["total"])

    fd = socket_fd(sock)
    loop.add_reader(fd, on_readable)
    try:
        feed()
        on_readable()
        return await done
    finally:
        loop.remove_reader(fd)


async def latency_one_loop(cluster: Cluster, n: int) -> list[float]:
    """One task at a time, awaited, the ROUTER read on the caller's loop."""
    loop = asyncio.get_running_loop()
    sock, worker, clock = cluster.sock, cluster.workers[0], time.perf_counter
    waiter: list[asyncio.Future[None]] = []

    def on_readable() -> None:
        while readable(sock):
            sock.recv_multipart(zmq.NOBLOCK, copy=False)
            waiter.pop().set_result(None)

    fd = socket_fd(sock)
    loop.add_reader(fd, on_readable)
    out = []
    try:
        for _ in range(n):
            t0 = clock()
            fut = loop.create_future()
            waiter.append(fut)
            sock.send_multipart([worker, b"12345678"])
            on_readable()
            await fut
            out.append(clock() - t0)
    finally:
        loop.remove_reader(fd)
    return out


# ---------------------------------------------------------------- two threads


def send_pending(
    sock: zmq.Socket[Any], free: list[bytes], pending: collections.deque[list[bytes]]
) -> None:
    """Send the pending tasks while workers have credits."""
    while free and pending:
        sock.send_multipart([free.pop(), *pending.popleft()], copy=False)


def take_results(
    sock: zmq.Socket[Any],
    free: list[bytes],
    pending: collections.deque[list[bytes]],
    results: collections.deque[zmq.Frame],
) -> bool:
    """Receive every result waiting, refilling each worker's credit as its
    result comes; whether there was any."""
    got = False
    while True:
        try:
            worker, frame = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return got
        results.append(frame)
        free.append(worker.bytes)
        got = True
        send_pending(sock, free, pending)


class BrokerThread(threading.Thread):
    """What both broker threads hold: the ROUTER, each worker's free credits,
    the tasks the caller handed over (``pending``), the results for the
    caller, and ``deliver``, which the broker's thread calls once per batch
    of results."""

    def __init__(self, cluster: Cluster, qsize: int) -> None:
        super().__init__(daemon=True)
        self.sock = cluster.sock
        self.free = [w for w in cluster.workers for _ in range(qsize)]
        self.pending: collections.deque[list[bytes]] = collections.deque()
        self.results: collections.deque[zmq.Frame] = collections.deque()
        self.deliver: Callable[[], None] = lambda: None

    def wake(self) -> None:
        """Tell the broker thread that ``pending`` has more (any thread)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        raise NotImplementedError


class PollBroker(BrokerThread):
    """A broker thread that blocks in ``zmq_poll``; an eventfd wakes it."""

    def __init__(self, cluster: Cluster, qsize: int) -> None:
        super().__init__(cluster, qsize)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.stopping = False

    def wake(self) -> None:
        os.eventfd_write(self.wake_fd, 1)

    def stop(self) -> None:
        self.stopping = True
        self.wake()
        self.join()
        os.close(self.wake_fd)

    def run(self) -> None:
        sock, free, pending, results = self.sock, self.free, self.pending, self.results
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        while not self.stopping:
            poller.poll()
            try:
                os.eventfd_read(self.wake_fd)
            except BlockingIOError:
                pass
            got = take_results(sock, free, pending, results)
            send_pending(sock, free, pending)
            if got:
                self.deliver()


class LoopBroker(BrokerThread):
    """A broker thread on a uvloop loop of its own (``add_reader`` on the
    ROUTER's fd, tasks handed over by ``call_soon_threadsafe``)."""

    def __init__(self, cluster: Cluster, qsize: int) -> None:
        super().__init__(cluster, qsize)
        self.loop = uvloop.new_event_loop()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.send_and_read)

    def send_and_read(self) -> None:
        # a send may take the ROUTER's read signal without reading: look again
        self.send()
        self.on_readable()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join()
        self.loop.close()

    def send(self) -> None:
        send_pending(self.sock, self.free, self.pending)

    def on_readable(self) -> None:
        got = False
        while readable(self.sock):
            got = take_results(self.sock, self.free, self.pending, self.results) or got
        if got:
            self.deliver()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.add_reader(socket_fd(self.sock), self.on_readable)
        self.loop.run_forever()
        self.loop.remove_reader(socket_fd(self.sock))


async def map_two_threads(broker: BrokerThread, n: int, chunksize: int, qsize: int) -> int:
    """The caller's loop keeps the broker's deque topped up to one window
    beyond the workers' credits; the broker wakes it once per batch."""
    loop = asyncio.get_running_loop()
    source = messages(n, chunksize)
    window = 2 * qsize * NUM_WORKERS
    state = {"sent": 0, "received": 0, "total": 0, "more": True, "scheduled": False}
    done = loop.create_future()
    results = broker.results

    def refill() -> None:
        added = False
        while state["more"] and state["sent"] - state["received"] < window:
            message = next(source, None)
            if message is None:
                state["more"] = False
                break
            broker.pending.append(message)
            state["sent"] += 1
            added = True
        if added:
            broker.wake()

    def on_results() -> None:
        state["scheduled"] = False
        while results:
            state["total"] += decode(results.popleft(), chunksize)
            state["received"] += 1
        refill()
        if not state["more"] and state["received"] == state["sent"] and not done.done():
            done.set_result(state["total"])

    def deliver() -> None:  # on the broker's thread
        if not state["scheduled"]:
            state["scheduled"] = True
            loop.call_soon_threadsafe(on_results)

    broker.deliver = deliver
    refill()
    return await done


async def latency_two_threads(broker: BrokerThread, n: int) -> list[float]:
    """One task at a time, awaited on the caller's loop."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    waiter: list[asyncio.Future[None]] = []
    results = broker.results

    def on_results() -> None:
        results.popleft()
        waiter.pop().set_result(None)

    def deliver() -> None:  # on the broker's thread
        loop.call_soon_threadsafe(on_results)

    broker.deliver = deliver
    out = []
    for _ in range(n):
        t0 = clock()
        fut = loop.create_future()
        waiter.append(fut)
        broker.pending.append([b"12345678"])
        broker.wake()
        await fut
        out.append(clock() - t0)
    return out


def latency_two_threads_sync(broker: BrokerThread, n: int) -> list[float]:
    """One task at a time, the caller blocking on a lock (as a sync ``run``)."""
    clock = time.perf_counter
    results = broker.results
    lock = threading.Lock()
    lock.acquire()
    broker.deliver = lock.release
    out = []
    for _ in range(n):
        t0 = clock()
        broker.pending.append([b"12345678"])
        broker.wake()
        lock.acquire()
        results.popleft()
        out.append(clock() - t0)
    return out


# ------------------------------------------------------------------ the pool


async def map_pool(pool: Any, n: int, chunksize: int) -> int:
    """``map_async`` of ``g``, as ``run.py`` consumes it."""
    total = 0
    async for result in pool.map_async(tasks.g, range(n), chunksize=chunksize):
        total += result
    return total


async def latency_pool(pool: Any, n: int) -> list[float]:
    """``await run_async`` one at a time."""
    clock, g = time.perf_counter, tasks.g
    out = []
    for i in range(n):
        t0 = clock()
        await pool.run_async(g, i)
        out.append(clock() - t0)
    return out


def latency_pool_sync(pool: Any, n: int) -> list[float]:
    """The blocking ``run`` one at a time, no loop running."""
    clock, g = time.perf_counter, tasks.g
    out = []
    for i in range(n):
        t0 = clock()
        pool.run(g, i)
        out.append(clock() - t0)
    return out


# ---------------------------------------------------------------------- main


def measure(
    cluster: Cluster, pool: Any, variant: str, row: str, n: int, loop: asyncio.AbstractEventLoop
) -> float:
    """Tasks/s for the map rows, p50 µs for the latency rows."""
    chunksize = 100 if row == "cs100" else 1
    if variant.startswith("distex_zmq"):
        t0 = time.perf_counter()
        if row == "latency":
            if variant == "distex_zmq_sync":
                lat = latency_pool_sync(pool, n)
            else:
                lat = loop.run_until_complete(latency_pool(pool, n))
            return statistics.median(lat) * 1e6
        total = loop.run_until_complete(map_pool(pool, n, chunksize))
        if total != expected(n):
            raise AssertionError(f"{variant} {row}: wrong total {total}")
        return n / (time.perf_counter() - t0)
    qsize = 2
    broker: BrokerThread | None = None
    if variant in ("two_threads", "two_threads_sync"):
        broker = PollBroker(cluster, qsize)
    elif variant == "two_loops":
        broker = LoopBroker(cluster, qsize)
    if broker is not None:
        broker.start()
    try:
        t0 = time.perf_counter()
        if row == "latency":
            if variant == "blocking":
                lat = latency_blocking(cluster, n)
            elif variant == "one_loop":
                lat = loop.run_until_complete(latency_one_loop(cluster, n))
            elif variant == "two_threads_sync":
                assert broker is not None
                lat = latency_two_threads_sync(broker, n)
            else:
                assert broker is not None
                lat = loop.run_until_complete(latency_two_threads(broker, n))
            return statistics.median(lat) * 1e6
        if variant == "blocking":
            total = map_blocking(cluster, n, chunksize, qsize)
        elif variant == "one_loop":
            total = loop.run_until_complete(map_one_loop(cluster, n, chunksize, qsize))
        else:
            assert broker is not None
            total = loop.run_until_complete(map_two_threads(broker, n, chunksize, qsize))
        seconds = time.perf_counter() - t0
        if total != expected(n):
            raise AssertionError(f"{variant} {row}: wrong total {total}")
        return n / seconds
    finally:
        if broker is not None:
            broker.stop()


MAP_VARIANTS = ("blocking", "one_loop", "two_threads", "two_loops", "distex_zmq")
ROWS = {
    "cs1": ("map_async g, chunksize=1, tasks/s", 40_000, MAP_VARIANTS),
    "cs100": ("map_async g, chunksize=100, tasks/s", 1_000_000, MAP_VARIANTS),
    "latency": (
        "one at a time, p50 µs",
        3_000,
        (*MAP_VARIANTS, "two_threads_sync", "distex_zmq_sync"),
    ),
}


async def open_pool() -> Any:
    """``Pool(2, qsize=2)`` made on the running loop, warmed up."""
    pool = Pool(NUM_WORKERS, qsize=2)
    await pool
    await asyncio.gather(*(pool.run_async(tasks.g, i) for i in range(100)))
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the row sizes")
    args = parser.parse_args()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    cluster = Cluster()
    pool = loop.run_until_complete(open_pool())
    try:
        for _ in range(200):  # warm up both workers
            for w in cluster.workers:
                cluster.sock.send_multipart([w, b"+1"])
            for _ in cluster.workers:
                cluster.sock.recv_multipart()
        table: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for r in range(args.rounds):
            for row, (label, n, variants) in ROWS.items():
                n = int(n * args.scale)
                base = None
                line = []
                for variant in variants:
                    value = measure(cluster, pool, variant, row, n, loop)
                    table[row, variant].append(value)
                    if base is None:
                        base = value
                    ratio = value / base if row != "latency" else value / base
                    line.append(f"{variant} {value:,.0f} ({ratio:.2f})")
                print(f"round {r + 1} {label}: " + ", ".join(line), flush=True)
        print("\nmedians over rounds, as a share of blocking (latency: multiple):")
        for row, (label, _n, variants) in ROWS.items():
            base = statistics.median(table[row, "blocking"])
            parts = []
            for variant in variants:
                med = statistics.median(table[row, variant])
                parts.append(f"{variant} {med:,.0f} ({med / base:.2f})")
            print(f"{label}: " + ", ".join(parts))
    finally:
        pool.shutdown()
        cluster.close()
        loop.close()


if __name__ == "__main__":
    main()
