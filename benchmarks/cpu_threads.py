"""CPU time per task of every thread, distex_zmq beside the plain pyzmq floor.

Usage::

    python benchmarks/cpu_threads.py [--rows NAME,...] [--pools P,...]
        [--rounds N] [--scale F] [--timeout S] [--json FILE]

For the fixed-size rows of ``run.py`` that the ``pyzmq`` floor also runs
(``chunksize=1`` at qsize 2 and 16, ``chunksize=100``, one task at a time
async and sync, the 10 MiB echo), it reads the CPU time (utime + stime) of
every thread of the client and of its worker processes from
``/proc/<pid>/task/<tid>/stat`` just before and just after the timed part of
the workload, and prints, per task (per chunk, per payload), the CPU of:

- the client's caller thread (the main thread, ``tid == pid``), its pool
  loop thread (distex_zmq: ``pool._runtime.thread``), its ZeroMQ I/O threads
  (named ``ZMQbg/...``) and any other thread it has;
- the workers' main threads, their other Python threads and their ZeroMQ
  I/O threads (all processes descended from the client count as workers);

plus the wall time per task, as a Markdown table per row with the pools
side by side (medians over the rounds, the range in brackets), and the
context switches per task of each kind of thread (voluntary: it slept;
involuntary: it was preempted), from ``/proc/<pid>/task/<tid>/status``.

Each (row, pool) runs in a fresh interpreter (this script with ``--child``)
through ``_one.py``'s clients and workloads, the ones ``run.py`` measures,
with ``_one.timed_section`` swapped for the probe; the rounds interleave
the pools so that load from elsewhere on the machine hits them alike. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _one
from _procs import become_subreaper, live_descendants, spawn
from _spec import POOLS, WORKLOADS
from run import _child_env, _error_summary, _name_list, _parse_result

HERE = Path(__file__).resolve().parent
#: Clock ticks per second of utime and stime in /proc (10 ms per tick at 100).
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    """One row measured: a workload of ``_one.py`` and what one unit is."""

    workload: str
    #: Tasks at ``--scale 1``: enough that a 10 ms clock tick is a small
    #: part of every thread's CPU time over the timed part.
    n: int
    #: Tasks per unit (100 for chunks of 100).
    per_unit: int
    unit: str


ROWS: dict[str, Row] = {
    row.workload: row
    for row in (
        Row("map_cs1", 20_000, 1, "task"),
        Row("map_cs1_q16", 100_000, 1, "task"),
        Row("map_cs100", 1_000_000, 100, "chunk of 100"),
        Row("latency", 10_000, 1, "task"),
        Row("latency_sync", 10_000, 1, "task"),
        Row("echo", 100, 1, "10 MiB payload"),
    )
}

#: Thread categories, in table order, with their labels.
CATEGORIES: dict[str, str] = {
    "caller": "client: caller thread",
    "pool_loop": "client: pool loop thread",
    "client_zmq": "client: ZeroMQ I/O threads",
    "client_other": "client: other threads",
    "worker_main": "workers: main threads",
    "worker_other": "workers: other Python threads",
    "worker_zmq": "workers: ZeroMQ I/O threads",
}

ThreadKey = tuple[int, int]  # (pid, tid)


# ----------------------------------------------------------- child: probe


#: What is read of a thread: its name, utime + stime in clock ticks, and
#: its voluntary and involuntary context switches (sleeps, preemptions).
ThreadSample = tuple[str, int, int, int]


def _switches(status: str) -> tuple[int, int]:
    """Voluntary and involuntary context switches from a /proc status text."""
    counts = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            counts[key] = int(value)
    return counts.get("voluntary_ctxt_switches", 0), counts.get("nonvoluntary_ctxt_switches", 0)


def _read_threads(pids: list[int]) -> dict[ThreadKey, ThreadSample]:
    """(pid, tid) -> ``ThreadSample`` of every thread of ``pids`` that can
    still be read."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    voluntary, involuntary = _switches(f.read())
            except OSError:
                continue
            # "tid (comm) state ...": comm may hold spaces and parentheses
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            out[(pid, int(tid))] = (name, ticks, voluntary, involuntary)
    return out


def _pool_loop_tid(client: _one.Client) -> int | None:
    """Native id of distex_zmq's pool loop thread, if the client has one."""
    runtime = getattr(getattr(client, "pool", None), "_runtime", None)
    thread = getattr(runtime, "thread", None)
    return getattr(thread, "native_id", None) if thread is not None else None


class ThreadProbe:
    """CPU of every thread of this process and its descendants over the
    timed part of one workload (``_one.timed_section``)."""

    def __init__(self, client: _one.Client) -> None:
        self.client = client
        self.wall = 0.0
        self.cpu = dict.fromkeys(CATEGORIES, 0.0)
        #: voluntary and involuntary context switches by category
        self.switches = {category: [0, 0] for category in CATEGORIES}
        #: CPU seconds by (category, thread name), to see what "other" holds
        self.by_name: dict[str, float] = {}
        self.workers = 0
        self.has_pool_loop = False
        self.sections = 0

    def classify(self, pid: int, tid: int, name: str, loop_tid: int | None) -> str:
        """The category of one thread."""
        me = os.getpid()
        zmq = name.startswith("ZMQbg/")
        if pid == me:
            if tid == me:
                return "caller"
            if tid == loop_tid:
                return "pool_loop"
            return "client_zmq" if zmq else "client_other"
        if tid == pid:
            return "worker_main"
        return "worker_zmq" if zmq else "worker_other"

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """Read every thread's CPU before and after the timed part."""
        me = os.getpid()
        workers = live_descendants(me)
        loop_tid = _pool_loop_tid(self.client)
        if loop_tid == threading.get_native_id():
            loop_tid = None  # the pool runs on the caller's thread: count it there
        before = _read_threads([me, *workers])
        t0 = time.perf_counter()
        yield
        self.wall += time.perf_counter() - t0
        # threads started during the section count from zero; threads that
        # ended during it are lost (none do in these workloads)
        after = _read_threads([me, *workers])
        for (pid, tid), (name, ticks, voluntary, involuntary) in after.items():
            _, ticks0, voluntary0, involuntary0 = before.get((pid, tid), (name, 0, 0, 0))
            seconds = (ticks - ticks0) / CLK_TCK
            category = self.classify(pid, tid, name, loop_tid)
            self.cpu[category] += seconds
            self.switches[category][0] += voluntary - voluntary0
            self.switches[category][1] += involuntary - involuntary0
            key = f"{category}: {name}"
            self.by_name[key] = self.by_name.get(key, 0.0) + seconds
        self.workers = len(workers)
        self.has_pool_loop = loop_tid is not None
        self.sections += 1


def child(pool: str, workload: str, n: int) -> None:
    """Measure one (pool, row) in this interpreter; print a ``RESULT`` line."""
    client = _one.make_client(pool)
    probe = ThreadProbe(client)
    _one.timed_section = probe.section
    metrics = _one.measure(client, WORKLOADS[workload], n)
    if probe.sections != 1:
        raise RuntimeError(f"{workload}: {probe.sections} timed sections, expected 1")
    result = {
        "pool": pool,
        "workload": workload,
        "n": n,
        "metrics": metrics,
        "wall_s": probe.wall,
        "cpu_s": probe.cpu,
        "switches": probe.switches,
        "threads_s": {k: v for k, v in sorted(probe.by_name.items()) if v},
        "workers": probe.workers,
        "pool_loop": probe.has_pool_loop,
    }
    print("RESULT " + json.dumps(result), flush=True)
    _one._arm_exit_watchdog(_one.EXIT_GRACE_S)
    client.close()


# --------------------------------------------------------- parent: rounds


def run_cell(pool: str, row: Row, n: int, timeout: float) -> dict[str, Any]:
    """Run one (pool, row) in a fresh interpreter; its result or an error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", pool, row.workload, str(n)]
    outcome = spawn(cmd, timeout, _child_env(), HERE)
    result = _parse_result(outcome.stdout)
    if result is not None:
        return result
    if outcome.status is None:
        return {"error": f"no result within {timeout:g} s"}
    return {"error": _error_summary(outcome.stderr) or f"exit status {outcome.status}"}


def per_unit(result: dict[str, Any], row: Row) -> dict[str, float]:
    """Microseconds per unit: wall time, each category and all threads."""
    units = result["n"] / row.per_unit
    out = {"wall": result["wall_s"] / units * 1e6}
    for category in CATEGORIES:
        out[category] = result["cpu_s"][category] / units * 1e6
    out["total"] = sum(result["cpu_s"].values()) / units * 1e6
    return out


def switches_per_unit(result: dict[str, Any], row: Row) -> dict[str, tuple[float, float]]:
    """Voluntary and involuntary context switches per unit, by category."""
    units = result["n"] / row.per_unit
    return {c: (v / units, nv / units) for c, (v, nv) in result["switches"].items()}


def _summary_pair(pairs: list[tuple[float, float]]) -> str:
    """Medians of (voluntary, involuntary) switches per unit: "0.50 / 0.12"."""
    if not pairs:
        return "—"
    return " / ".join(f"{statistics.median(p[i] for p in pairs):.2f}" for i in (0, 1))


def _fmt(value: float) -> str:
    """A number of microseconds, with precision that suits its size."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _summary(values: list[float]) -> str:
    """Median, and the range in brackets when there are several."""
    if not values:
        return "—"
    text = _fmt(statistics.median(values))
    if len(values) > 1:
        text += f" [{_fmt(min(values))}–{_fmt(max(values))}]"
    return text


def _table_head(pools: list[str]) -> list[str]:
    """The head of a Markdown table with a column per pool."""
    return ["| | " + " | ".join(pools) + " |", "|---|" + "---:|" * len(pools)]


def render_row(row: Row, n: int, pools: list[str], cells: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown table of one row: thread categories down, pools across."""
    label = WORKLOADS[row.workload].metrics[0].label.replace(", p50", "")
    units = n / row.per_unit
    lines = [
        f"### {label}: µs per {row.unit}",
        "",
        f"{n:,} tasks; a 10 ms clock tick is {1e6 / CLK_TCK / units:.2g} µs per {row.unit}"
        " per thread.",
        "",
        *_table_head(pools),
    ]
    ok = {p: [r for r in cells[p] if "error" not in r] for p in pools}
    values = {p: [per_unit(r, row) for r in ok[p]] for p in pools}
    names = {"wall": "wall time", **CATEGORIES, "total": "all threads (CPU)"}
    for key, name in names.items():
        row_cells = []
        for p in pools:
            if key == "pool_loop" and not any(r["pool_loop"] for r in ok[p]):
                row_cells.append("—")
            else:
                row_cells.append(_summary([v[key] for v in values[p]]))
        lines.append(f"| {name} | " + " | ".join(row_cells) + " |")
    lines += [
        "",
        f"Context switches per {row.unit}, voluntary / involuntary (the thread slept /"
        " was preempted), medians:",
        "",
        *_table_head(pools),
    ]
    switches = {p: [switches_per_unit(r, row) for r in ok[p] if "switches" in r] for p in pools}
    for key, name in CATEGORIES.items():
        if key == "pool_loop" and not any(r["pool_loop"] for p in pools for r in ok[p]):
            continue
        cells_ = [
            "—"
            if key == "pool_loop" and not any(r["pool_loop"] for r in ok[p])
            else _summary_pair([s[key] for s in switches[p]])
            for p in pools
        ]
        if all(c in ("—", "0.00 / 0.00") for c in cells_):
            continue  # a category no pool has threads in
        lines.append(f"| {name} | " + " | ".join(cells_) + " |")
    notes = []
    for p in pools:
        errors = [r["error"] for r in cells[p] if "error" in r]
        if errors:
            notes.append(f"{p}: {len(errors)} of {len(cells[p])} runs failed: {errors[-1]}")
        workers = sorted({r["workers"] for r in ok[p]})
        if workers and workers != [_one.NUM_WORKERS]:
            notes.append(f"{p}: {'/'.join(map(str, workers))} worker processes found")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def render_summary(
    rows: list[Row], pools: list[str], cells: dict[tuple[str, str], list[dict[str, Any]]]
) -> str:
    """One line per row: wall and all threads' CPU per unit of each pool,
    and the cores they kept busy (CPU over wall time: 2 on 2 cores is a row
    bound by CPU; less, by the waits of a round trip)."""
    head = (
        "| row | unit | " + " | ".join(f"{p} wall | {p} CPU | {p} cores busy" for p in pools) + " |"
    )
    lines = [head, "|---|---|" + "---:|---:|---:|" * len(pools)]
    for row in rows:
        label = WORKLOADS[row.workload].metrics[0].label.replace(", p50", "")
        parts = []
        for p in pools:
            values = [per_unit(r, row) for r in cells[(row.workload, p)] if "error" not in r]
            parts.append(_summary([v["wall"] for v in values]))
            parts.append(_summary([v["total"] for v in values]))
            busy = [v["total"] / v["wall"] for v in values if v["wall"]]
            parts.append(f"{statistics.median(busy):.2f}" if busy else "—")
        lines.append(f"| {label} | µs per {row.unit} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="CPU per task of every thread, distex_zmq beside plain pyzmq."
    )
    parser.add_argument(
        "--rows",
        type=lambda s: _name_list(s, list(ROWS), "row"),
        default=list(ROWS),
        metavar="NAME,...",
        help="rows to measure: " + ", ".join(ROWS),
    )
    parser.add_argument(
        "--pools",
        type=lambda s: _name_list(s, POOLS, "pool"),
        default=["distex_zmq", "pyzmq"],
        metavar="P,...",
        help="pools side by side (default distex_zmq,pyzmq; any of " + ", ".join(POOLS) + ")",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every row's number of tasks (default 1; e.g. 0.05 to check the script)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="timeout of each run in seconds"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every raw number")
    parser.add_argument("--child", nargs=3, metavar=("POOL", "ROW", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be at least 1 and --scale above 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the tables."""
    args = parse_args(argv)
    if args.child:
        pool, workload, n = args.child
        child(pool, workload, int(n))
        return
    become_subreaper()
    rows = [ROWS[name] for name in args.rows]
    sizes = {row.workload: max(row.per_unit, round(row.n * args.scale)) for row in rows}
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {
        (row.workload, p): [] for row in rows for p in args.pools
    }
    for round_no in range(1, args.rounds + 1):
        for row in rows:
            for p in args.pools:
                result = run_cell(p, row, sizes[row.workload], args.timeout)
                cells[(row.workload, p)].append(result)
                status = result.get("error") or f"{per_unit(result, row)['wall']:,.1f} µs wall"
                print(
                    f"[round {round_no}/{args.rounds}] {row.workload:<12} {p:<10} {status}",
                    file=sys.stderr,
                    flush=True,
                )
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [
        "## CPU per task, thread by thread",
        "",
        f"{' beside '.join(args.pools)}; {_one.NUM_WORKERS} workers; medians of"
        f" {args.rounds} round(s), range in brackets; load average at the end {load}."
        " CPU is utime + stime from /proc/<pid>/task/<tid>/stat over the timed part"
        " only; workers: the sum over all worker processes.",
        "",
        render_summary(rows, args.pools, cells),
    ]
    for row in rows:
        per_pool = {p: cells[(row.workload, p)] for p in args.pools}
        parts += ["", render_row(row, sizes[row.workload], args.pools, per_pool)]
    print("\n".join(parts))
    if args.json:
        raw = [{"row": w, "pool": p, "runs": runs} for (w, p), runs in cells.items()]
        args.json.write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
