"""scipy's ``differential_evolution`` and ``brute`` with ``workers=pool.map``,
as a scientific script passes a pool to them; run as
``python scipy_workers.py EXECUTOR`` (``__main__`` is this file).

EXECUTOR is ``local`` (a ``Pool(2)``) or ``control`` (a
``multiprocessing.Pool(2)``, the pool scipy's documentation names). The cost
function, a dataclass and an object of a class of the script travel as the
function and its ``args=``; the results must be those of the same seeded
calls run serially (``workers=1``). An error in the cost function must reach
the caller as its own type, with a traceback that names the function, and
leave the pool as it was. Prints the workers' pids, the results and ``OK``.
"""

import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brute, differential_evolution, rosen

from distex_zmq import Pool


@dataclass
class Shift:
    dx: float
    dy: float


class Scale:
    def __init__(self, k):
        self.k = k

    def apply(self, value):
        return self.k * value


def cost(x, shift, scale):
    return scale.apply(rosen(np.array([x[0] - shift.dx, x[1] - shift.dy])))


def failing_cost(x, shift, scale):
    if x[0] > shift.dx:
        raise FloatingPointError(f"cost diverged at {x[0]:.3f}")
    return cost(x, shift, scale)


BOUNDS = [(-2.0, 2.0), (-2.0, 2.0)]
ARGS = (Shift(0.5, 0.25), Scale(3.0))


def solve(workers):
    result = differential_evolution(
        cost, BOUNDS, args=ARGS, workers=workers, updating="deferred", seed=7, maxiter=60
    )
    return result.x.tolist(), float(result.fun), int(result.nfev)


def grid(workers):
    return brute(cost, ((-2, 2, 0.25), (-2, 2, 0.25)), args=ARGS, workers=workers, finish=None)


def main(executor):
    serial, serial_grid = solve(1), grid(1)
    if executor == "control":
        pool = multiprocessing.Pool(2)
        worker_pids = [p.pid for p in multiprocessing.active_children()]
    else:
        pool = Pool(2)
        worker_pids = pool.run_on_all(os.getpid)
    print("workers", *worker_pids, flush=True)
    with pool:
        assert solve(pool.map) == serial, (solve(pool.map), serial)
        assert np.array_equal(grid(pool.map), serial_grid)
        try:
            differential_evolution(
                failing_cost, BOUNDS, args=ARGS, workers=pool.map, updating="deferred", seed=7
            )
        except FloatingPointError as e:
            text = "".join(traceback.format_exception(e))
            assert "in failing_cost" in text and "cost diverged at" in text, text
        else:
            raise AssertionError("the error of the cost function was not raised")
        assert solve(pool.map) == serial
    print("result", *serial)
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
