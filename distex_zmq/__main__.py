"""``python -m distex_zmq``: a demonstration a person can check.

Counts the primes below a bound on a local pool, in blocks spread over the
workers, and checks the count against a sieve run in this process.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

from distex_zmq import Pool


def count_primes(block: tuple[int, int]) -> tuple[int, int]:
    """Count the primes in ``[start, stop)`` by trial division; return (count, pid)."""
    start, stop = block
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count, os.getpid()


def sieve_count(bound: int) -> int:
    """The number of primes below ``bound``, by the sieve of Eratosthenes."""
    flags = bytearray([1]) * bound
    flags[:2] = b"\0\0"
    for n in range(2, int(bound**0.5) + 1):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, bound, n)))
    return sum(flags)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m distex_zmq", description=__doc__)
    parser.add_argument("--workers", type=int, default=0, help="local workers (0: one per CPU)")
    parser.add_argument("--bound", type=int, default=2_000_000, help="count primes below this")
    parser.add_argument("--block", type=int, default=50_000, help="numbers per task")
    args = parser.parse_args()

    blocks = [(i, min(i + args.block, args.bound)) for i in range(0, args.bound, args.block)]
    t0 = time.perf_counter()
    with Pool(args.workers) as pool:
        results = list(pool.map(count_primes, blocks))
        elapsed = time.perf_counter() - t0
        workers = pool.total_workers()
    total = sum(count for count, _ in results)
    expected = sieve_count(args.bound)
    per_worker = Counter(pid for _, pid in results)
    print(f"distex_zmq demo: {workers} local workers, {len(blocks)} tasks")
    for pid, tasks in sorted(per_worker.items()):
        print(f"  worker pid {pid}: {tasks} tasks")
    print(f"primes below {args.bound:,}: {total:,} (sieve in this process says {expected:,})")
    print(f"pool time {elapsed:.2f} s, including worker start-up")
    if total != expected:
        raise SystemExit("MISMATCH: the pool computed a wrong count")
    print("OK")


if __name__ == "__main__":
    main()
