"""Functions of the user's script inside task data, each sent to a worker
once, run as ``python script_refs.py EXECUTOR`` (``__main__`` is this file).

EXECUTOR is ``local`` (a ``Pool`` of 2), ``cloudpickle`` or ``dill`` (the
same with that ``data_pickle``), ``spawner:PORT`` (2 workers of the
spawner on that port) or ``control`` (a ``ProcessPoolExecutor`` of 2,
whose workers hold one copy of this module each). The functions reach the
workers inside dask's tasks, joblib's batches (pools only),
``functools.partial`` arguments and partials submitted as the function to
run. Prints ``OK`` when every check holds.
"""

import functools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import dask

#: a large global that the tasks read
TABLE = bytes(range(256)) * (2 * 4096)
#: a dict that the tasks fill in place, in each worker
SEEN = {}
SCALE = 10


def note(i):
    SEEN[len(SEEN)] = i
    return os.getpid(), len(SEEN), TABLE[i] * SCALE


def call(f, *args):
    return f(*args)


def slow(i, by):
    time.sleep(0.002)
    return os.getpid(), TABLE[i] * by


def crash():
    os._exit(3)


class ClientOnly:
    """Pickles in the client, fails to unpickle anywhere else."""

    def __reduce__(self):
        return client_only, (os.getpid(),)


def client_only(pid):
    if os.getpid() != pid:
        raise RuntimeError("a ClientOnly loads only in the client")
    return ClientOnly()


HANDLE = ClientOnly()


def use_handle(x):
    return HANDLE, x


def make_reader(megabytes, tag):
    """A closure that holds ``megabytes`` of its own."""
    blob = bytes([tag]) * (megabytes << 20)
    return lambda i: (blob[i], len(blob) >> 20)


def filled_in_order(results, expect):
    """Each worker's dict kept what its earlier tasks put in it: its sizes
    are 1, 2, 3, ... in the order of its tasks, as in a worker of
    ``ProcessPoolExecutor``, where one copy of the module serves all of them."""
    sizes = {}
    for i, (pid, size, value) in enumerate(results):
        assert value == expect(i), (i, value)
        sizes.setdefault(pid, []).append(size)
    for seen in sizes.values():
        first = min(seen)
        assert sorted(seen) == list(range(first, first + len(seen))), sizes
    return sizes


def through_dask(executor, count):
    with dask.config.set(scheduler=executor):
        return dask.compute(*[dask.delayed(note)(i) for i in range(count)])


def through_partials(executor, count):
    futures = [executor.submit(call, functools.partial(note, i)) for i in range(count)]
    return [f.result() for f in futures]


def through_partial_functions(executor, count):
    futures = [executor.submit(functools.partial(note, i)) for i in range(count)]
    return [f.result() for f in futures]


def through_joblib(pool, count):
    import joblib

    import distex_zmq.joblib  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        return joblib.Parallel(n_jobs=2, batch_size=1)(
            joblib.delayed(note)(i) for i in range(count)
        )


def check(executor, is_pool):
    global SCALE
    expect = lambda i: TABLE[i] * 10  # noqa: E731
    sizes = filled_in_order(through_dask(executor, 30), expect)
    # each worker's dict keeps growing: the function, and the dict it
    # brought, came to each worker once
    runs = {pid: max(seen) for pid, seen in sizes.items()}
    later = filled_in_order(through_partials(executor, 20), expect)
    assert any(min(seen) > runs.get(pid, 0) for pid, seen in later.items()), (runs, later)
    runs = {pid: max(seen) for pid, seen in later.items()}
    later = filled_in_order(through_partial_functions(executor, 20), expect)
    assert any(min(seen) > runs.get(pid, 0) for pid, seen in later.items()), (runs, later)
    if is_pool:
        filled_in_order(through_joblib(executor, 20), expect)
    # one chunk of a map whose function is a partial: the inputs it hands
    # back run on the other worker, which needs the function too
    mapped = list(executor.map(functools.partial(slow, by=3), range(200), chunksize=200))
    got, want = [value for _, value in mapped], [TABLE[i] * 3 for i in range(200)]
    wrong = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w]
    assert got == want, f"{len(got)} results of 200; (index, got, expected): {wrong[:20]}"
    # a global rebound in the client after the function went out is not
    # seen: the workers hold what it brought on its first trip
    SCALE = 1
    assert {value for _, _, value in through_dask(executor, 10)} == {
        TABLE[i] * 10 for i in range(10)
    }
    SCALE = 10
    if not is_pool:
        return
    # a worker that replaces a lost one gets the function on its first task
    pids = {pid for pid, _, _ in executor.run_on_all(call, functools.partial(note, 0))}
    lost = executor.submit(crash)
    try:
        lost.result()
    except Exception:  # noqa: BLE001 - the worker died: its task fails
        pass
    else:
        raise AssertionError("the crash ran to its end")
    deadline = time.monotonic() + 60
    while not replaced(executor, pids):
        assert time.monotonic() < deadline, executor.status()
        time.sleep(0.05)
    results = executor.run_on_all(call, functools.partial(note, 5))
    assert [value for _, _, value in results] == [expect(5)] * 2, results
    assert {pid for pid, _, _ in results} - pids, (pids, results)
    # a function whose globals do not load in the worker fails each task
    # that uses it, with the cause; the worker goes on with the others
    for _ in range(2):
        try:
            executor.submit(call, use_handle, 1).result()
        except Exception as e:  # noqa: BLE001
            text = str(e)
        else:
            raise AssertionError("use_handle ran")
        assert "could not unpickle the arguments of task" in text, text
        assert "the function use_handle of the script" in text, text
        assert "a ClientOnly loads only in the client" in text, text
        assert executor.submit(call, functools.partial(note, 2)).result()[2] == expect(2)
    # closures that hold more than a worker keeps: the one dropped for the
    # other is sent again when a task needs it
    first, second = make_reader(40, 1), make_reader(40, 2)
    for reader, tag in [(first, 1), (second, 2), (first, 1), (second, 2), (first, 1)]:
        futures = [executor.submit(call, reader, i) for i in range(4)]
        assert [f.result() for f in futures] == [(tag, 40)] * 4


def replaced(pool, pids):
    """Whether a worker not among ``pids`` is ready, beside another."""
    ready = {w.pid for w in pool.status().workers if w.state == "ready"}
    return len(ready) == 2 and ready - pids


def main():
    kind = sys.argv[1]
    if kind == "control":
        with ProcessPoolExecutor(2) as executor:
            check(executor, is_pool=False)
    elif kind in ("local", "cloudpickle", "dill"):
        from distex_zmq import PickleType, Pool

        data_pickle = PickleType.auto if kind == "local" else PickleType[kind]
        with Pool(2, max_retries=0, data_pickle=data_pickle) as pool:
            check(pool, is_pool=True)
    elif kind.startswith("spawner:"):
        from distex_zmq import Pool

        port = kind.split(":")[1]
        with Pool(None, hosts=f"127.0.0.1:{port}/2", max_retries=0) as pool:
            check(pool, is_pool=True)
    else:
        raise SystemExit(f"unknown executor {kind}")
    print("OK")


if __name__ == "__main__":
    main()
