"""Memory over time: client and worker RSS through a long map or many submits.

Two workloads on ``Pool(2)``, each sampled every tenth of the way:

- ``map``: a sync ``map`` of ``g`` at its defaults over ``itertools.count()``
  (read lazily, so the input never exists as a whole), stopped after
  ``--items`` results (default 10 million);
- ``submit``: ``--items`` ``submit(g, i)`` calls (default 1 million) with at
  most ``--window`` in flight; each future is checked by a done callback
  and then dropped, so nothing but the pool holds it.

Samples are the client's resident memory (RSS) and every worker's (read
from ``/proc/<pid>/status``; the workers are the client's child processes).
The issue's target: growth under 50 MB for each, and nothing that grows
with the number of tasks done. Exits 1 if a result is wrong.

    python benchmarks/memory.py [--mode map|submit|both] [--items N] [--chunksize N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tasks  # noqa: E402  (benchmarks/tasks.py, by reference in the workers)
from _netns import cmdline, descendants, rss_mb  # noqa: E402

from distex_zmq import Pool  # noqa: E402

DEFAULT_ITEMS = {"map": 10_000_000, "submit": 1_000_000}


class Sampler:
    """RSS of the client and of each worker, against a baseline."""

    def __init__(self) -> None:
        self.client0 = rss_mb() or 0.0
        self.workers0 = self.worker_rss()
        self.rows: list[tuple[int, float, float, float]] = []
        self.t0 = time.perf_counter()

    @staticmethod
    def worker_rss() -> dict[int, float]:
        found = {}
        for pid in descendants(os.getpid()):
            if "distex_zmq.worker" in cmdline(pid) and (rss := rss_mb(pid)) is not None:
                found[pid] = rss
        return found

    def sample(self, done: int) -> None:
        """Record the client's growth and the largest growth of a worker."""
        workers = self.worker_rss()
        growth = [rss - self.workers0.get(pid, rss) for pid, rss in workers.items()]
        self.rows.append(
            (done, rss_mb() or 0.0, max(growth, default=0.0), time.perf_counter() - self.t0)
        )

    def report(self, title: str) -> None:
        workers = ", ".join(f"{rss:.1f}" for rss in self.workers0.values())
        print(f"\n{title}; after start-up: client RSS {self.client0:.1f} MB, "
              f"workers {workers} MB.\n")  # fmt: skip
        print("| done | client RSS MB | client growth MB | largest worker growth MB | seconds |")
        print("|---:|---:|---:|---:|---:|")
        for i, rss, worker, seconds in self.rows:
            print(f"| {i:,} | {rss:.1f} | {rss - self.client0:+.1f} | {worker:+.1f} "
                  f"| {seconds:.1f} |")  # fmt: skip
        half = self.rows[len(self.rows) // 2]
        last = self.rows[-1]
        print(f"\nclient growth over the whole run: {last[1] - self.client0:+.1f} MB, over "
              f"its second half: {last[1] - half[1]:+.1f} MB; largest worker growth: "
              f"{last[2]:+.1f} MB ({last[2] - half[2]:+.1f} MB over the second half)")  # fmt: skip


def run_map(pool: Pool, items: int, chunksize: int | None) -> Sampler:
    step = max(1, items // 10)
    sampler = Sampler()
    results = pool.map(tasks.g, itertools.count(), chunksize=chunksize)
    for i, r in enumerate(results, 1):
        if r != i + 1:
            raise SystemExit(f"wrong result {r} for input {i - 1}")
        if i % step == 0:
            sampler.sample(i)
        if i == items:
            break
    results.close()  # cancels what is pending
    return sampler


def run_submit(pool: Pool, items: int, window: int) -> Sampler:
    step = max(1, items // 10)
    slots = threading.BoundedSemaphore(window)
    lock = threading.Lock()
    done = [0]
    wrong: list[str] = []
    sampler = Sampler()

    def checker(x: int) -> Callable[[Future[int]], None]:
        def check(future: Future[int]) -> None:
            try:
                if future.result() != x + 2:
                    wrong.append(f"wrong result {future.result()} for input {x}")
            except Exception as e:  # noqa: BLE001  (reported after the run)
                wrong.append(f"input {x}: {type(e).__name__}: {e}")
            with lock:
                done[0] += 1
            slots.release()

        return check

    for x in range(items):
        slots.acquire()
        pool.submit(tasks.g, x).add_done_callback(checker(x))
        if (x + 1) % step == 0:
            sampler.sample(x + 1)
    for _ in range(window):
        slots.acquire()  # every future has ended
    if wrong or done[0] != items:
        raise SystemExit(f"{done[0]:,} of {items:,} futures ended; {wrong[:5]}")
    return sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["map", "submit", "both"], default="both")
    parser.add_argument("--items", type=int, default=None,
                        help="default: 10,000,000 for map, 1,000,000 for submit")  # fmt: skip
    parser.add_argument("--chunksize", type=int, default=None, help="map's (default: adaptive)")
    parser.add_argument("--window", type=int, default=1000, help="submits in flight")
    args = parser.parse_args()
    modes = ["map", "submit"] if args.mode == "both" else [args.mode]
    for mode in modes:
        items = args.items or DEFAULT_ITEMS[mode]
        with Pool(2) as pool:
            pool.run_on_all(int, 0)
            if mode == "map":
                sampler = run_map(pool, items, args.chunksize)
                chunking = args.chunksize or "adaptive"
                title = (f"Sync map of g over itertools.count() on Pool(2), {items:,} items, "
                         f"chunksize {chunking}")  # fmt: skip
            else:
                sampler = run_submit(pool, items, args.window)
                title = (f"{items:,} submit(g, i) on Pool(2), at most {args.window} in flight, "
                         "futures dropped as they end")  # fmt: skip
        sampler.report(title)


if __name__ == "__main__":
    main()
