"""Throughput against chunksize and against payload size: distex_zmq and distex, as a plot.

For each pool (2 workers, client on uvloop, driven by ``_one.py``'s client
classes) in a fresh interpreter of its own:

- ``map_async(g, range(n), chunksize=c)`` for c from 1 to 1024 (tasks/s);
- ``map_async(size, payloads)`` at the defaults, for n different payloads
  from 1 KiB to 16 MiB (MB/s of arguments; each task returns the length).

Writes ``benchmarks/throughput.png`` (two log-log panels) and prints the
numbers as a Markdown table. Needs ``pip install -e '.[bench]' matplotlib``.

    python benchmarks/sweep.py [--quick] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNKSIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
PAYLOADS = tuple(1 << k for k in (10, 12, 14, 16, 18, 20, 22, 24))  # 1 KiB .. 16 MiB
POOLS = ("distex_zmq", "distex")


def measure_one(pool_name: str, quick: bool) -> dict[str, dict[int, float]]:
    """Run the sweep on one pool, in this interpreter."""
    sys.path.insert(0, str(HERE))
    import tasks
    from _one import make_client

    scale = 0.2 if quick else 1.0
    client = make_client(pool_name)
    client.open(sync=False)
    try:
        client.warm_up(tasks.g, 1)
        by_chunksize = {}
        for c in CHUNKSIZES:
            n = int(min(1_000_000, 20_000 * min(c, 50)) * scale)
            total = 0

            def add(r: int) -> None:
                nonlocal total
                total += r

            t0 = time.perf_counter()
            client.map_consume(tasks.g, range(n), c, add)
            elapsed = time.perf_counter() - t0
            if total != n * (n - 1) // 2 + 2 * n:
                raise SystemExit(f"{pool_name}: wrong results at chunksize {c}")
            by_chunksize[c] = n / elapsed
            print(f"{pool_name} chunksize {c}: {n / elapsed:,.0f} tasks/s", file=sys.stderr)
        by_payload = {}
        for size in PAYLOADS:
            n = max(10, min(2000, (256 << 20) // size))
            n = max(10, int(n * scale))
            # distinct objects: pickle would send one object repeated in a chunk once
            base = os.urandom(size)
            payloads = [i.to_bytes(8, "big") + base[8:] for i in range(n)]
            lengths = []
            t0 = time.perf_counter()
            client.map_consume(tasks.size, payloads, None, lengths.append)
            elapsed = time.perf_counter() - t0
            if lengths != [size] * n:
                raise SystemExit(f"{pool_name}: wrong results at payload {size}")
            by_payload[size] = n * size / elapsed / 1e6
            print(f"{pool_name} payload {size}: {by_payload[size]:,.0f} MB/s", file=sys.stderr)
        return {"chunksize": by_chunksize, "payload": by_payload}
    finally:
        client.close()


def plot(results: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, data in results.items():
        style = {"marker": "o", "label": name}
        left.plot(list(data["chunksize"]), list(data["chunksize"].values()), **style)
        right.plot([s / 1024 for s in data["payload"]], list(data["payload"].values()), **style)
    left.set(xscale="log", yscale="log", xlabel="chunksize", ylabel="tasks/s",
             title="map_async(g, range(n), chunksize=c)")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="payload (KiB)", ylabel="MB/s of arguments",
              title="map_async(size, payloads)")  # fmt: skip
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("2 local workers, client on uvloop (benchmarks/sweep.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the sizes")
    parser.add_argument("--png", default=str(HERE / "throughput.png"))
    parser.add_argument("--one", choices=POOLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.quick)))
        return
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    results = {}
    for name in POOLS:
        cmd = [sys.executable, __file__, "--one", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        results[name] = {k: {int(x): y for x, y in v.items()} for k, v in data.items()}
    plot(results, Path(args.png))
    print(f"Plot: {args.png}\n")
    print("| chunksize | " + " | ".join(f"{n} tasks/s" for n in POOLS) + " | ratio |")
    print("|---:|" + "---:|" * (len(POOLS) + 1))
    for c in CHUNKSIZES:
        a, b = (results[n]["chunksize"][c] for n in POOLS)
        print(f"| {c} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
    print("\n| payload | " + " | ".join(f"{n} MB/s" for n in POOLS) + " | ratio |")
    print("|---:|" + "---:|" * (len(POOLS) + 1))
    for s in PAYLOADS:
        a, b = (results[n]["payload"][s] for n in POOLS)
        print(f"| {s // 1024:,} KiB | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
