"""How long objects of the script's own classes take as task data with the
default ``data_pickle`` (``PickleType.auto``), run as
``python script_data.py [REPEATS] [WORKERS]`` (``__main__`` is this file).

Cases, each run on a ``Pool`` and on ``ProcessPoolExecutor`` (fork), the
control, whose ``map`` is given the chunk size that ``multiprocessing``'s
``Pool.map`` takes by default (a quarter of the inputs per worker; its own
default, 1, takes seconds per 10,000 inputs):

- ``one_arg``: 200,000 instances of a dataclass of the script in one
  argument of ``submit``; the task returns a float.
- ``map``: ``map`` over 20,000 instances at each pool's default chunking;
  each task returns a new instance (of the client's class: checked).
- ``namedtuple_map``: the same over a ``typing.NamedTuple`` of the script.
- ``made_map``: ``map`` over 20,000 ints; each task returns an instance.
- ``ints_map``, ``lists_map``: plain data, no object of the script: ``map``
  over 200,000 ints and over 20,000 lists of 10 floats.

Prints one line per case and pool: seconds, the best of REPEATS runs (3 by
default).
"""

import dataclasses
import sys
import time
import typing
from concurrent.futures import ProcessPoolExecutor

from distex_zmq import Pool

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
WORKERS = int(sys.argv[2]) if len(sys.argv) > 2 else 2


@dataclasses.dataclass
class Point:
    x: float
    y: float
    name: str


class Pair(typing.NamedTuple):
    x: float
    y: float


def total(points):
    return sum(p.x + p.y for p in points)


def moved(p):
    return Point(p.x + 1, p.y, p.name)


def made(i):
    return Point(float(i), i / 2, "p")


def swapped(p):
    return Pair(p.y, p.x)


def plus_two(x):
    return x + 2


def list_sum(xs):
    return sum(xs)


POINTS = [Point(float(i), i / 2, "p") for i in range(200_000)]
FEW_POINTS = POINTS[:20_000]
PAIRS = [Pair(float(i), i / 2) for i in range(20_000)]
LISTS = [[float(i + j) for j in range(10)] for i in range(20_000)]


def mapped(executor, func, inputs):
    if isinstance(executor, Pool):
        return executor.map(func, inputs)
    return executor.map(func, inputs, chunksize=max(1, len(inputs) // (4 * WORKERS)))


def one_arg(executor):
    assert executor.submit(total, POINTS).result() == total(POINTS)


def map_case(executor):
    results = list(mapped(executor, moved, FEW_POINTS))
    assert type(results[-1]) is Point and results[-1].x == FEW_POINTS[-1].x + 1


def namedtuple_map(executor):
    results = list(mapped(executor, swapped, PAIRS))
    assert type(results[-1]) is Pair and results[-1].x == PAIRS[-1].y


def made_map(executor):
    results = list(mapped(executor, made, range(20_000)))
    assert type(results[-1]) is Point and results[-1].x == 19_999


def ints_map(executor):
    assert sum(mapped(executor, plus_two, range(200_000))) == sum(range(200_000)) + 400_000


def lists_map(executor):
    assert sum(mapped(executor, list_sum, LISTS)) == sum(map(sum, LISTS))


CASES = [one_arg, map_case, namedtuple_map, made_map, ints_map, lists_map]


def best(case, executor):
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        case(executor)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    print(f"{WORKERS} workers, best of {REPEATS}", flush=True)
    for name, make in [
        ("PPE", lambda: ProcessPoolExecutor(WORKERS)),
        ("Pool", lambda: Pool(WORKERS)),
    ]:
        with make() as executor:
            executor.submit(plus_two, 1).result()  # started
            for case in CASES:
                took = best(case, executor)
                print(f"{name:5} {case.__name__:15} {took:7.3f} s", flush=True)


if __name__ == "__main__":
    main()
