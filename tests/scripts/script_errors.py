"""Exceptions of the script whose ``__init__`` takes other arguments than
their ``args``, as arguments and results, run as ``python script_errors.py``.

``__main__`` is this script, as for a user's script. The first argument picks
the executor: ``local``, with a ``data_pickle`` (``pickle``, ``auto``,
``cloudpickle``, ``dill``) as the second, or ``control`` (a
``ProcessPoolExecutor``, which breaks on each of them: a fresh one each).
It prints ``OK`` when every check holds.
"""

import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


class DiskError(Exception):
    def __init__(self, code, path):
        super().__init__(f"{code}: {path}")
        self.code = code
        self.path = path


def fields(error):
    return type(error).__name__, error.code, error.path, str(error)


def collect(n):
    # return_exceptions-style: the errors are results, not raised
    return [DiskError(i, f"/data/{i}") for i in range(n)]


def identity(x):
    return x


def same(error, code, path):
    return type(error) is DiskError and (error.code, error.path, str(error)) == (
        code,
        path,
        f"{code}: {path}",
    )


def check(executor, by_name):
    if not by_name:  # data_pickle="pickle" sends the script's classes by name
        assert executor.submit(fields, DiskError(28, "/data")).result() == (
            "DiskError",
            28,
            "/data",
            "28: /data",
        )
        assert same(executor.submit(identity, DiskError(28, "/data")).result(), 28, "/data")
    errors = executor.submit(collect, 3).result()
    assert all(same(error, i, f"/data/{i}") for i, error in enumerate(errors)), errors
    assert [same(e, 0, "/data/0") for e in executor.map(identity, collect(1) * 3)] == [True] * 3


def control():
    cases = [(fields, DiskError(28, "/data")), (collect, 3)]
    for func, arg in cases:
        with ProcessPoolExecutor(1) as executor:
            try:
                executor.submit(func, arg).result(timeout=30)
            except BrokenProcessPool:
                continue
            raise AssertionError(f"ProcessPoolExecutor ran {func.__name__}")


def main():
    if sys.argv[1] == "control":
        control()
    else:
        from distex_zmq import Pool

        data_pickle = sys.argv[2]
        with Pool(1, data_pickle=data_pickle) as pool:
            check(pool, by_name=data_pickle == "pickle")
    print("OK")


if __name__ == "__main__":
    main()
