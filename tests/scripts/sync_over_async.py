"""Sync functions over async code, run as ``python sync_over_async.py
EXECUTOR`` (``__main__`` is this file), as scripts and libraries with a sync
API write them: ``asyncio.run``, a loop of their own, the thread's current
loop.

EXECUTOR is ``local`` (a ``Pool`` of 2) or ``control`` (a
``ProcessPoolExecutor`` of 2). Prints ``OK`` when every check holds.
"""

import asyncio
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor


async def fetch(x):
    await asyncio.sleep(0.001)
    return x + 100


def by_asyncio_run(x):
    return asyncio.run(fetch(x))


def on_a_new_loop(x):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(fetch(x))
    finally:
        loop.close()


def on_the_current_loop(x):
    # code from before asyncio.run; Python 3.12 warns that it makes the loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = asyncio.get_event_loop()
    return loop.run_until_complete(fetch(x))


def a_loop_runs():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def main(kind):
    if kind == "control":
        executor = ProcessPoolExecutor(2)
    else:
        from distex_zmq import Pool

        executor = Pool(2)
    # the current loop first: after asyncio.run a thread has none (its end
    # sets none), in a process of ProcessPoolExecutor as in any other
    funcs = [on_a_new_loop, by_asyncio_run]
    if sys.version_info < (3, 14):  # 3.14 makes no current loop
        funcs.insert(0, on_the_current_loop)
    with executor:
        assert executor.submit(a_loop_runs).result() is False
        for func in funcs:
            assert list(executor.map(func, range(6))) == list(range(100, 106)), func
            assert list(executor.map(func, range(6), chunksize=3)) == list(range(100, 106))
            assert executor.submit(func, 7).result() == 107
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
