"""Tasks from a module next to the script, run as ``python sibling_module.py
EXECUTOR`` (``sibling_tasks.py`` is that module).

EXECUTOR is ``local`` (a ``Pool`` of 2, whose workers have the script's
path), ``control`` (a ``ProcessPoolExecutor`` of 2, with ``spawn``) or
``spawner:PORT`` (2 workers of a spawner that cannot import the module:
the error says so and what to do, and the module sent by value with
cloudpickle runs there). Prints ``OK`` when every check holds.
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
import sibling_tasks
from sibling_tasks import Box, bump, double


def bump_twice(box):
    return bump(bump(box))


def check(executor):
    assert list(executor.map(double, range(4))) == [0, 2, 4, 6]
    box = executor.submit(bump, Box(1)).result()
    assert box == Box(2) and type(box) is Box, box
    assert executor.submit(bump_twice, Box(1)).result() == Box(3)


def check_cannot_import(pool):
    from distex_zmq import SerializationError

    try:
        list(pool.map(double, range(4)))
    except SerializationError as e:
        text = str(e)
    else:
        raise AssertionError("a worker that cannot import sibling_tasks ran its function")
    assert "No module named 'sibling_tasks'" in text, text
    assert "install that module" in text, text
    assert "cloudpickle.register_pickle_by_value(module)" in text, text


def main():
    kind = sys.argv[1]
    if kind == "control":
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
            check(executor)
    elif kind == "local":
        from distex_zmq import Pool

        with Pool(2) as pool:
            check(pool)
    elif kind.startswith("spawner:"):
        from distex_zmq import PickleType, Pool

        hosts = f"127.0.0.1:{kind.split(':')[1]}/2"
        with Pool(None, hosts) as pool:
            check_cannot_import(pool)
        cloudpickle.register_pickle_by_value(sibling_tasks)
        by_value = PickleType.cloudpickle
        with Pool(None, hosts, func_pickle=by_value, data_pickle=by_value) as pool:
            check(pool)
    else:
        raise SystemExit(f"unknown executor {kind}")
    print("OK")


if __name__ == "__main__":
    main()
