"""Idioms of code written for ``ProcessPoolExecutor``, run as ``python
executor_idioms.py local`` (a ``Pool``) or ``control`` (the executor itself):
the same code must hold for both. It prints ``OK`` when every check holds.

- ``except BrokenProcessPool:`` to make a new pool, after a task that kills
  its worker and after an initializer that raises;
- ``multiprocessing.current_process()`` in a worker: not the main process,
  and numbered (``_identity[0]``, a progress bar's row, a GPU).
"""

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


def make(kind, workers, **options):
    if kind == "control":
        return ProcessPoolExecutor(workers, **options)
    from distex_zmq import Pool

    return Pool(workers, max_retries=0, **options)


def die():
    os._exit(3)


def square(x):
    return x * x


def fail_to_start():
    raise RuntimeError("no model here")


def whoami():
    process = multiprocessing.current_process()
    return process.name, process._identity[0]


def recovers_from_a_lost_worker(kind):
    attempts = 0
    while True:
        attempts += 1
        executor = make(kind, 2)
        try:
            if attempts == 1:
                executor.submit(die).result(timeout=60)
            return [executor.submit(square, 3).result(timeout=60), attempts]
        except BrokenProcessPool:
            continue
        finally:
            executor.shutdown()


def recovers_from_an_initializer_that_raises(kind):
    try:
        with make(kind, 1, initializer=fail_to_start) as executor:
            executor.submit(square, 2).result(timeout=60)
    except BrokenProcessPool:
        with make(kind, 1) as executor:
            return executor.submit(square, 2).result(timeout=60)
    raise AssertionError("the pool ran a task without its initializer")


def main():
    kind = sys.argv[1]
    assert recovers_from_a_lost_worker(kind) == [9, 2]
    assert recovers_from_an_initializer_that_raises(kind) == 4
    with make(kind, 2) as executor:
        seen = {executor.submit(whoami).result(timeout=60) for _ in range(40)}
        names = {name for name, _ in seen}
        assert "MainProcess" not in names, seen
        assert all(isinstance(number, int) and number >= 1 for _, number in seen), seen
    print("OK")


if __name__ == "__main__":
    main()
