"""Remote workers: throughput to workers on another host, through the SSH tunnel and direct.

Builds the test suite's cluster (``tests/multihost.py``: network namespaces
on a bridge, an sshd in each; needs root), then measures, with 2 workers
each and in one run:

- ``local``: ``Pool(2)`` on this host, the reference of the ratios;
- ``tunnel``: ``Pool(None, ["ssh://dzq-a/2"])``, workers in namespace
  ``dzq-a`` reaching the broker through the reverse SSH tunnel (the default);
- ``direct``: the same with ``ssh_tunnel=False``: workers connect to the
  broker's TCP port over the bridge.

The client runs on uvloop, as in ``run.py``. Every result is checked. Usage::

    sudo .venv/bin/python benchmarks/remote.py [--quick] [--repeat N]

Prints a Markdown table; the numbers pass or fail nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import tasks  # noqa: E402  (benchmarks/tasks.py, by reference in every worker)

from distex_zmq import Pool  # noqa: E402
from tests.multihost import Cluster, unavailable  # noqa: E402

PAYLOAD = 10 * 1024 * 1024
REMOTE_PYTHON = f"env PYTHONPATH={shlex.quote(f'{ROOT}:{HERE}')} {shlex.quote(sys.executable)}"
CONFIGS: dict[str, Callable[[], Pool]] = {
    "local": lambda: Pool(2),
    "tunnel": lambda: Pool(None, ["ssh://dzq-a/2"], remote_python=REMOTE_PYTHON),
    "direct": lambda: Pool(None, ["ssh://dzq-a/2"], remote_python=REMOTE_PYTHON, ssh_tunnel=False),
}


async def small_tasks(pool: Pool, n: int, chunksize: int | None) -> float:
    t0 = time.perf_counter()
    total = 0
    async for r in pool.map_async(tasks.g, range(n), chunksize=chunksize):
        total += r
    elapsed = time.perf_counter() - t0
    assert total == n * (n - 1) // 2 + 2 * n, "wrong results"
    return n / elapsed


async def big_argument(pool: Pool, n: int) -> float:
    blob = os.urandom(PAYLOAD)
    t0 = time.perf_counter()
    # chunksize=1, as in run.py: one payload per task (and a chunk of one object
    # repeated would be pickled once)
    sizes = [r async for r in pool.map_async(tasks.size, [blob] * n, chunksize=1)]
    elapsed = time.perf_counter() - t0
    assert sizes == [PAYLOAD] * n, "wrong results"
    return n * PAYLOAD / elapsed / 1e6


async def echo(pool: Pool, n: int) -> float:
    blob = os.urandom(PAYLOAD)
    t0 = time.perf_counter()
    back = [r async for r in pool.map_async(tasks.echo, [blob] * n, chunksize=1)]
    elapsed = time.perf_counter() - t0
    assert all(b == blob for b in back) and len(back) == n, "wrong results"
    return n * PAYLOAD / elapsed / 1e6


ROWS = [
    ("map_async g, chunksize=1", "tasks/s", lambda p, q: small_tasks(p, 2_000 if q else 20_000, 1)),
    (
        "map_async g, defaults",
        "tasks/s",
        lambda p, q: small_tasks(p, 10_000 if q else 100_000, None),
    ),
    ("10 MiB argument, returns len", "MB/s", lambda p, q: big_argument(p, 10 if q else 50)),
    ("10 MiB echo", "MB/s each way", lambda p, q: echo(p, 5 if q else 20)),
]


async def measure(config: str, quick: bool) -> list[float]:
    async with CONFIGS[config]() as pool:
        [r async for r in pool.map_async(tasks.g, range(8))]  # warm up
        results = []
        for _, _, run in ROWS:
            results.append(await run(pool, quick))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of N runs")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"cannot build the cluster: {reason}")
    import uvloop

    cluster = Cluster()
    try:
        cluster.up()
        os.environ["HOME"] = str(cluster.home)
        os.environ.pop("SSH_AUTH_SOCK", None)
        table: dict[str, list[float]] = {}
        for config in CONFIGS:
            runs = []
            for _ in range(args.repeat):
                print(f"measuring {config} ...", file=sys.stderr)
                runs.append(uvloop.run(measure(config, args.quick)))
            table[config] = [max(r[i] for r in runs) for i in range(len(ROWS))]
    finally:
        cluster.down()
    print(
        f"Workers in network namespace dzq-a (veth + bridge); {os.cpu_count()} cores; "
        f"{'quick' if args.quick else 'full'} sizes; best of {args.repeat}.\n"
    )
    print("| workload | unit | local | tunnel | direct | tunnel/local | direct/local |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for i, (label, unit, _) in enumerate(ROWS):
        local, tunnel, direct = (table[c][i] for c in CONFIGS)
        print(
            f"| {label} | {unit} | {local:,.0f} | {tunnel:,.0f} | {direct:,.0f} | "
            f"{tunnel / local:.2f} | {direct / local:.2f} |"
        )


if __name__ == "__main__":
    main()
