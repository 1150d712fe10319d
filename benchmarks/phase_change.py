"""Phase-change maps and worker memory over many distinct functions.

``phase``: a map whose first inputs are instant and whose later ones sleep,
at the default (adaptive) chunksize, against ``chunksize=1`` and
``ProcessPoolExecutor`` in the same run. Once the map has learned that its
tasks are tiny it groups inputs into chunks; the slow inputs that follow
must still spread over every worker (a chunk that overruns its budget hands
back what it has not started). The target: within 1.15x of ``chunksize=1``.

- ``Pool(2)``: 1000 instant inputs, then 300 x 20 ms;
- ``Pool(4)``: 2000 instant inputs, then 400 x 50 ms;
- slow inputs side by side among instant ones, which share a chunk: each
  must run on a worker of its own while the chunk's other input runs
  (``Pool(2)``: 3000 instant inputs, 2 x 0.5 s, 3000 instant; ``Pool(4)``:
  4000 instant, 4 x 0.3 s, 4000 instant);
- a slow first input, then many short ones: the others must run on while
  the first runs, their results held for their order (``Pool(2)``: 1 x 2 s,
  then 400 x 10 ms; ``Pool(4)``: 1 x 3 s, then 800 x 10 ms).

``functions``: ``--functions`` calls ``pool.run(lambda x, i=i: x + i, 1)``,
each with a new lambda (then as many maps of a new lambda over 2 inputs),
and the largest growth of a worker's RSS, and the client's. The target:
under 50 MB for 10,000 functions.

    python benchmarks/phase_change.py [--mode phase|functions|both] [--functions N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tasks  # noqa: E402  (benchmarks/tasks.py, by reference in the workers)
from _netns import cmdline, descendants, rss_mb  # noqa: E402

from distex_zmq import Pool  # noqa: E402

#: (workers, instant inputs, slow inputs, seconds each slow input sleeps,
#: inputs after them, seconds each of those sleeps)
WORKLOADS = [
    (2, 1000, 300, 0.02, 0, 0.0),
    (4, 2000, 400, 0.05, 0, 0.0),
    (2, 3000, 2, 0.5, 3000, 0.0),
    (4, 4000, 4, 0.3, 4000, 0.0),
    (2, 0, 1, 2.0, 400, 0.01),
    (4, 0, 1, 3.0, 800, 0.01),
]


def timed(run_map: object, inputs: list[float]) -> float:
    t0 = time.perf_counter()
    results = list(run_map(tasks.nap, inputs))  # type: ignore[operator]
    elapsed = time.perf_counter() - t0
    if results != inputs:
        raise SystemExit("wrong results")
    return elapsed


def run_phase() -> None:
    print("| workload | adaptive s | chunksize=1 s | ProcessPoolExecutor s "
          "| adaptive / chunksize=1 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for workers, instant, slow, delay, after, after_delay in WORKLOADS:
        inputs = [0.0] * instant + [delay] * slow + [after_delay] * after
        with Pool(workers) as pool:
            pool.run_on_all(int, 0)
            adaptive = timed(pool.map, inputs)
            one = timed(lambda f, xs: pool.map(f, xs, chunksize=1), inputs)
        with concurrent.futures.ProcessPoolExecutor(workers) as ex:
            list(ex.map(int, range(workers * 4)))
            ppe = timed(ex.map, inputs)
        name = f"Pool({workers}): {slow} x {delay * 1000:.0f} ms"
        if instant:
            name = f"Pool({workers}): {instant} instant, then {slow} x {delay * 1000:.0f} ms"
        if after:
            name += f", then {after} " + (
                f"x {after_delay * 1000:.0f} ms" if after_delay else "instant"
            )
        print(f"| {name} | {adaptive:.2f} | {one:.2f} | {ppe:.2f} | {adaptive / one:.2f} |")


def worker_rss() -> dict[int, float]:
    found = {}
    for pid in descendants(os.getpid()):
        if "distex_zmq.worker" in cmdline(pid) and (rss := rss_mb(pid)) is not None:
            found[pid] = rss
    return found


def run_functions(count: int) -> None:
    calls = {
        "pool.run(f, 1)": lambda pool, f: pool.run(f, 1),
        "list(pool.map(f, [1, 2]))": lambda pool, f: list(pool.map(f, [1, 2]))[0],
    }
    for name, call in calls.items():
        with Pool(2) as pool:
            for i in range(50):  # warm up: the first functions load dill and friends
                call(pool, lambda x, i=i: x + i)
            before = worker_rss()
            client = rss_mb() or 0.0
            t0 = time.perf_counter()
            for i in range(count):
                if call(pool, lambda x, i=i: x + i) != i + 1:
                    raise SystemExit("wrong result")
            elapsed = time.perf_counter() - t0
            after = worker_rss()
            client = (rss_mb() or 0.0) - client
        growth = max((after[pid] - rss for pid, rss in before.items() if pid in after), default=0.0)
        print(f"{count:,} distinct lambdas f, {name} each on Pool(2): largest worker RSS "
              f"growth {growth:+.1f} MB, client {client:+.1f} MB ({elapsed:.1f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["phase", "functions", "both"], default="both")
    parser.add_argument("--functions", type=int, default=10_000)
    args = parser.parse_args()
    if args.mode in ("phase", "both"):
        run_phase()
    if args.mode in ("functions", "both"):
        run_functions(args.functions)


if __name__ == "__main__":
    main()
