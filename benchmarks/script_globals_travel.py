"""How long functions of the script take to travel inside task data, run as
``python script_globals_travel.py [MB] [TASKS] [WORKERS] [REPEATS]`` (``__main__`` is
this file).

Each function of the script below reads a global of about MB megabytes (a
numpy array, a ``bytes`` object, and a dict of strings, which dill's own
pickler would take in Python), and is sent inside the data of
TASKS tasks: as a dask graph's function (``scheduler=pool``), as a joblib
call, as a ``functools.partial`` argument of ``submit``, as a partial
that is the submitted function itself, and as the function of a ``map``
(a new copy of it at each run, as a notebook cell run again makes one, so
that each run sends it). ``ProcessPoolExecutor`` (fork) runs
the same as the control. Prints one line per case: seconds, the best of
REPEATS runs (3 by default).
"""

import functools
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor

import dask
import joblib
import numpy as np

import distex_zmq.joblib  # noqa: F401 - registers the backend
from distex_zmq import Pool

MB = int(sys.argv[1]) if len(sys.argv) > 1 else 80
TASKS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
WORKERS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
REPEATS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
ARRAY = np.ones(MB * 2**20 // 8)
BLOB = b"x" * (MB * 2**20)
# about 35 bytes pickled per entry
TABLE = {f"key {i}": f"value {i}" for i in range(MB * 2**20 // 35)}


def read_array(i):
    return float(ARRAY[i]) + i


def read_blob(i):
    return BLOB[i] + i


def read_table(i):
    return len(TABLE[f"key {i}"]) + i


def call(f):
    return f()


def dask_case(executor, func):
    with dask.config.set(scheduler=executor):
        dask.compute(*[dask.delayed(func)(i) for i in range(TASKS)])


def joblib_case(executor, func):
    if isinstance(executor, Pool):
        with joblib.parallel_config(backend="distex_zmq", pool=executor):
            joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(func)(i) for i in range(TASKS))
    else:
        # joblib's own process backend, the control
        joblib.Parallel(n_jobs=WORKERS, batch_size=1)(joblib.delayed(func)(i) for i in range(TASKS))


def partial_arg_case(executor, func):
    futures = [executor.submit(call, functools.partial(func, i)) for i in range(TASKS)]
    [f.result() for f in futures]


def partial_fn_case(executor, func):
    futures = [executor.submit(functools.partial(func, i)) for i in range(TASKS)]
    [f.result() for f in futures]


def map_case(executor, func):
    if isinstance(executor, Pool):
        func = types.FunctionType(func.__code__, func.__globals__, func.__name__)
    # (ProcessPoolExecutor sends its function by name, which a copy is not)
    list(executor.map(func, range(TASKS)))


def best(case, executor, func):
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        case(executor, func)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    cases = [dask_case, joblib_case, partial_arg_case, partial_fn_case, map_case]
    funcs = [read_array, read_blob, read_table]
    print(f"{TASKS} tasks, {WORKERS} workers, a global of {MB} MB", flush=True)
    for name, make in [
        ("PPE", lambda: ProcessPoolExecutor(WORKERS)),
        ("Pool", lambda: Pool(WORKERS)),
    ]:
        with make() as executor:
            executor.submit(call, int).result()  # started
            for case in cases:
                for func in funcs:
                    if name == "PPE" and case is joblib_case:
                        label = "PPE (joblib loky)"
                    else:
                        label = name
                    took = best(case, executor, func)
                    print(
                        f"{label:18} {case.__name__:17} {func.__name__:10} {took:7.3f} s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
