"""dask and joblib on a pool, with the script's own functions and classes,
run as ``python clients_script.py WORKERS [HOST]`` (``__main__`` is this file).

dask must run WORKERS tasks at once on a pool of WORKERS workers: the tasks
meet at a barrier of files that only opens when all of them run. Prints
``OK`` when every check holds.
"""

import os
import sys
import tempfile
import time

import dask
import dask.array as da
import dask.bag as db
import joblib

import distex_zmq.joblib  # noqa: F401 - registers the backend
from distex_zmq import Pool


class Point:
    def __init__(self, x):
        self.x = x


def meet(folder, index, count):
    """Wait until ``count`` tasks have reached this point (at most 20 s)."""
    open(os.path.join(folder, str(index)), "w").close()
    deadline = time.monotonic() + 20
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return Point(os.getpid())


def total(points):
    return sum(p.x for p in points)


def check(pool, workers):
    with tempfile.TemporaryDirectory() as folder:
        met = [dask.delayed(meet)(folder, i, workers) for i in range(workers)]
        points = dask.compute(*met, scheduler=pool)
    assert all(isinstance(p, Point) for p in points), points
    assert len({p.x for p in points}) == workers
    assert dask.delayed(total)(points).compute(scheduler=pool) == sum(p.x for p in points)
    bag = db.from_sequence(range(40), npartitions=workers)
    assert bag.map(lambda x: Point(x * 2)).map(lambda p: p.x).sum().compute(
        scheduler=pool
    ) == 2 * sum(range(40))
    array = da.arange(1000, chunks=100)
    assert int((array * 2 + 1).sum().compute(scheduler=pool)) == sum(2 * x + 1 for x in range(1000))
    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        assert joblib.effective_n_jobs(-1) == workers
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(Point)(i) for i in range(50))
        assert [p.x for p in out] == list(range(50)) and isinstance(out[0], Point)
        squares = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(
            joblib.delayed(lambda p: p.x * p.x)(Point(i)) for i in range(20)
        )
        assert sorted(squares) == [i * i for i in range(20)]


def main():
    workers = int(sys.argv[1])
    if len(sys.argv) > 2:
        import json

        options = json.loads(os.environ.get("DZQ_SSH_OPTIONS", "{}"))
        pool = Pool(None, hosts=f"{sys.argv[2]}/{workers}", **options)
    else:
        pool = Pool(workers)
    with pool:
        pool.run_on_all(int, 0)  # every worker up: tasks sent now reach them all
        check(pool, workers)
    print("OK")


if __name__ == "__main__":
    main()
