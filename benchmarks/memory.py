"""Client memory over a long map: a ``map`` over an unbounded generator.

Maps ``g`` over ``itertools.count()`` (read lazily, so the input never
exists as a whole) with a sync ``map`` at its defaults on ``Pool(2)``,
stops after ``--items`` results, and samples the client's resident memory
(RSS) every tenth of the way. The issue's target: growth under 50 MB for
1M items, and nothing that grows with the number of tasks done.

    python benchmarks/memory.py [--items 1000000] [--chunksize N]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tasks  # noqa: E402  (benchmarks/tasks.py, by reference in the workers)

from distex_zmq import Pool  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunksize", type=int, default=None, help="default: adaptive")
    args = parser.parse_args()
    step = args.items // 10
    samples = []
    with Pool(2) as pool:
        pool.run_on_all(int, 0)
        start = rss_mb()
        t0 = time.perf_counter()
        results = pool.map(tasks.g, itertools.count(), chunksize=args.chunksize)
        for i, r in enumerate(results, 1):
            if r != i + 1:
                raise SystemExit(f"wrong result {r} for input {i - 1}")
            if i % step == 0:
                samples.append((i, rss_mb(), time.perf_counter() - t0))
            if i == args.items:
                break
        results.close()  # cancels what is pending
    chunking = args.chunksize or "adaptive"
    print(f"Sync map of g over itertools.count() on Pool(2), chunksize {chunking}; "
          f"client RSS {start:.1f} MB after start-up.\n")  # fmt: skip
    print("| results | RSS MB | growth MB | seconds |")
    print("|---:|---:|---:|---:|")
    for i, rss, seconds in samples:
        print(f"| {i:,} | {rss:.1f} | {rss - start:+.1f} | {seconds:.1f} |")
    half = samples[len(samples) // 2][1]
    print(f"\ngrowth over the whole map: {samples[-1][1] - start:+.1f} MB; "
          f"over its second half: {samples[-1][1] - half:+.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
