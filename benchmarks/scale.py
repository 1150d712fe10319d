"""The broker with many connected workers: dispatch throughput, 10 against 1000.

Stub workers are DEALER sockets, many per process (``--procs`` processes),
that say hello with their credits and answer every TASK message at once
with an OK RESULT entry per task: nothing is pickled or run, so what is
measured is the broker (registry, credit accounting, least-loaded dispatch,
results to their sink) and ZeroMQ. The issue's target: the throughput with
1000 workers is at least 70% of the throughput with 10.

    python benchmarks/scale.py [--workers 10,100,1000] [--tasks 200000] [--procs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distex_zmq.broker import Broker, Task  # noqa: E402

from distex_zmq.loops import new_event_loop  # noqa: E402
from distex_zmq.wire import frames as p  # noqa: E402


def stub_workers(endpoint: str, identities: list[bytes], credits: int) -> None:
    """Serve as ``len(identities)`` workers until the broker says STOP."""
    ctx = zmq.Context()
    poller = zmq.Poller()
    socks = []
    for identity in identities:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        info = {"pid": os.getpid(), "host": "stub", "credits": credits, "version": "stub"}
        sock.send_multipart(p.hello(info))
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    head_size, entry = p.HEAD.size, p.TASK_ENTRY
    running = True
    while running:
        for sock, _ in poller.poll():
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frame = sock.recv(copy=True)
                kind, count = frame[6:7], int.from_bytes(frame[7:9], "big")
                if kind == p.STOP:
                    running = False
                    break
                writer = p.Writer(p.RESULT)
                for i in range(count):
                    task_id = entry.unpack_from(frame, head_size + i * entry.size)[0]
                    writer.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_OK, 0, 0, 0, 0))
                sock.send_multipart(writer.frames_out())
    ctx.destroy(linger=0)


class CountingSink:
    def __init__(self, total: int, done: asyncio.Future[float]):
        self.left = total
        self.done = done

    def deliver(self, task: Task, status: int, value: Any) -> None:
        self.left -= 1

    def flush(self, urgent: bool = False) -> None:
        if self.left == 0 and not self.done.done():
            self.done.set_result(time.perf_counter())


class ReadyCounter:
    """The broker's hooks: no initializer; ``all_ready`` once every worker is."""

    def __init__(self, total: int, all_ready: asyncio.Future[None]):
        self.left = total
        self.all_ready = all_ready

    def on_hello(self, rec: Any) -> None:
        return None

    def on_ready(self, rec: Any) -> None:
        self.left -= 1
        if self.left == 0 and not self.all_ready.done():
            self.all_ready.set_result(None)

    def on_init_failed(self, rec: Any, status: int, value: Any) -> None:
        pass

    def on_unreachable(self, rec: Any) -> None:
        pass

    def on_task_timeout(self, rec: Any, task: Any) -> None:
        pass


async def measure(num_workers: int, num_tasks: int, procs: int, credits: int) -> float:
    loop = asyncio.get_running_loop()
    ctx: zmq.Context[Any] = zmq.Context()
    all_ready: asyncio.Future[None] = loop.create_future()
    hooks = ReadyCounter(num_workers, all_ready)
    broker = Broker(loop, ctx, max_retries=0, task_timeout=None, hooks=hooks)
    tmp = tempfile.mkdtemp(prefix="dzq-scale-")
    endpoint = broker.bind(f"ipc://{tmp}/broker")
    identities = [b"stub-%d" % i for i in range(num_workers)]
    for identity in identities:
        broker.expect(identity)
    mp = multiprocessing.get_context("spawn")
    workers = [
        mp.Process(target=stub_workers, args=(endpoint, identities[i::procs], credits))
        for i in range(min(procs, num_workers))
    ]
    for w in workers:
        w.start()
    try:
        await asyncio.wait_for(all_ready, 120)
        done: asyncio.Future[float] = loop.create_future()
        sink = CountingSink(num_tasks, done)
        tasks = [Task(i, 1, b"f", 0, b"", [], sink) for i in range(1, num_tasks + 1)]
        t0 = time.perf_counter()
        broker.submit(tasks)
        t1 = await asyncio.wait_for(done, 600)
        return num_tasks / (t1 - t0)
    finally:
        broker.stop_workers()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
        broker.close(lambda task: RuntimeError("closed"))
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="10,100,1000", help="worker counts to measure")
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--procs", type=int, default=4, help="processes for the stub workers")
    parser.add_argument("--credits", type=int, default=2, help="qsize of each stub worker")
    parser.add_argument("--repeat", type=int, default=3, help="keep the best of N runs")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rates = {}
    for n in counts:
        best = 0.0
        for _ in range(args.repeat):
            loop = new_event_loop()
            try:
                best = max(best, loop.run_until_complete(
                    measure(n, args.tasks, args.procs, args.credits)))  # fmt: skip
            finally:
                loop.close()
        rates[n] = best
        print(f"measured {n} workers: {best:,.0f} tasks/s", file=sys.stderr)
    base = rates[counts[0]]
    print(f"Broker dispatch, {args.tasks:,} tasks, stub workers with {args.credits} credits "
          f"in {args.procs} processes, best of {args.repeat}.\n")  # fmt: skip
    print(f"| workers | tasks/s | vs {counts[0]} workers |")
    print("|---:|---:|---:|")
    for n in counts:
        print(f"| {n} | {rates[n]:,.0f} | {rates[n] / base:.2f} |")


if __name__ == "__main__":
    main()
