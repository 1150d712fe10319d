"""Module state of the user's script in workers, run as ``python script_globals.py``.

``__main__`` is this script. The first argument picks the executor:
``local``, ``spawner:PORT`` or ``control`` (a ``ProcessPoolExecutor``, whose
forked workers share one copy of this module each); the second, if given,
the pool's ``data_pickle`` (``cloudpickle``, ``dill``; ``auto`` if not). It
prints ``OK`` when every check holds.
"""

import functools
import multiprocessing
import operator
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

MODEL = None
COUNT = 0
SCALE = 10
REGISTRY = {}
CACHE = {}
CONFIG = {"scale": 1}


def load_model(name):
    global MODEL
    MODEL = f"model:{name}"
    REGISTRY["model"] = name  # the other way: a dict filled in place


def registered(x):
    return REGISTRY.get("model", "missing"), x


def remember(x):
    CACHE[x] = True
    return os.getpid(), len(CACHE)


def remembered():
    return os.getpid(), len(CACHE)


def config_scale():
    return CONFIG["scale"]


def config_scale_again():
    return CONFIG["scale"]


def script_argv():
    return sys.argv


def predict(x):
    return MODEL, x * SCALE


def script_file():
    return os.path.basename(__file__), __name__


def bump():
    global COUNT
    COUNT += 1
    return os.getpid(), COUNT


def count():
    return os.getpid(), COUNT


def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)


def is_even(n):
    return n == 0 or is_odd(n - 1)


def is_odd(n):
    return n != 0 and is_even(n - 1)


def memo(func):
    cache = {}

    @functools.wraps(func)
    def memoized(n):
        if n not in cache:
            cache[n] = func(n)
        return cache[n]

    return memoized


@memo
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def scaled_fact(n, by):
    return fact(n) * by, MODEL


class Reader:
    def __init__(self, key):
        self.key = key

    def read(self, x):
        return self.key, MODEL, x


@functools.cache
def cached_token():
    return os.urandom(8).hex()


def cached_a():
    return os.getpid(), cached_token()


def cached_b():
    return os.getpid(), cached_token()


class Lazy:
    """Loads on first use; its pickle leaves out what it loaded."""

    def __init__(self):
        self.token = None

    def get(self):
        if self.token is None:
            self.token = os.urandom(8).hex()
        return self.token

    def __getstate__(self):
        return {"token": None}


LAZY = Lazy()


def lazy_a():
    return os.getpid(), LAZY.get()


def lazy_b():
    return os.getpid(), LAZY.get()


class Job:
    lock = threading.Lock()  # a class attribute: a lock per process, as after import

    def __init__(self, n):
        self.n = n


def run_job(job):
    with job.lock:
        return job.n * 2


def check(executor, workers):
    # what the initializer set: the classic "load the model once per worker"
    assert executor.submit(predict, 2).result() == ("model:first", 20)
    assert list(executor.map(predict, range(4))) == [("model:first", 10 * i) for i in range(4)]
    # and what it put in a dict of the script, which the next functions
    # bring as the client has it, empty
    assert list(executor.map(registered, range(4))) == [("first", i) for i in range(4)]
    # a partial, a bound method and a recursive function see it too
    assert executor.submit(functools.partial(scaled_fact, by=2), 4).result() == (48, "model:first")
    assert executor.submit(Reader("k").read, 1).result() == ("k", "model:first", 1)
    # functions that call each other, and a recursive one under a decorator
    # (dill, looking for the globals they use, went round in circles)
    assert executor.submit(is_even, 10).result() is True
    assert list(executor.map(is_odd, [3, 4])) == [True, False]
    assert executor.submit(fib, 30).result() == 832040
    call = operator.methodcaller("__call__")
    assert executor.submit(call, functools.partial(is_even, 7)).result() is False
    # the script's module attributes
    assert executor.submit(script_file).result() == ("script_globals.py", "__main__")
    call = operator.methodcaller("__call__")
    assert executor.submit(call, script_file).result() == ("script_globals.py", "__main__")
    # a global a task assigns stays with its worker for the other functions
    bumps = [executor.submit(bump).result() for _ in range(6)]
    last = {}
    for pid, n in bumps:
        last[pid] = n
    seen = run_on_each(executor, workers, count)
    assert all(seen[pid] == n for pid, n in last.items()), (bumps, seen)
    # a dict that tasks fill in place too (a cache)
    fills = [executor.submit(remember, i).result() for i in range(6)]
    filled = dict(fills)  # each worker's last count
    seen = run_on_each(executor, workers, remembered)
    assert all(seen[pid] == n for pid, n in filled.items()), (fills, seen)
    # the script's functions inside a task's data, as dask and joblib send
    # theirs, share them too
    call = operator.methodcaller("__call__", 5)
    assert executor.submit(call, predict).result() == ("model:first", 50)
    assert executor.submit(call, functools.partial(scaled_fact, by=2)).result() == (
        240,
        "model:first",
    )
    assert executor.submit(call, Reader("k").read).result() == ("k", "model:first", 5)
    seen = run_on_each(executor, workers, operator.methodcaller("__call__"), count)
    assert all(seen[pid] == n for pid, n in last.items()), (bumps, seen)
    # a cached function (lru_cache) and an object that loads on first use,
    # which two functions use: one cache, one load per worker
    for first, second in [(cached_a, cached_b), (lazy_a, lazy_b)]:
        one = run_on_each(executor, workers, first)
        assert run_on_each(executor, workers, second) == one
        assert run_on_each(executor, workers, first) == one
    # an object of a class that holds a lock
    assert executor.submit(run_job, Job(3)).result() == 6
    assert list(executor.map(run_job, [Job(1), Job(2)])) == [2, 4]


def run_on_each(executor, workers, func, *args):
    """``func(*args)`` on each worker: ``{pid: its value}``."""
    if hasattr(executor, "run_on_all"):
        return dict(executor.run_on_all(func, *args))
    # the control: tasks until each worker has run some (at once, so that
    # both take them; a worker that lost its core may need more rounds);
    # counts do not change
    seen = {}
    for _ in range(100):
        futures = [executor.submit(func, *args) for _ in range(10 * workers)]
        seen.update(future.result() for future in futures)
        if len(seen) == workers:
            return seen
    raise AssertionError(f"the control's tasks ran on {len(seen)} of its {workers} workers")


def main():
    kind = sys.argv[1]
    if kind == "control":
        # forked workers, Linux's default up to Python 3.13 (3.14's fork
        # server runs the script as __mp_main__)
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(
            2, mp_context=fork, initializer=load_model, initargs=("first",)
        ) as executor:
            check(executor, 2)
            assert executor.submit(script_argv).result() == sys.argv
    else:
        from distex_zmq import PickleType, Pool

        data_pickle = PickleType[sys.argv[2] if len(sys.argv) > 2 else "auto"]
        if kind == "local":
            pool = Pool(2, initializer=load_model, initargs=("first",), data_pickle=data_pickle)
        elif kind.startswith("spawner:"):
            port = kind.split(":")[1]
            pool = Pool(
                None,
                hosts=f"127.0.0.1:{port}/2",
                initializer=load_model,
                initargs=("first",),
                data_pickle=data_pickle,
            )
        else:
            raise SystemExit(f"unknown executor {kind}")
        with pool:
            check(pool, 2)
            if kind == "local":  # the script's command line, as the control's
                assert pool.submit(script_argv).result() == sys.argv, sys.argv
            # run_on_all sets it anew, in every worker
            pool.run_on_all(load_model, "second")
            assert set(pool.run_on_all(predict, 1)) == {("model:second", 10)}
            assert pool.submit(predict, 3).result() == ("model:second", 30)
            assert set(pool.run_on_all(registered, 1)) == {("second", 1)}
            # a dict that the script changes in place goes with the next
            # function that brings it (the control's forked workers keep theirs)
            assert pool.submit(config_scale).result() == 1
            CONFIG["scale"] = 3
            assert set(pool.run_on_all(config_scale_again)) == {3}
    print("OK")


if __name__ == "__main__":
    main()
