"""Benchmark distex_zmq against distex 0.7.2, ProcessPoolExecutor and loky.

Usage::

    python benchmarks/run.py [--quick] [--only NAME,...]
        [--pools distex_zmq,distex,process,loky] [--json out.json]

Every (pool, workload) measurement runs in a fresh interpreter
(``benchmarks/_one.py``) with a timeout; a failure shows up as ``error`` or
``timeout`` in its cell. The Markdown report goes to stdout, progress to
stderr. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from _procs import LEFTOVER_GRACE_S, Outcome, become_subreaper, spawn
from _spec import BASELINE, NUM_WORKERS, POOLS, RAW_WORKLOADS, WORKLOADS, Metric

HERE = Path(__file__).resolve().parent
#: Distributions whose versions go in the report header.
VERSIONED = ("distex_zmq", "distex", "pyzmq", "loky", "uvloop", "cloudpickle", "dill")
#: Module that must be importable for each pool to be measured.
POOL_MODULES = {"distex_zmq": "distex_zmq", "distex": "distex", "loky": "loky"}

Record = dict[str, Any]


# ------------------------------------------------------------------ header


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(dist: str) -> str:
    """Installed version of a distribution, or ``not installed``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_meta(quick: bool, repeat: int) -> dict[str, Any]:
    """Describe the machine, the interpreter and the package versions."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": _nproc(),
        "cpu_model": _cpu_model(),
        "memory": _memory(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "versions": {dist: _version(dist) for dist in VERSIONED},
        "quick": quick,
        "repeat": repeat,
        "workers": NUM_WORKERS,
    }


def render_header(meta: dict[str, Any]) -> str:
    """Markdown header for the report."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    load = meta["loadavg"]
    load_text = "/".join(f"{x:.2f}" for x in load) if load else "n/a"
    mode = "quick (--quick: smaller sizes)" if meta["quick"] else "full"
    if meta["repeat"] > 1:
        mode += f", best of {meta['repeat']} runs per cell"
    return "\n".join(
        [
            "# distex_zmq benchmark",
            "",
            f"- Date: {meta['date']}",
            f"- Machine: nproc {meta['nproc']}, {meta['cpu_model']},"
            f" {meta['memory']} RAM, load average at start {load_text}"
            f" ({meta['platform']})",
            f"- Python: {meta['python']} ({meta['executable']})",
            f"- Versions: {versions}",
            f"- Mode: {mode}; {meta['workers']} workers per pool; one fresh"
            " interpreter per measurement; client loop of distex/distex_zmq: uvloop",
        ]
    )


# ------------------------------------------------------------ measurements


def _child_env() -> dict[str, str]:
    """Environment for ``_one.py``: ``tasks`` importable, venv scripts on PATH."""
    env = dict(os.environ)
    paths = [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # distex starts its workers as the ``distex_proc`` script of this venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _last_line(text: str) -> str:
    """Last non-empty line of ``text``, shortened for a footnote."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _error_summary(stderr: str) -> str:
    """The exception line of the measurement's own traceback, if any.

    Pools may log other tracebacks (from their threads) and messages after
    it, so the last line of stderr is not necessarily the error.
    """
    blocks = stderr.split("Traceback (most recent call last):")[1:]
    for block in reversed(blocks):
        if "_one.py" not in block:
            continue
        for line in block.splitlines():
            if line.strip() and not line[0].isspace():
                return line.strip()[:300]
    return _last_line(stderr)


def _parse_result(stdout: str) -> Record | None:
    """The JSON of the last ``RESULT`` line, if any."""
    results = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(results[-1][len("RESULT ") :]) if results else None


def _warning(outcome: Outcome) -> str | None:
    """What went wrong after a measurement printed its result, if anything."""
    problems = []
    if outcome.status is None:
        problems.append("timed out during shutdown")
    elif outcome.status != 0:
        problems.append(f"exit status {outcome.status} after the result")
    if outcome.leftovers:
        problems.append(
            f"{outcome.leftovers} process(es) still alive {LEFTOVER_GRACE_S:g} s"
            " after it exited (killed)"
        )
    return "; ".join(problems) or None


def run_one(pool: str, workload: str, quick: bool, timeout: float) -> Record:
    """Measure one (pool, workload) in a fresh interpreter."""
    cmd = [
        sys.executable,
        str(HERE / "_one.py"),
        "--pool",
        pool,
        "--workload",
        workload,
    ]
    if quick:
        cmd.append("--quick")
    t0 = time.monotonic()
    outcome = spawn(cmd, timeout, _child_env(), HERE)
    record: Record = {
        "pool": pool,
        "workload": workload,
        "wall_s": time.monotonic() - t0,
    }
    result = _parse_result(outcome.stdout)
    if result is not None:
        record.update(status="ok", **result)
        warning = _warning(outcome)
        if warning:
            record["warning"] = warning
    elif outcome.status is None:
        record.update(status="timeout", error=f"no result within {timeout:g} s")
    else:
        error = _error_summary(outcome.stderr) or f"exit status {outcome.status}"
        record.update(status="error", error=error)
    if record["status"] != "ok" or "warning" in record:
        record["stderr_tail"] = outcome.stderr[-2000:]
    return record


def unavailable(pool: str) -> str | None:
    """Why ``pool`` cannot be measured (its module is missing), or None."""
    module = POOL_MODULES.get(pool)
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"`{module}` is not importable"


def _describe(record: Record) -> str:
    """One progress line for stderr."""
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('error', '')}"
    return ", ".join(f"{k}={v:,.1f}" for k, v in record["metrics"].items())


def best_of(workload: str, runs: list[Record]) -> Record:
    """The best successful run by the workload's first metric, or the last run.

    All runs' metrics are kept under ``runs``.
    """
    ok = [run for run in runs if run["status"] == "ok"]
    if not ok:
        best = dict(runs[-1])
    else:
        primary = WORKLOADS[workload].metrics[0]
        pick = max if primary.higher_is_better else min
        best = dict(pick(ok, key=lambda run: run["metrics"][primary.key]))
        if len(ok) < len(runs):
            best["warning"] = f"{len(runs) - len(ok)} of {len(runs)} runs failed"
    if len(runs) > 1:
        best["runs"] = [run.get("metrics") or run["status"] for run in runs]
    return best


def run_all(
    pools: list[str], workloads: list[str], quick: bool, timeout: float, repeat: int
) -> list[Record]:
    """Measure every workload on every pool.

    The pools of a workload run adjacent in time, and with ``repeat`` in
    rounds (each pool once, then each pool again), so that a burst of load on
    the machine falls on every pool's runs alike rather than on one pool's.
    """
    missing = {pool: unavailable(pool) for pool in pools}
    records = []
    total = sum(1 for w in workloads for p in pools if p != "pyzmq" or w in RAW_WORKLOADS)
    for workload in workloads:
        row = [p for p in pools if p != "pyzmq" or workload in RAW_WORKLOADS]
        runs: dict[str, list[Record]] = {pool: [] for pool in row if not missing[pool]}
        for _ in range(repeat):
            for pool in runs:
                runs[pool].append(run_one(pool, workload, quick, timeout))
        for pool in row:
            reason = missing[pool]
            if reason:
                record = {
                    "pool": pool,
                    "workload": workload,
                    "status": "unavailable",
                    "error": reason,
                }
            else:
                record = best_of(workload, runs[pool])
            records.append(record)
            print(
                f"[{len(records)}/{total}] {workload:<10} {pool:<10} {_describe(record)}",
                file=sys.stderr,
                flush=True,
            )
    return records


# ------------------------------------------------------------------ report


def _fmt(value: float) -> str:
    """Format a number with precision that suits its magnitude."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(metric: Metric, value: float, base: float | None) -> str:
    """`` (r×)`` against the baseline, oriented so that > 1 is better."""
    if not base or not value:
        return ""
    ratio = value / base if metric.higher_is_better else base / value
    return f" ({ratio:.2f}×)"


class Footnotes:
    """Numbered, de-duplicated footnotes."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        """Return `` [n]`` for ``text``, adding it if new."""
        if text not in self.texts:
            self.texts.append(text)
        return f" [{self.texts.index(text) + 1}]"

    def render(self) -> str:
        """The footnotes as a numbered Markdown list."""
        return "\n".join(f"{i}. {text}" for i, text in enumerate(self.texts, 1))


def _cell(record: Record | None, metric: Metric, base: float | None, notes: Footnotes) -> str:
    """One table cell: value, ratio and footnote references."""
    if record is None:
        return "—"
    if record["status"] != "ok":
        return record["status"] + notes.ref(f"{record['pool']}: {record['error']}")
    value = record["metrics"][metric.key]
    cell = _fmt(value) + _ratio(metric, value, base)
    if record.get("note"):
        cell += notes.ref(f"{record['pool']}: {record['note']}")
    if record.get("warning"):
        cell += notes.ref(f"{record['pool']}, {record['workload']}: {record['warning']}")
    return cell


def _baseline(by_key: dict[tuple[str, str], Record], workload: str, metric: Metric) -> float | None:
    """The baseline pool's value for ``metric``, if it was measured."""
    record = by_key.get((BASELINE, workload))
    if record is None or record["status"] != "ok":
        return None
    return record["metrics"].get(metric.key)


def render_table(records: list[Record], pools: list[str], workloads: list[str]) -> str:
    """Markdown table (one row per metric, one column per pool) and notes."""
    by_key = {(r["pool"], r["workload"]): r for r in records}
    notes = Footnotes()
    lines = [
        "| Workload | Unit | " + " | ".join(pools) + " |",
        "|---|---|" + "---:|" * len(pools),
    ]
    for name in workloads:
        for metric in WORKLOADS[name].metrics:
            base = _baseline(by_key, name, metric)
            cells = [_cell(by_key.get((p, name)), metric, base, notes) for p in pools]
            lines.append(f"| {metric.label} | {metric.unit} | " + " | ".join(cells) + " |")
    legend = (
        f"Cells: value (ratio against {BASELINE}). A ratio > 1 is always better"
        f" than {BASELINE}: for throughput and speedup rows ratio = value /"
        f" {BASELINE}; for latency and start-up rows (lower is better) ratio ="
        f" {BASELINE} / value. Only ratios from the same run are comparable;"
        " MB = 10^6 bytes."
    )
    parts = ["\n".join(lines), legend]
    floor = _against_raw(by_key)
    if floor:
        parts.append(floor)
    if notes.texts:
        parts.append("Notes:\n\n" + notes.render())
    return "\n\n".join(parts)


def _against_raw(by_key: dict[tuple[str, str], Record]) -> str:
    """distex_zmq against plain pyzmq, for every row both measured.

    Throughput rows as a share of pyzmq's (higher is better); latency rows as
    a multiple of pyzmq's round trip (lower is better), the form of issue 19's
    target ("p50 ≤ 1.15× pyzmq's round trip").
    """
    parts = []
    for workload in RAW_WORKLOADS:
        ours, raw = by_key.get(("distex_zmq", workload)), by_key.get(("pyzmq", workload))
        if not ours or not raw or ours["status"] != "ok" or raw["status"] != "ok":
            continue
        for metric in WORKLOADS[workload].metrics:
            a, b = ours["metrics"].get(metric.key), raw["metrics"].get(metric.key)
            if not a or not b:
                continue
            if metric.higher_is_better:
                parts.append(f"{metric.label}: {a / b:.0%} of pyzmq's")
            else:
                parts.append(f"{metric.label}: {a / b:.2f}× pyzmq's round trip")
    if not parts:
        return ""
    return (
        "distex_zmq against plain pyzmq (throughput: share of pyzmq's, higher is"
        " better; latency: multiple of pyzmq's round trip, lower is better):\n\n"
        + "\n".join(f"- {part}" for part in parts)
    )


# -------------------------------------------------------------------- main


def _name_list(text: str, allowed: list[str] | tuple[str, ...], what: str) -> list[str]:
    """Split a comma-separated list and check every name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Benchmark distex_zmq against distex, ProcessPoolExecutor, loky."
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--only",
        type=lambda s: _name_list(s, list(WORKLOADS), "workload"),
        default=list(WORKLOADS),
        metavar="NAME,...",
        help="workloads to run: " + ", ".join(WORKLOADS),
    )
    parser.add_argument(
        "--pools",
        type=lambda s: _name_list(s, POOLS, "pool"),
        default=list(POOLS),
        metavar="POOL,...",
        help="pools to run: " + ", ".join(POOLS),
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the raw numbers to FILE"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each cell N times and keep the best run (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="timeout of each measurement (default 300)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks and print the report."""
    args = parse_args(argv)
    meta = collect_meta(args.quick, args.repeat)
    meta["subreaper"] = become_subreaper()
    records = run_all(args.pools, args.only, args.quick, args.timeout, args.repeat)
    table = render_table(records, args.pools, args.only)
    print(render_header(meta) + "\n\n" + table)
    if args.json:
        report = {"meta": meta, "results": records, "markdown_table": table}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nRaw numbers written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
