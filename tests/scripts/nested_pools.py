"""Tasks that start process pools of their own, run as ``python
nested_pools.py EXECUTOR`` (``__main__`` is this file): a task of the script
maps another function of the script on a ``ProcessPoolExecutor`` or a
``multiprocessing.Pool`` of each start method, which pickle it by name,
``__main__.square``, as in a worker of ``ProcessPoolExecutor``.

EXECUTOR is ``local`` (a ``Pool`` of 2) or ``control`` (a
``ProcessPoolExecutor`` of 2). Prints ``OK`` when every check holds.
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

OFFSET = 1


def square(x):
    return x * x + OFFSET


def on_an_executor(method):
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        return list(executor.map(square, range(4)))


def on_a_pool(method):
    with multiprocessing.get_context(method).Pool(2) as pool:
        return pool.map(square, range(4))


def main(kind):
    if kind == "control":
        executor = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    else:
        from distex_zmq import Pool

        executor = Pool(2)
    expected = [1, 2, 5, 10]
    with executor:
        for method in ("fork", "spawn", "forkserver"):
            assert executor.submit(on_an_executor, method).result() == expected, method
            assert executor.submit(on_a_pool, method).result() == expected, method
        # the workers still serve the script's functions after
        assert list(executor.map(square, range(4))) == expected
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
