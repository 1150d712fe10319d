"""Chaos soak: a mixed workload on local and remote workers while faults rain.

For ``--minutes`` it runs, round after round, ordered and unordered maps
(of CPU-bound inputs in small chunks too), submits with cancellations,
async runs (``map_async``, ``run_async``), ``run_on_all`` and large numpy
payloads on one pool of local workers plus network-namespace hosts (SSH
and spawner kinds, ``_netns.py``), while a chaos thread (``_chaos.py``)
SIGKILLs random workers, cuts host links off and restores them, and
restarts spawners. Every result is checked, every
future must end, and after shutdown no worker, agent or ipc directory may
be left and the client's memory must have stayed bounded. Prints the
counts as a table; exits 1 if anything unexpected happened.

    sudo nice -n 10 .venv/bin/python benchmarks/soak.py [--minutes 10]

Needs root (namespaces) and openssh-server; uses only the public API.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import _chaos_tasks as t  # noqa: E402
import numpy as np  # noqa: E402
from _chaos import Chaos, LogCounter, leftovers  # noqa: E402
from _netns import SECRET, Hosts, remote_env, rss_mb, unavailable  # noqa: E402

from distex_zmq import HostConnectionError, Pool, WorkerLostError  # noqa: E402

#: failures that chaos may cause and that the pool reports as it should
EXPECTED = (WorkerLostError, HostConnectionError)
#: bound on any one wait: a wait that takes longer is a hang
HANG = 300.0


class Soak:
    """The workload: one step at a time, every result checked."""

    def __init__(self, pool: Pool, rng: random.Random, counts: Counter[str]):
        self.pool = pool
        self.rng = rng
        self.counts = counts
        self.problems: list[str] = []
        self.round = 0
        self.arrays = [np.random.default_rng(i).random(500_000) for i in range(4)]  # 4 MB each

    def step(self) -> None:
        self.round += 1
        kinds = ["map", "umap", "cpu", "submit", "async_", "run_on_all", "numpy"]
        kind = self.rng.choice(kinds)
        try:
            getattr(self, kind)(f"{kind[0]}{self.round}.")
            self.counts[f"rounds: {kind.rstrip('_')}"] += 1
        except EXPECTED as e:
            self.counts[f"expected failures: {type(e).__name__} ({kind})"] += 1
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            self.problems.append(f"round {self.round} ({kind}): hang: {e!r}")
        except Exception as e:  # noqa: BLE001  (every other error is a finding)
            self.problems.append(f"round {self.round} ({kind}): {type(e).__name__}: {e}")

    def check(self, what: str, got: object, want: object) -> None:
        if got != want:
            self.problems.append(f"round {self.round}: wrong {what}")
        else:
            self.counts["results checked"] += 1 if not isinstance(want, list) else len(want)

    def map(self, tag: str) -> None:
        n = self.rng.randint(200, 3000)
        chunksize = self.rng.choice([None, 1, 16])
        self.counts["tasks"] += n
        got = list(self.pool.map(t.square, [f"{tag}{x}" for x in range(n)], range(n),
                                 chunksize=chunksize, timeout=HANG))  # fmt: skip
        self.check("ordered map results", got, [x * x for x in range(n)])

    def umap(self, tag: str) -> None:
        n = self.rng.randint(200, 3000)
        self.counts["tasks"] += n
        inputs = [(f"{tag}{x}", x, self.rng.choice([0, 0, 0.002])) for x in range(n)]
        got = self.pool.map(t.square, inputs, star=True, ordered=False, timeout=HANG)
        self.check("unordered map results", sorted(got), [x * x for x in range(n)])

    def cpu(self, tag: str) -> None:
        # CPU-bound inputs of 3 ms in chunks of 4: a worker's watch thread
        # sends pieces of each chunk while it runs, and the chunk's own last
        # result may come after the map yielded it
        n = self.rng.randint(50, 300)
        self.counts["tasks"] += n
        inputs = [(f"{tag}{x}", x, -0.003) for x in range(n)]
        ordered = self.rng.random() < 0.5
        got = self.pool.map(t.square, inputs, star=True, chunksize=4, ordered=ordered, timeout=HANG)
        self.check("CPU-bound map results", sorted(got), [x * x for x in range(n)])

    def submit(self, tag: str) -> None:
        n = self.rng.randint(100, 500)
        self.counts["tasks"] += n
        futures = [self.pool.submit(t.square, f"{tag}{x}", x, 0.001) for x in range(n)]
        cancelled = {f for f in futures if self.rng.random() < 0.3 and f.cancel()}
        self.counts["futures cancelled"] += len(cancelled)
        done, pending = concurrent.futures.wait(futures, timeout=HANG)
        if pending:
            self.problems.append(f"round {self.round}: {len(pending)} futures not done")
            return
        for x, f in enumerate(futures):
            if f in cancelled:
                if not f.cancelled():
                    self.problems.append(f"round {self.round}: a cancelled future ended otherwise")
            elif isinstance(f.exception(), EXPECTED):
                self.counts[f"expected failures: {type(f.exception()).__name__} (submit)"] += 1
            else:
                self.check("submit result", f.result(), x * x)

    def async_(self, tag: str) -> None:
        n = self.rng.randint(100, 1000)
        self.counts["tasks"] += 2 * n

        async def both() -> tuple[list[int], list[int]]:
            tags = [f"{tag}m{x}" for x in range(n)]
            mapped = [r async for r in self.pool.map_async(t.async_square, tags, range(n))]
            runs = await asyncio.gather(
                *(self.pool.run_async(t.square, f"{tag}r{x}", x) for x in range(n))
            )
            return mapped, list(runs)

        mapped, runs = asyncio.run(asyncio.wait_for(both(), HANG))
        self.check("map_async results", mapped, [x * x for x in range(n)])
        self.check("run_async results", runs, [x * x for x in range(n)])

    def run_on_all(self, tag: str) -> None:
        names = asyncio.run(asyncio.wait_for(self.pool.run_on_all_async(t.hostname), HANG))
        self.counts["tasks"] += len(names)
        if not names or not all(isinstance(n, str) for n in names):
            self.problems.append(f"round {self.round}: run_on_all gave {names!r}")
        else:
            self.counts["results checked"] += len(names)

    def numpy(self, tag: str) -> None:
        arrays = [self.arrays[self.rng.randrange(4)] for _ in range(8)]
        self.counts["tasks"] += len(arrays) + 2
        self.counts["payload MB sent"] += 8 * 4 + 2 * 4
        got = list(self.pool.map(t.array_sum, [f"{tag}s{i}" for i in range(8)], arrays,
                                 chunksize=1, timeout=HANG))  # fmt: skip
        self.check("numpy sums", got, [(float(a.sum()), a.size) for a in arrays])
        for i, a in enumerate(arrays[:2]):
            doubled = self.pool.submit(t.array_double, f"{tag}d{i}", a).result(HANG)
            self.check("numpy payload back", bool(np.array_equal(doubled, a * 2)), True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--local", type=int, default=2, help="local workers")
    parser.add_argument("--ssh", type=int, default=1, help="SSH hosts")
    parser.add_argument("--spawners", type=int, default=2, help="spawner hosts")
    parser.add_argument("--per-host", type=int, default=2, help="workers per host")
    parser.add_argument("--heartbeat", type=float, default=3.0, help="heartbeat_timeout")
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if why := unavailable():
        raise SystemExit(f"soak.py: {why}")
    journal = tempfile.mkdtemp(prefix="dzs-journal-")
    os.chmod(journal, 0o777)
    os.environ["DZS_JOURNAL"] = journal  # local workers inherit it
    os.environ["PYTHONPATH"] = f"{HERE.parent}:{HERE}"
    hosts = Hosts(args.ssh, args.spawners, env={"DZS_JOURNAL": journal})
    counts: Counter[str] = Counter()
    log = LogCounter().install()
    problems: list[str] = []
    rss: list[float] = []
    pool = chaos = None
    t_begin = time.monotonic()
    try:
        hosts.up()
        os.environ["HOME"] = str(hosts.home)
        t0 = time.monotonic()
        pool = Pool(args.local, hosts.specs(args.per_host), secret=SECRET,
                    remote_python=shlex.join(remote_env({"DZS_JOURNAL": journal})),
                    heartbeat_timeout=args.heartbeat, connect_timeout=5,
                    max_retries=args.max_retries, max_worker_deaths=100_000)  # fmt: skip
        pool.run_on_all(t.hostname)
        started = time.monotonic() - t0
        soak = Soak(pool, random.Random(args.seed), counts)
        soak.numpy("warm")  # the numpy arrays and their buffers are in the baseline
        rss.append(rss_mb() or 0.0)
        chaos = Chaos(hosts, counts, args.seed, cut_for=(args.heartbeat, 3 * args.heartbeat))
        chaos.start()
        end = time.monotonic() + 60 * args.minutes
        while time.monotonic() < end:
            soak.step()
            rss.append(rss_mb() or 0.0)
        chaos.stop()
        chaos_errors = chaos.errors
        chaos = None
        soak.map("final")  # the pool still works once the faults stop
        problems += soak.problems + [f"chaos thread: {e}" for e in chaos_errors]
        t1 = time.monotonic()
        pool.shutdown(timeout=60)
        shutdown_s = time.monotonic() - t1
        pool = None
        left = leftovers(hosts, timeout=2 * args.heartbeat + 10)
        problems += [f"left behind: {x}" for x in left]
        entries = t.read_journal(journal)
        counts["task starts (journal)"] = len(entries)
        counts["retries seen (journal: starts of a task already started)"] = t.reruns(entries)
        counts.update(log.counts)
        growth = rss[-1] - rss[0]
        if growth > 100:
            problems.append(f"client RSS grew by {growth:.0f} MB")
        report(args, counts, started, shutdown_s, rss, time.monotonic() - t_begin)
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        try:
            if chaos is not None:
                chaos.stop()
            if pool is not None:
                pool.shutdown(cancel_futures=True, timeout=10)
        finally:
            hosts.down()
            shutil.rmtree(journal, ignore_errors=True)
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(f"- {p}" for p in problems[:50]))
        raise SystemExit(1)
    print("\nno problems: every result right, every future done, nothing left behind")


def report(
    args: argparse.Namespace,
    counts: Counter[str],
    started: float,
    shutdown_s: float,
    rss: list[float],
    total: float,
) -> None:
    print(f"\nChaos soak: {args.minutes} min; {args.local} local workers + "
          f"{args.ssh} SSH and {args.spawners} spawner hosts x {args.per_host}; "
          f"heartbeat_timeout {args.heartbeat} s, max_retries {args.max_retries}, "
          f"seed {args.seed}\n")  # fmt: skip
    print("| count | value |\n|---|---:|")
    for key in sorted(counts):
        print(f"| {key} | {counts[key]:,} |")
    print(f"| start-up to all workers ready, s | {started:.1f} |")
    print(f"| shutdown, s | {shutdown_s:.1f} |")
    print(f"| client RSS after warm-up / max / end, MB | "
          f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} |")  # fmt: skip
    print(f"| wall time, s | {total:.0f} |")


if __name__ == "__main__":
    main()
