"""distex_zmq under the clients that users run on it (joblib, dask,
scikit-learn), side by side with each client's usual pool, run as
``python benchmarks/clients.py [--cases NAME,...] [--rounds R]
[--timeout S] [--json FILE]``.

Every (case, pool) measurement runs in a fresh interpreter
(``clients.py --one CASE --pool POOL``, so ``__main__`` is this file and
the task functions below are the script's own, as in a user's script),
with 2 workers per pool; the rounds interleave the pools of a case and
the cases. Each measurement makes its pool, runs the case once at a small
size (workers up, functions cached), then times the case once: wall time,
CPU of the client process (all its threads) and CPU of its descendant
processes (the workers). The report gives the medians over the rounds
(the range in brackets) and the ratio of distex_zmq's median to the
control's: above 1 means distex_zmq takes longer. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from run import _child_env

HERE = Path(__file__).resolve().parent
WORKERS = 2
VERSIONED = ("distex_zmq", "joblib", "loky", "dask", "scikit-learn", "numpy", "pyzmq")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ the script's tasks


def tiny(i):
    return i + 1


def nap(i):
    time.sleep(0.01)
    return i


# ------------------------------------------------------------------ the cases
#
# Each case: (description, pools, run(pool_name, executor, small) -> checked value)


def _joblib_run(pool_name: str, executor: Any, calls: list[Any], **kwargs: Any) -> list[Any]:
    import joblib

    if pool_name == "distex_zmq":
        import distex_zmq.joblib  # noqa: F401 - registers the backend

        with joblib.parallel_config(backend="distex_zmq", pool=executor):
            return list(joblib.Parallel(n_jobs=WORKERS, **kwargs)(calls))
    return list(joblib.Parallel(n_jobs=WORKERS, backend="loky", **kwargs)(calls))


def joblib_tiny(pool_name: str, executor: Any, small: bool) -> None:
    import joblib

    n = 200 if small else 20_000
    out = _joblib_run(pool_name, executor, [joblib.delayed(tiny)(i) for i in range(n)])
    assert out == [i + 1 for i in range(n)], "wrong results"


def joblib_10ms(pool_name: str, executor: Any, small: bool) -> None:
    import joblib

    n = 4 if small else 200
    out = _joblib_run(pool_name, executor, [joblib.delayed(nap)(i) for i in range(n)])
    assert out == list(range(n)), "wrong results"


def joblib_unordered(pool_name: str, executor: Any, small: bool) -> None:
    import joblib

    n = 200 if small else 20_000
    calls = [joblib.delayed(tiny)(i) for i in range(n)]
    out = _joblib_run(pool_name, executor, calls, return_as="generator_unordered")
    assert sorted(out) == [i + 1 for i in range(n)], "wrong results"


def _dask_compute(pool_name: str, executor: Any, collection: Any) -> Any:
    import dask

    if pool_name == "dask_processes":
        return collection.compute(scheduler="processes")
    # dask sends an executor's tasks one by one unless told a chunksize
    chunksize = 6 if pool_name == "distex_zmq_cs6" else 1
    with dask.config.set(chunksize=chunksize):
        return collection.compute(scheduler=executor)


def dask_bag_many(pool_name: str, executor: Any, small: bool) -> None:
    import dask.bag as db

    n, parts = (2_000, 20) if small else (20_000, 2_000)
    bag = db.from_sequence(range(n), npartitions=parts).map(tiny)
    total = _dask_compute(pool_name, executor, bag.sum())
    assert total == n * (n + 1) // 2, "wrong sum"


def dask_bag_few(pool_name: str, executor: Any, small: bool) -> None:
    import dask.bag as db

    n, parts = (2_000, 2) if small else (1_000_000, 4)
    bag = db.from_sequence(range(n), npartitions=parts).map(tiny)
    total = _dask_compute(pool_name, executor, bag.sum())
    assert total == n * (n + 1) // 2, "wrong sum"


def dask_array_many(pool_name: str, executor: Any, small: bool) -> None:
    import dask.array as da

    side, chunk = (400, 100) if small else (4_000, 100)
    total = (da.ones((side, side), chunks=chunk) + 1).sum()
    value = _dask_compute(pool_name, executor, total)
    assert value == 2 * side * side, "wrong sum"


def dask_array_few(pool_name: str, executor: Any, small: bool) -> None:
    import dask.array as da

    side, chunk = (400, 200) if small else (6_000, 3_000)
    x = da.random.RandomState(0).random_sample((side, side), chunks=chunk)
    value = _dask_compute(pool_name, executor, (x * 2).mean())
    assert 0.9 < value < 1.1, "wrong mean"


def sklearn_cv(pool_name: str, executor: Any, small: bool) -> None:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    x, y = make_classification(n_samples=400 if small else 2_000, n_features=20, random_state=0)
    model = RandomForestClassifier(n_estimators=4 if small else 20, random_state=0)
    if pool_name == "distex_zmq":
        import distex_zmq.joblib  # noqa: F401 - registers the backend

        with joblib.parallel_config(backend="distex_zmq", pool=executor):
            scores = cross_val_score(model, x, y, cv=8, n_jobs=WORKERS)
    else:
        scores = cross_val_score(model, x, y, cv=8, n_jobs=WORKERS)
    assert len(scores) == 8 and scores.mean() > 0.6, "wrong scores"


JOBLIB_POOLS = ("loky", "distex_zmq")
DASK_POOLS = ("dask_processes", "process", "distex_zmq")
#: for graphs of many tiny tasks, also the pool with dask's chunksize=6
#: (what its processes scheduler does by default, and what docs/clients.md advises)
DASK_MANY_POOLS = (*DASK_POOLS, "distex_zmq_cs6")
CASES: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "joblib_tiny": (
        "joblib `Parallel(n_jobs=2)` of 20,000 calls of `i + 1`",
        JOBLIB_POOLS,
        joblib_tiny,
    ),
    "joblib_10ms": (
        "joblib `Parallel(n_jobs=2)` of 200 calls of `sleep(0.01)` (1 s on 2 free workers)",
        JOBLIB_POOLS,
        joblib_10ms,
    ),
    "joblib_unordered": (
        'joblib as `joblib_tiny`, `return_as="generator_unordered"`',
        JOBLIB_POOLS,
        joblib_unordered,
    ),
    "dask_bag_many": (
        "dask `from_sequence(range(20,000), npartitions=2,000).map(inc).sum()`",
        DASK_MANY_POOLS,
        dask_bag_many,
    ),
    "dask_bag_few": (
        "dask `from_sequence(range(1,000,000), npartitions=4).map(inc).sum()`",
        DASK_POOLS,
        dask_bag_few,
    ),
    "dask_array_many": (
        "dask `(da.ones((4000, 4000), chunks=100) + 1).sum()` (1,600 chunks)",
        DASK_MANY_POOLS,
        dask_array_many,
    ),
    "dask_array_few": (
        "dask `(random((6000, 6000), chunks=3000) * 2).mean()` (4 chunks of 72 MB)",
        DASK_POOLS,
        dask_array_few,
    ),
    "sklearn_cv": (
        "scikit-learn `cross_val_score(RandomForestClassifier(n_estimators=20), cv=8,"
        " n_jobs=2)`, 2,000 samples",
        JOBLIB_POOLS,
        sklearn_cv,
    ),
}

POOL_TEXT = {
    "loky": "loky (joblib's default backend)",
    "dask_processes": 'dask `scheduler="processes"` (a new spawn `ProcessPoolExecutor`'
    " per compute, chunksize 6)",
    "process": "`scheduler=ProcessPoolExecutor(2)` (fork)",
    "distex_zmq": "distex_zmq `Pool(2)`",
    "distex_zmq_cs6": "distex_zmq `Pool(2)` with `dask.config.set(chunksize=6)`",
}


# ------------------------------------------------------------- one measurement


def _ticks(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _descendants_cpu() -> dict[int, int]:
    from _procs import live_descendants

    return {pid: _ticks(pid) for pid in live_descendants(os.getpid())}


def measure(case: str, pool_name: str) -> dict[str, Any]:
    """Make the pool, warm it up with the case at a small size, time it once."""
    run = CASES[case][2]
    executor: Any = None
    if pool_name.startswith("distex_zmq"):
        from distex_zmq import Pool

        executor = Pool(WORKERS)
    elif pool_name == "process":
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(WORKERS)
    try:
        run(pool_name, executor, True)
        workers_before = _descendants_cpu()
        times_before = os.times()
        wall = time.perf_counter()
        run(pool_name, executor, False)
        wall = time.perf_counter() - wall
        times_after = os.times()
        workers_after = _descendants_cpu()
        # workers that lived through the timed part, and those that ended in
        # it and were reaped (dask's processes scheduler shuts its pool down)
        workers = sum(t - workers_before.get(pid, 0) for pid, t in workers_after.items()) / CLK_TCK
        workers += (times_after.children_user + times_after.children_system) - (
            times_before.children_user + times_before.children_system
        )
        client = (times_after.user + times_after.system) - (times_before.user + times_before.system)
        return {"wall": wall, "client_cpu": client, "workers_cpu": workers}
    finally:
        if executor is not None:
            executor.shutdown()


def profile(case: str, pool_name: str, top: int) -> None:
    """Run the case under cProfile (the caller's thread) after a warm-up."""
    import cProfile
    import pstats

    run = CASES[case][2]
    from distex_zmq import Pool

    executor: Any = Pool(WORKERS) if pool_name.startswith("distex_zmq") else None
    if pool_name == "process":
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(WORKERS)
    try:
        run(pool_name, executor, True)
        prof = cProfile.Profile()
        prof.enable()
        run(pool_name, executor, False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
    finally:
        if executor is not None:
            executor.shutdown()


# ------------------------------------------------------------------ harness


def run_one(case: str, pool_name: str, timeout: float) -> dict[str, Any]:
    from _procs import spawn

    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", case, "--pool", pool_name]
    outcome = spawn(cmd, timeout, _child_env(), HERE)
    record: dict[str, Any] = {"case": case, "pool": pool_name}
    lines = [line for line in outcome.stdout.splitlines() if line.startswith("{")]
    if outcome.status == 0 and lines:
        record.update(json.loads(lines[-1]))
    else:
        tail = outcome.stderr.strip().splitlines()[-1:] or ["no output"]
        what = "timeout" if outcome.status is None else f"exit {outcome.status}"
        record["error"] = f"{what}: {tail[0][:200]}"
    if outcome.leftovers:
        record["leftovers"] = outcome.leftovers
    return record


def _med(values: list[float]) -> str:
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med * 1000:,.0f}"
    return f"{med * 1000:,.0f} [{min(values) * 1000:,.0f}–{max(values) * 1000:,.0f}]"


def render(records: list[dict[str, Any]], cases: list[str]) -> str:
    def values(case: str, pool: str, key: str) -> list[float]:
        return [r[key] for r in records if r["case"] == case and r["pool"] == pool and key in r]

    rows = [
        "| case | control | wall ms, control | wall ms, distex_zmq | ratio (wall) |"
        " client CPU ms, control → distex_zmq | workers' CPU ms, control → distex_zmq |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        pools = CASES[case][1]
        for mine in [p for p in pools if p.startswith("distex_zmq")]:
            for control in [p for p in pools if not p.startswith("distex_zmq")]:
                ctl, ours = values(case, control, "wall"), values(case, mine, "wall")
                ratio = (
                    f"{statistics.median(ours) / statistics.median(ctl):.2f}"
                    if ctl and ours
                    else "—"
                )
                client = " → ".join(_med(values(case, p, "client_cpu")) for p in (control, mine))
                workers = " → ".join(_med(values(case, p, "workers_cpu")) for p in (control, mine))
                label = case if mine == "distex_zmq" else f"{case}, {mine}"
                rows.append(
                    f"| {label} | {control} | {_med(ctl)} | {_med(ours)} | {ratio}"
                    f" | {client} | {workers} |"
                )
    errors = [r for r in records if "error" in r or "leftovers" in r]
    notes = [
        f"- {r['case']} / {r['pool']}: {r.get('error', '')} {r.get('leftovers', '')}".rstrip()
        for r in errors
    ]
    return "\n".join(rows + ([""] + notes if notes else []))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(rounds: int) -> str:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{d} {_version(d)}" for d in VERSIONED)
    return "\n".join(
        [
            "# distex_zmq under its clients",
            "",
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- Machine: nproc {len(os.sched_getaffinity(0))}, load average at start {load}"
            f" ({platform.platform()})",
            f"- Python: {platform.python_version()}; {versions}",
            f"- {WORKERS} workers per pool; {rounds} rounds, one fresh interpreter per"
            " measurement; medians [range] over the rounds; ratio = distex_zmq's median"
            " wall time / the control's (above 1: distex_zmq is slower)",
            "",
            "Pools: " + "; ".join(f"`{k}` = {v}" for k, v in POOL_TEXT.items()),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="cases, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument(
        "--pools", help="only these pools, comma-separated (default: each case's all)"
    )
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--profile", metavar="CASE", help="cProfile of the caller, then exit")
    parser.add_argument("--top", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.pool)), flush=True)
        return
    if args.profile:
        profile(args.profile, args.pool or "distex_zmq", args.top)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    only = set(args.pools.split(",")) if args.pools else set()
    from _procs import become_subreaper

    become_subreaper()
    records: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for case in cases:
            pools = [p for p in CASES[case][1] if not only or p in only]
            if rnd % 2:  # alternate which pool of a case goes first
                pools.reverse()
            for pool_name in pools:
                record = run_one(case, pool_name, args.timeout)
                record["round"] = rnd
                records.append(record)
                shown = record.get("error") or f"{record['wall'] * 1000:,.0f} ms"
                print(f"round {rnd + 1}: {case} {pool_name}: {shown}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    print(header(args.rounds))
    print(render(records, cases))


if __name__ == "__main__":
    main()
