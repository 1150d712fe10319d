"""CPU per task of each thread when tasks take or return objects of the
script's own classes (``PickleType.auto``, the default ``data_pickle``),
run as ``python script_cpu.py [--cases NAME,...] [--n N] [--rounds R]
[--gc] [--profile CASE]`` (``__main__`` is this file).

Cases on one ``Pool(2)``, each ``--n`` tasks submitted, then waited for:

- ``int_int``: ``pool.submit(f, i)`` returning an int (the control);
- ``p_p``: a dataclass of the script in, one out;
- ``int_p``: an int in, a dataclass out;
- ``p_int``: a dataclass in, an int out;
- ``map_p``: ``pool.map`` over ``--n`` dataclasses (default chunking),
  each returning one (per item).

For each case and round, the CPU (utime + stime, from
``/proc/<pid>/task/<tid>/stat``) of the caller thread, the pool loop
thread and the workers' main threads over the timed part, in µs per task;
printed as the median of the rounds (the range in brackets). The
garbage collector is off in the timed part (``--gc``: on), and collected
between rounds, so that the heap's history does not move the numbers.

``--profile CASE``: run the case once under ``cProfile`` (the caller's
thread) and print the top functions by own time instead.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import os
import pstats
import statistics
import sys
import time

from _procs import live_descendants

from distex_zmq import Pool

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class P:
    x: float
    y: float
    name: str


def int_id(i):
    return i + 1


def p_moved(p):
    return P(p.x + 1, p.y, p.name)


def int_made(i):
    return P(float(i), i / 2, "p")


def p_sum(p):
    return int(p.x)


def _ticks(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _snapshot(pool: Pool, workers: list[int]) -> dict[str, int]:
    me = os.getpid()
    loop_tid = pool._runtime.thread.native_id  # type: ignore[union-attr]
    assert loop_tid is not None
    return {
        "caller": _ticks(me, me),
        "pool_loop": _ticks(me, loop_tid),
        "workers": sum(_ticks(pid, pid) for pid in workers),
    }


def run_case(pool: Pool, case: str, n: int) -> None:
    if case == "int_int":
        futures = [pool.submit(int_id, i) for i in range(n)]
    elif case == "p_p":
        futures = [pool.submit(p_moved, P(float(i), 0.5, "p")) for i in range(n)]
    elif case == "int_p":
        futures = [pool.submit(int_made, i) for i in range(n)]
    elif case == "p_int":
        futures = [pool.submit(p_sum, P(float(i), 0.5, "p")) for i in range(n)]
    elif case == "map_p":
        results = list(pool.map(p_moved, [P(float(i), 0.5, "p") for i in range(n)]))
        assert type(results[-1]) is P and results[-1].x == n
        return
    else:
        raise SystemExit(f"unknown case {case}")
    last = futures[-1].result()
    for future in futures:
        future.result()
    assert last is not None


CASES = ["int_int", "p_p", "int_p", "p_int", "map_p"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gc", action="store_true")
    parser.add_argument("--profile", default=None)
    args = parser.parse_args()
    with Pool(2) as pool:
        pool.submit(int_id, 1).result()
        workers = live_descendants(os.getpid())
        if args.profile:
            run_case(pool, args.profile, args.n)  # warm
            profiler = cProfile.Profile()
            profiler.enable()
            run_case(pool, args.profile, args.n)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return
        cases = args.cases.split(",")
        for case in cases:
            run_case(pool, case, min(args.n, 500))  # warm: classes sent by id
        got: dict[str, dict[str, list[float]]] = {c: {} for c in cases}
        for _ in range(args.rounds):
            for case in cases:
                gc.collect()
                if not args.gc:
                    gc.disable()
                before = _snapshot(pool, workers)
                t0 = time.perf_counter()
                run_case(pool, case, args.n)
                wall = time.perf_counter() - t0
                after = _snapshot(pool, workers)
                gc.enable()
                for key in before:
                    us = (after[key] - before[key]) / CLK_TCK / args.n * 1e6
                    got[case].setdefault(key, []).append(us)
                got[case].setdefault("wall", []).append(wall / args.n * 1e6)
    print(f"n={args.n} rounds={args.rounds} gc={'on' if args.gc else 'off'}; µs per task")
    print("| case | caller | pool loop | workers' main | wall |")
    print("|---|---|---|---|---|")
    for case in cases:
        cells = []
        for key in ("caller", "pool_loop", "workers", "wall"):
            values = got[case][key]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})")
        print(f"| {case} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
