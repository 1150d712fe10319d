"""Two versions of distex_zmq, A and B, measured in interleaved rounds.

Usage::

    python benchmarks/ab.py A [B] [--only NAME,...] [--rounds N]
        [--no-floor] [--timeout S] [--quick] [--json FILE]

``A`` and ``B`` are git revisions of this checkout (``B`` defaults to the
working tree as it is, uncommitted changes included). Each is installed,
without its dependencies, into a directory of its own, and measured through
``PYTHONPATH`` by this checkout's harness (``run.py``'s ``run_one``, the
workloads of ``_one.py``): both versions run the same benchmark code.

On a shared or virtual machine the speed of the whole machine swings from
minute to minute, often by more than a change moves a row, so one run of
each version says little. Here every round runs each row for A and for B
back to back, in an order that alternates from round to round, with the
plain ``pyzmq`` floor beside them for the rows it has: a slow minute falls
on both versions alike. The report says, per row, in how many rounds B was
ahead of A, both medians, the median of B's value over A's within a round,
and each version's share of the floor (its range over the rounds).

A change earns its place when B is ahead in most rounds and the medians
agree; ``benchmarks/RESULTS.md`` records these reports (see
``benchmarks/README.md``). A version whose worker processes do not import
the copy installed for it (an install that failed, a ``PYTHONPATH`` that
does not reach the workers) stops the run before any round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import become_subreaper
from _spec import RAW_WORKLOADS, WORKLOADS, Metric
from run import Record, _fmt, _name_list, run_one

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The rows measured unless ``--only`` says otherwise: those of issue 19.
DEFAULT_ROWS = ("map_cs1", "map_cs1_q16", "map_cs100", "map_default", "latency", "latency_sync")
#: What the preflight check runs: the package's path in the client and in a worker.
_WHERE = (
    "import distex_zmq\n"
    "def where(): import distex_zmq; return distex_zmq.__file__\n"
    "with distex_zmq.Pool(1) as pool: print(distex_zmq.__file__, pool.run(where))\n"
)


@dataclass
class Version:
    """One side of the comparison: a revision, and where it is installed."""

    label: str
    revision: str | None  # None: the working tree
    site: Path = field(default_factory=Path)

    @property
    def name(self) -> str:
        return self.revision or "the working tree"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def resolve(revision: str) -> str:
    """The short hash of ``revision``; exit with why if git does not know it."""
    try:
        return _git("rev-parse", "--short", "--verify", f"{revision}^{{commit}}").strip()
    except subprocess.CalledProcessError as e:
        sys.exit(f"ab.py: {revision!r} is not a revision of {ROOT}: {e.stderr.strip()}")


def install(version: Version, scratch: Path) -> None:
    """Install ``version`` into ``scratch/label/site`` from its own sources."""
    source = scratch / version.label / "src"
    source.mkdir(parents=True)
    if version.revision is None:
        # the files git knows of, plus new ones not ignored, as they are now
        names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
        for name in filter(None, names):
            path = ROOT / name
            if path.is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, source / name)
    else:
        archive = subprocess.run(
            ["git", "archive", version.revision], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    version.site = scratch / version.label / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(version.site),
            str(source),
        ],
        check=True,
    )


def check_installed(version: Version) -> None:
    """Exit unless the client and its workers import ``version``'s copy."""
    env = dict(os.environ, PYTHONPATH=str(version.site))
    out = subprocess.run(
        [sys.executable, "-c", _WHERE],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    paths = out.stdout.split()
    if (
        out.returncode
        or len(paths) != 2
        or not all(Path(p).resolve().is_relative_to(version.site.resolve()) for p in paths)
    ):
        sys.exit(
            f"{version.name}: the client or its worker does not import the copy installed "
            f"in {version.site} (got {paths or out.stderr.strip()[-500:]})"
        )


def measure(version: Version, workload: str, quick: bool, timeout: float) -> Record:
    """One run of ``workload`` on ``version`` (``run.py``'s ``run_one``)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(version.site)
    try:
        return run_one("distex_zmq", workload, quick, timeout)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def primary(workload: str) -> Metric:
    """The row's metric compared: throughput, or the median latency."""
    metrics = WORKLOADS[workload].metrics
    return next((m for m in metrics if m.key.endswith("_p50")), metrics[0])


def _value(record: Record, key: str) -> float | None:
    if record.get("status") != "ok":
        return None
    value = record["metrics"].get(key)
    return float(value) if value is not None else None


def _cell(record: Record, key: str) -> str:
    value = _value(record, key)
    return _fmt(value) if value is not None else f"{record['status']}: {record.get('error', '')}"


def summarize(rounds: list[dict[str, dict[str, Record]]], a: Version, b: Version) -> str:
    """The report: a Markdown table, a row per workload."""
    lines = [
        f"A = {a.name}, B = {b.name}; {len(rounds)} rounds, the order of A and B "
        "alternating; medians over the rounds that measured both.",
        "",
        "| row | B ahead | A median | B median | B / A (median of rounds) "
        "| A of floor | B of floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in rounds[0]:
        metric = primary(workload)
        pairs, floors = [], []
        for one in rounds:
            va, vb = (_value(one[workload].get(v.label, {}), metric.key) for v in (a, b))
            if va is None or vb is None:
                continue
            pairs.append((va, vb))
            floor = _value(one[workload].get("pyzmq", {}), metric.key)
            if floor:
                floors.append((va, vb, floor))
        if not pairs:
            lines.append(f"| {metric.label} | no round measured both | | | | | |")
            continue
        ahead = sum((vb > va) if metric.higher_is_better else (vb < va) for va, vb in pairs)
        median_a = statistics.median(va for va, _ in pairs)
        median_b = statistics.median(vb for _, vb in pairs)
        ratio = statistics.median(vb / va for va, vb in pairs)
        shares = ["", ""]
        if floors:
            for i in (0, 1):
                # a share of the floor's throughput, or a multiple of its latency
                xs = [pair[i] / floor for *pair, floor in floors]
                shares[i] = f"{min(xs):.2f}–{max(xs):.2f}"
        lines.append(
            f"| {metric.label} ({metric.unit}) | {ahead}/{len(pairs)} | {_fmt(median_a)} "
            f"| {_fmt(median_b)} | {ratio:.3f} | {shares[0]} | {shares[1]} |"
        )
    lines += [
        "",
        "B / A above 1 is better for throughput, below 1 for latency. Of floor: the "
        "share of plain pyzmq's throughput, or the multiple of its round trip, in "
        "the same round.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A", help="git revision of version A")
    parser.add_argument(
        "b", metavar="B", nargs="?", help="git revision of version B (default: the working tree)"
    )
    parser.add_argument(
        "--only",
        type=lambda s: _name_list(s, list(WORKLOADS), "workload"),
        default=list(DEFAULT_ROWS),
        metavar="NAME,...",
        help=f"rows to compare (default: {','.join(DEFAULT_ROWS)})",
    )
    parser.add_argument("--rounds", type=int, default=8, metavar="N", help="rounds (default 8)")
    parser.add_argument(
        "--no-floor", action="store_true", help="do not run the pyzmq floor beside the rows"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--timeout", type=float, default=120, metavar="S", help="per measurement (default 120)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every run to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    become_subreaper()  # workers left behind by a run are found and killed (run.py)
    a, b = Version("A", args.a), Version("B", args.b)
    for version in (a, b):
        if version.revision is not None:
            version.revision = resolve(version.revision)
    rounds: list[dict[str, dict[str, Record]]] = []
    with tempfile.TemporaryDirectory(prefix="dzq-ab-") as scratch:
        for version in (a, b):
            install(version, Path(scratch))
            check_installed(version)
        for i in range(args.rounds):
            order = (a, b) if i % 2 == 0 else (b, a)
            one: dict[str, dict[str, Record]] = {}
            for workload in args.only:
                runs = one[workload] = {}
                for version in order:
                    runs[version.label] = measure(version, workload, args.quick, args.timeout)
                if not args.no_floor and workload in RAW_WORKLOADS:
                    runs["pyzmq"] = run_one("pyzmq", workload, args.quick, args.timeout)
                cells = ", ".join(
                    f"{label} {_cell(run, primary(workload).key)}" for label, run in runs.items()
                )
                print(f"[round {i + 1}/{args.rounds}] {workload}: {cells}", file=sys.stderr)
            rounds.append(one)
    print(summarize(rounds, a, b))
    if args.json:
        report: dict[str, Any] = {"a": a.name, "b": b.name, "rounds": rounds}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
