"""``python -m distex_zmq``: a demonstration a person can check.

Counts the primes below a bound on a pool, in blocks spread over the
workers, checks the count against a sieve run in this process, and shows
which host and worker computed what. Local workers by default; ``--hosts``
adds remote ones (``docker/docker-compose.yml`` runs it on a cluster).
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections import Counter

from distex_zmq import HostConnectionError, Pool


def count_primes(block: tuple[int, int]) -> tuple[int, str, int]:
    """Count the primes in ``[start, stop)`` by trial division; return (count, host, pid)."""
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
    return count, socket.gethostname(), os.getpid()


def sieve_count(bound: int) -> int:
    """The number of primes below ``bound``, by the sieve of Eratosthenes."""
    flags = bytearray([1]) * bound
    flags[:2] = b"\0\0"
    for n in range(2, int(bound**0.5) + 1):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, bound, n)))
    return sum(flags)


def start_pool(args: argparse.Namespace) -> Pool:
    """A pool with every worker up; with ``--wait``, retried while hosts come up."""
    remote_python = dict(item.split("=", 1) for item in args.remote_python)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            pool = Pool(
                None if args.no_local else args.workers,
                args.hosts,
                secret_file=args.secret_file,
                remote_python=remote_python or "python3",
            )
        except ValueError as e:  # a host spec, a secret file
            raise SystemExit(f"distex_zmq demo: {e}") from None
        try:
            pool.run_on_all(int, 0)
            return pool
        except HostConnectionError as e:
            pool.shutdown()
            if time.monotonic() > deadline:
                raise SystemExit(f"distex_zmq demo: {e}") from None
            print(f"waiting for the hosts: {str(e).splitlines()[0]}", flush=True)
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m distex_zmq", description=__doc__)
    parser.add_argument(
        "--workers", type=int, default=0, help="local workers (default 0: one per CPU)"
    )
    parser.add_argument("--no-local", action="store_true", help="no local workers")
    parser.add_argument("--hosts", nargs="*", default=[], help="remote hosts: host/N, ssh://host/N")
    parser.add_argument(
        "--secret-file",
        help="the shared secret of the spawner hosts (else $DISTEX_ZMQ_SECRET, if set)",
    )
    parser.add_argument(
        "--remote-python", action="append", default=[], metavar="HOST=CMD",
        help="the command that runs Python on an SSH host",
    )  # fmt: skip
    parser.add_argument(
        "--wait", type=float, default=0, help="seconds to wait for the hosts (default 0)"
    )
    parser.add_argument(
        "--bound", type=int, default=2_000_000, help="count primes below this (default 2000000)"
    )
    parser.add_argument(
        "--block", type=int, default=50_000, help="numbers per task (default 50000)"
    )
    args = parser.parse_args()
    if args.no_local and not args.hosts:
        parser.error("--no-local needs --hosts")
    if args.block < 1 or args.bound < 2:
        parser.error("--block must be at least 1 and --bound at least 2")
    if args.workers < 0:
        parser.error("--workers must be 0 (one per CPU) or more")
    bad = [item for item in args.remote_python if "=" not in item]
    if bad:
        parser.error(f"--remote-python takes HOST=CMD, not {bad[0]!r}")

    blocks = [(i, min(i + args.block, args.bound)) for i in range(0, args.bound, args.block)]
    t0 = time.perf_counter()
    with start_pool(args) as pool:
        results = list(pool.map(count_primes, blocks))
        elapsed = time.perf_counter() - t0
        workers = pool.total_workers()
    total = sum(count for count, _, _ in results)
    expected = sieve_count(args.bound)
    per_worker = Counter((host, pid) for _, host, pid in results)
    print(f"distex_zmq demo: {workers} workers, {len(blocks)} tasks")
    for (host, pid), tasks in sorted(per_worker.items()):
        print(f"  host {host}, worker pid {pid}: {tasks} tasks")
    print(f"primes below {args.bound:,}: {total:,} (sieve in this process says {expected:,})")
    print(f"pool time {elapsed:.2f} s, including worker start-up")
    if total != expected:
        raise SystemExit("MISMATCH: the pool computed a wrong count")
    print("OK")


if __name__ == "__main__":
    main()
