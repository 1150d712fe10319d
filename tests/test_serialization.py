"""Pickle types, the out-of-band zero-copy path, and serialization errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copyreg
import datetime
import functools
import gc
import itertools
import operator
import os
import pickle
import re
import statistics
import subprocess
import sys
import threading
import tracemalloc
import types
import weakref
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest
from distex_zmq.worker.running import Runner

from distex_zmq import (
    PickleType,
    RemoteException,
    SerializationError,
    script_objects,
    script_pickler,
    script_rebuild,
)
from distex_zmq.chunk_load import load_each
from distex_zmq.dill_script import LARGE_CONTAINER
from distex_zmq.memmaps import memmap_reduce
from distex_zmq.pickle_culprit import culprit
from distex_zmq.script_objects import dill_data_dumps, dill_dumps, dill_loads, dumps_by_value
from distex_zmq.script_refs import RefCollector, ScriptRefs
from distex_zmq.serialization import (
    OOB_THRESHOLD,
    FunctionCache,
    ScriptGuess,
    call_out_of_band,
    data_pickle_module,
    dumps,
    function_loads,
    loads,
    results_dumper,
)
from distex_zmq.tasks import TaskMaker
from distex_zmq.wire import frames as p
from distex_zmq.wire.frames import FUNCTION_CACHE
from tests import prop_tasks, tasks
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)

PICKLE_TYPES = list(PickleType)
#: PickleType.auto is for data only
FUNC_PICKLE_TYPES = [t for t in PickleType if t != PickleType.auto]


def test_pickle_type_values_are_those_of_distex():
    assert [(t.name, int(t)) for t in PickleType] == [
        ("pickle", 0),
        ("cloudpickle", 1),
        ("dill", 2),
        ("auto", 3),
    ]


@pytest.mark.parametrize("func_pickle", FUNC_PICKLE_TYPES, ids=lambda t: f"func-{t.name}")
@pytest.mark.parametrize("data_pickle", PICKLE_TYPES, ids=lambda t: f"data-{t.name}")
def test_every_combination_of_pickle_types(func_pickle, data_pickle, make_pool):
    data = {"ints": list(range(10)), "text": "héllo", "nested": ({1, 2}, b"\x00\xff")}
    pool = make_pool(1, func_pickle=func_pickle, data_pickle=data_pickle)
    assert pool.run(tasks.identity, data) == data
    assert list(pool.map(tasks.add, range(10), range(10), chunksize=3)) == [
        2 * i for i in range(10)
    ]
    # the error of an input in a chunk, found in the chunk's pickled results
    results = []
    with pytest.raises(ValueError, match="bad input 4"):
        for result in pool.map(tasks.fail_on, range(10), [4] * 10, chunksize=3):
            results.append(result)
    assert results == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="bad input 3") as info:
        pool.run(tasks.fail_on, 3)
    assert isinstance(info.value.__cause__, RemoteException)
    array = np.arange(200_000, dtype=np.int64)  # above the out-of-band threshold
    assert np.array_equal(pool.run(tasks.array_plus_one, array), array + 1)


@pytest.mark.parametrize("func_pickle", [PickleType.cloudpickle, PickleType.dill])
def test_lambda_and_closure_as_function(func_pickle, make_pool):
    offset = 100

    def closure(x):
        return x + offset

    pool = make_pool(1, func_pickle=func_pickle)
    assert pool.run(lambda x: x * 3, 5) == 15
    assert list(pool.map(lambda x, y: x - y, range(5), range(5, 10))) == [-5] * 5
    assert pool.submit(closure, 1).result() == 101
    assert list(pool.map(closure, range(3), chunksize=2)) == [100, 101, 102]


def test_lambda_with_plain_pickle_fails_in_the_caller(make_pool):
    pool = make_pool(1, func_pickle=PickleType.pickle)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.submit(lambda x: x, 1).result(timeout=0)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        list(pool.map(lambda x: x, [1]))
    assert pool.run(tasks.square, 3) == 9


def test_a_function_the_worker_cannot_import_fails_with_what_to_do(
    tmp_path, monkeypatch, make_pool
):
    pool = make_pool(1, func_pickle=PickleType.pickle)
    pool.run(tasks.square, 1)  # started: the workers' sys.path is fixed now
    (tmp_path / "client_only.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import client_only

    for _ in range(2):  # the second time the worker knows the function is broken
        with pytest.raises(SerializationError) as info:
            pool.run(client_only.triple, 1)
        text = str(info.value)
        assert "could not unpickle" in text and "client_only" in text
        assert "could not unpickle the function of task" in text
        assert "that this worker cannot import: install that module" in text
        assert "PYTHONPATH in the environment of the spawner" in text
        # what the local workers have: sys.path changed later does not reach them
        assert "local workers: the client's sys.path when the pool started" in text
    assert pool.run(tasks.square, 3) == 9


def test_a_class_the_client_set_on_a_module_at_run_time_fails_with_what_to_do(
    make_pool, monkeypatch
):
    # a class that the client made on an importable module at run time (a
    # script's deap creator.create, a namedtuple with module=) goes by name,
    # and the worker's module, imported fresh, lacks it: the error said to
    # install the module, which the worker had; it says to make the class in
    # the initializer, which makes the task run
    monkeypatch.setattr(tasks, "RunTimePoint", None, raising=False)  # gone after the test
    tasks.make_run_time_point()
    point = tasks.RunTimePoint(1, 2)
    pool = make_pool(1)
    with pytest.raises(SerializationError) as info:
        pool.run(tasks.identity, point)
    text = str(info.value)
    assert "could not unpickle the arguments of task" in text and "RunTimePoint" in text
    assert "imports but that has no such attribute there" in text
    assert "set it in the workers too, in the pool's initializer" in text
    assert "install that module" not in text
    pool = make_pool(1, initializer=tasks.make_run_time_point)
    assert pool.run(tasks.identity, point) == point


def test_an_error_of_an_objects_own_unpickling_has_no_hint_about_imports(shared_pool):
    # an AttributeError that is not a name looked up says only what it is
    with pytest.raises(SerializationError) as info:
        shared_pool.run(tasks.square, tasks.BreaksOnLoad())
    text = str(info.value)
    assert "could not unpickle the arguments of task" in text
    assert "AttributeError: BreaksOnLoad has no field 'size'" in text
    assert "cannot import" not in text
    assert shared_pool.run(tasks.square, 3) == 9


def test_a_pool_cannot_be_pickled_nor_used_by_its_own_tasks(shared_pool):
    with pytest.raises(TypeError, match="a Pool cannot be pickled"):
        pickle.dumps(shared_pool)
    pool = shared_pool
    # dill (the default func_pickle) takes the globals and closure cells along
    with pytest.raises(TypeError, match="a task cannot use the pool that runs it"):
        pool.submit(lambda: pool.total_workers()).result(timeout=0)
    assert shared_pool.run(tasks.square, 2) == 4


@pytest.mark.parametrize("data_pickle", [PickleType.auto, PickleType.cloudpickle, PickleType.dill])
def test_lambda_as_data(data_pickle, make_pool):
    pool = make_pool(1, data_pickle=data_pickle)
    assert pool.run(tasks.apply, lambda x, y: x * y, 6, 7) == 42
    func = pool.run(tasks.identity, lambda: "made in the client")
    assert func() == "made in the client"


def test_lambda_as_data_with_explicit_plain_pickle_fails_in_the_caller(make_pool):
    pool = make_pool(1, data_pickle=PickleType.pickle, lazy_create=True)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.submit(tasks.apply, lambda: 1).result(timeout=0)


@pytest.mark.parametrize("func_pickle", FUNC_PICKLE_TYPES, ids=lambda t: t.name)
def test_a_worker_loads_what_the_function_cache_pickled(func_pickle):
    # with dill, standard pickle sends importable functions and the worker
    # loads them without dill; dill sends the rest and the worker uses it
    cache = FunctionCache(func_pickle)
    load = function_loads(func_pickle)
    funcs = [tasks.identity, functools.partial(tasks.add, 1)]
    if func_pickle != PickleType.pickle:  # what only dill or cloudpickle send
        funcs += [lambda x: x + 1, _LocalScaler(3).scale]
    for func in funcs:
        _, pickled = cache.get(func)
        assert load(memoryview(pickled))(2) == func(2)


def test_function_loads_refuses_an_unknown_pickle_type():
    with pytest.raises(ValueError, match="unknown PickleType 7"):
        function_loads(7)


def test_function_is_pickled_once_per_pool(shared_pool):
    func = tasks.CountingCallable()
    tasks.CountingCallable.pickles = 0
    assert list(shared_pool.map(func, range(50))) == [2 * i for i in range(50)]
    assert [shared_pool.submit(func, i).result() for i in range(10)] == [2 * i for i in range(10)]
    assert list(shared_pool.map(func, range(30), chunksize=7)) == [2 * i for i in range(30)]
    assert shared_pool.run_on_all(func, 4) == [8, 8]
    assert tasks.CountingCallable.pickles == 1


class _LocalScaler:
    """As tasks.Scaler, of a class that a worker cannot import (dill sends it)."""

    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return self.factor * x


_LocalScaler.__module__ = "__main__"


@pytest.mark.parametrize("make", [tasks.Scaler, _LocalScaler], ids=["importable", "__main__"])
def test_a_bound_method_runs_with_its_object_as_it_is_when_submitted(shared_pool, make):
    scaler = make(2)
    assert shared_pool.run(scaler.scale, 5) == 10
    assert list(shared_pool.map(scaler.scale, range(3))) == [0, 2, 4]
    scaler.factor = 3
    assert shared_pool.run(scaler.scale, 5) == 15
    assert shared_pool.submit(scaler.scale, 1).result() == 3
    assert list(shared_pool.map(scaler.scale, range(3))) == [0, 3, 6]


class _LockHolder:
    """An object of a class of the script that holds locks."""

    def __init__(self):
        self.rlock = threading.RLock()
        self.lock = threading.Lock()

    def take(self):
        """Whether each lock is free here (without waiting)."""
        return self.rlock.acquire(blocking=False), self.lock.acquire(blocking=False)


_LockHolder.__module__ = "__main__"


def test_locks_sent_with_dill_arrive_unlocked(make_pool):
    # dill alone makes an unlocked RLock again held by no thread (a task that
    # takes it waits for ever), one held held by a thread of the client (in
    # another process it does not unpickle), and a held Lock held
    free, held = _LockHolder(), _LockHolder()
    held.rlock.acquire()
    held.lock.acquire()
    for holder in (free, held):
        again = dill_loads(dill_data_dumps(holder, 5))
        assert again.take() == (True, True)
        assert again.rlock.acquire(blocking=False)  # reentrant: its own thread holds it
    # the same lock twice is one lock
    pair = dill_loads(dill_dumps((free.lock, free.lock), 5))
    assert pair[0] is pair[1]
    # in a worker: as data, and as the object of a bound method
    pool = make_pool(1, data_pickle=PickleType.dill)
    take = operator.methodcaller("take")
    assert pool.run(tasks.apply, take, free) == (True, True)
    assert pool.run(tasks.apply, take, held) == (True, True)
    assert pool.run(held.take) == (True, True)
    # the client's own locks are as they were
    assert not free.lock.locked() and held.lock.locked()
    held.rlock.release()
    held.lock.release()


def test_an_unhashable_callable_runs(shared_pool):
    func = tasks.Unhashable()
    assert shared_pool.run(func, 1) == 2
    assert list(shared_pool.map(func, range(3))) == [1, 2, 3]


def test_the_pool_does_not_keep_what_it_ran_alive(shared_pool):
    scaler = tasks.Scaler(2, payload=bytes(10_000_000))
    collected = threading.Event()
    ref = weakref.ref(scaler, lambda _: collected.set())
    assert shared_pool.run(scaler.scale, 1) == 2
    assert list(shared_pool.map(scaler.scale, range(3))) == [0, 2, 4]
    del scaler
    gc.collect()
    assert collected.is_set() and ref() is None


def test_an_unchanged_bound_method_reaches_a_worker_once(make_pool):
    scaler = tasks.Scaler(2)
    pool = make_pool(1)
    before = pool.run(tasks.worker_function_count)
    assert [pool.run(scaler.scale, i) for i in range(20)] == [2 * i for i in range(20)]
    assert pool.run(tasks.worker_function_count) == before + 1
    scaler.factor = 3  # a new pickle: sent again
    assert pool.run(scaler.scale, 1) == 3
    assert pool.run(tasks.worker_function_count) == before + 2


def test_a_finished_task_lets_go_of_its_arguments(shared_pool):
    # its buffers are views of the array (no copy): while the future is
    # held, the task must not keep them, nor so the array, alive
    array = np.arange(1_000_000)
    ref = weakref.ref(array)
    future = shared_pool.submit(len, array)
    del array
    assert future.result() == 1_000_000
    # pyzmq lets go of a frame sent without a copy from a thread of its own,
    # once libzmq is done with it: soon after the result, not before it
    assert wait_until(lambda: gc.collect() >= 0 and ref() is None), (
        "a finished task still holds its argument"
    )


def test_a_worker_keeps_only_the_recent_functions(make_pool):
    def adder(k):
        return lambda x: x + k

    funcs = [adder(k) for k in range(FUNCTION_CACHE + 100)]  # a new function per call
    pool = make_pool(1)
    futures = [pool.submit(f, 1) for f in funcs]
    assert [f.result() for f in futures] == [1 + k for k in range(len(funcs))]
    held = pool.run(tasks.worker_function_count)
    assert FUNCTION_CACHE - 5 <= held <= FUNCTION_CACHE
    # the oldest were dropped by the worker: the broker knows and sends them again
    again = [pool.submit(f, 2) for f in funcs[:50]]
    assert [f.result() for f in again] == [2 + k for k in range(50)]
    assert pool.run(tasks.worker_function_count) <= FUNCTION_CACHE


def test_closures_that_capture_much_data_are_let_go(make_pool):
    def reader(blob):
        return lambda i: blob[i]

    blobs = [bytes([k]) * (8 * 2**20) for k in range(20)]
    funcs = [reader(blob) for blob in blobs]  # each pickle is 8 MiB
    pool = make_pool(1)
    assert [pool.submit(f, 5).result() for f in funcs] == list(range(20))
    # by bytes, not by count: about 64 MiB of them on either side
    assert 2 <= pool.status().totals.functions_cached <= 8
    assert 2 <= pool.run(tasks.worker_function_count) <= 9  # + worker_function_count
    # dropped ones are pickled and sent again
    assert [pool.submit(f, 7).result() for f in funcs[:3]] == [0, 1, 2]


@pytest.mark.parametrize("data_pickle", PICKLE_TYPES, ids=lambda t: f"data-{t.name}")
def test_a_worker_pickles_scalar_results_to_the_bytes_dumps_makes(data_pickle):
    # scalar results skip dumps' layers in the worker: the pickle must not change
    loop = asyncio.new_event_loop()
    runner = Runner(PickleType.pickle, data_pickle, loop, lambda: None, lambda frames: None)
    runner.functions.add(1, tasks.identity, 0)
    data_dumps = data_pickle_module(data_pickle).dumps
    values = [0, -1, 7, 2**70, -(2**70), 1.5, float("nan"), True, False, None]
    try:
        for task_id, value in enumerate(values, 1):
            runner.run(task_id, 1, 0, None, pickle.dumps(value), [])
            results = runner.take_results()
            assert results.inline == [dumps(value, data_dumps)[0]]
            assert results.frames == []
    finally:
        loop.close()


def test_large_buffers_travel_out_of_band_without_a_copy():
    array = np.arange(1_000_000, dtype=np.float64)
    data, buffers = dumps(array)
    assert len(data) < 1000, "the array's data went into the pickle"
    assert len(buffers) == 1
    assert memoryview(buffers[0]).nbytes == array.nbytes
    # the buffer is the array's own memory, not a copy
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), array)
    back = loads(data, buffers)
    assert np.shares_memory(back, array)
    # small ones stay in band
    small = np.arange(OOB_THRESHOLD // 16, dtype=np.float64)
    data, buffers = dumps(small)
    assert buffers == []
    assert np.array_equal(loads(data, buffers), small)


@pytest.mark.parametrize("data_pickle", PICKLE_TYPES, ids=lambda t: f"data-{t.name}")
def test_large_arrays_travel_out_of_band_with_every_data_pickle(data_pickle, make_pool):
    data_dumps = data_pickle_module(data_pickle).dumps
    array = np.arange(1_000_000, dtype=np.float64)
    array.flags.writeable = False
    for obj in (array, (1, array), {"deeper": [array]}):
        data, buffers = dumps(obj, data_dumps)
        assert len(data) < 1000, "the array's data went into the pickle"
        assert len(buffers) == 1
        assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), array)
    # the task gets it read-only, as it was in the caller
    pool = make_pool(1, data_pickle=data_pickle)
    assert pool.run(tasks.array_checksum, array) == (
        array.nbytes,
        float(array[::4096].sum()),
        False,
    )


@pytest.mark.timeout(90)
def test_100_mb_numpy_array_round_trip(shared_pool):
    array = np.random.default_rng(1).random(100 * 2**20 // 8)
    assert array.nbytes == 100 * 2**20
    nbytes, checksum, _ = shared_pool.run(tasks.array_checksum, array)
    assert nbytes == array.nbytes
    assert checksum == pytest.approx(float(array[::4096].sum()))
    echoed = shared_pool.run(tasks.array_echo, array)
    assert echoed.dtype == array.dtype and echoed.shape == array.shape
    assert np.array_equal(echoed, array)
    assert not np.shares_memory(echoed, array)
    plus = shared_pool.run(tasks.array_plus_one, array)
    assert np.array_equal(plus, array + 1)


def test_bytes_and_bytearray_round_trip(shared_pool):
    big = bytes(range(256)) * 40_000  # 10 MB
    assert shared_pool.run(tasks.bytes_len, big) == len(big)
    echoed = shared_pool.run(tasks.identity, big)
    assert type(echoed) is bytes and echoed == big
    array = shared_pool.run(tasks.identity, bytearray(big))
    assert type(array) is bytearray and array == bytearray(big)
    array[0] ^= 1  # a bytearray of its own, writable
    assert array[0] != big[0]
    # large bytes deeper down take the usual in-band path
    nested = shared_pool.run(tasks.identity, {"a": [big, bytearray(b"xy") * 20_000]})
    assert nested == {"a": [big, bytearray(b"xy") * 20_000]}
    assert type(nested["a"][1]) is bytearray


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_arguments_and_results_travel_out_of_band(kind):
    big = kind(b"0123456789abcdef" * (OOB_THRESHOLD // 8))
    for obj in (big, (big,), (1, big, "x")):
        data, buffers = dumps(obj)
        assert len(data) < 1000, "the bytes went into the pickle"
        assert len(buffers) == 1 and memoryview(buffers[0]).nbytes == len(big)
        # sent without a copy: the buffer is the object's own memory
        assert memoryview(buffers[0]).obj is big
        back = loads(data, [bytes(b) for b in buffers])
        assert back == obj
        assert type(back if obj is big else back[obj.index(big)]) is kind
    # small ones and the other pickle modules keep working alike
    assert loads(*dumps((kind(b"small"),))) == (kind(b"small"),)
    import dill

    data, buffers = dumps((big,), dill.dumps)
    assert len(buffers) == 1 and loads(data, buffers, dill.loads) == (big,)


def test_large_bytes_cross_the_client_with_one_copy_on_arrival_and_none_on_sending(shared_pool):
    """What the client allocates in Python (pickles, frames' copies, results)
    for a 10 MiB argument and its echo: no copy of the argument while its
    task is in flight; one copy, the result, when it comes back (a pool
    owes its caller a ``bytes`` of its own), whatever the API."""
    big = bytes(range(256)) * 40_960
    shared_pool.run(tasks.identity, big)  # the function is sent once, before

    def allocated(call):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            result = call()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return result, current - base, peak - base

    # sending: while the task is in flight, nothing holds a copy of it
    future, held, _ = allocated(lambda: shared_pool.submit(tasks.sleep_return, 0.5, big))
    assert held < len(big) // 4
    assert future.result() == big
    # arriving: the result is the one copy, for each API
    for call in (
        lambda: shared_pool.run(tasks.identity, big),
        lambda: shared_pool.submit(tasks.identity, big).result(),
        lambda: next(iter(shared_pool.map(tasks.identity, [big]))),
    ):
        echoed, held, peak = allocated(call)
        assert echoed == big and type(echoed) is bytes
        assert len(big) <= held and peak < 1.5 * len(big)


def test_a_map_hands_large_results_that_arrived_together_over_one_at_a_time(shared_pool):
    """Results that wait together are decoded as the caller takes them, not
    all at once: a caller that drops each one holds one at a time (which
    lets malloc reuse its memory for the next)."""
    big = bytes(range(256)) * 40_960
    shared_pool.run(tasks.sleep_return, 0, big)  # the function is sent once, before
    # the first result comes last: the other three wait for it
    it = shared_pool.map(tasks.sleep_return, [0.5, 0, 0, 0], [big] * 4, chunksize=1)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(4):
            echoed = next(it)
            assert echoed == big and type(echoed) is bytes
            del echoed
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(big) <= peak < 1.5 * len(big)
    assert next(it, None) is None


def _worker_faults_per_page(pool, payload: bytes) -> float:
    """Minor page faults in the workers per page of payload, in a map of
    echoes with two in flight per worker: the median of 5 maps of 8, as
    one that a loaded machine piles up in a worker may fault anyway."""
    list(pool.map(tasks.identity, [payload] * 4, chunksize=1))  # warm up
    ratios = []
    for _ in range(5):
        before = sum(pool.run_on_all(tasks.minor_faults))
        for echoed in pool.map(tasks.identity, [payload] * 8, chunksize=1):
            assert len(echoed) == len(payload)
        faults = sum(pool.run_on_all(tasks.minor_faults)) - before
        ratios.append(faults / (8 * len(payload) / 4096))
    return statistics.median(ratios)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_workers_reuse_the_memory_of_large_payloads(make_pool, monkeypatch):
    """A worker keeps freed large blocks for the next payload, rather than
    taking fresh pages (a fault each) from the kernel for every one; a user
    who sets malloc's thresholds keeps them."""
    payload = bytes(range(256)) * 40_960
    pool = make_pool(2)
    # (with glibc's own thresholds, most payloads fault in all their pages)
    assert _worker_faults_per_page(pool, payload) < 0.3
    pool.shutdown()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(128 << 10))
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 << 10))
    assert _worker_faults_per_page(make_pool(2), payload) > 0.7


def test_large_bytes_keyword_arguments_travel_out_of_band(shared_pool):
    big = b"0123456789abcdef" * (OOB_THRESHOLD // 8)
    # how the pool pickles a call's arguments
    data, buffers = dumps(call_out_of_band((), {"x": big}))
    assert len(data) < 1000, "the bytes went into the pickle"
    assert [memoryview(b).obj for b in buffers] == [big]
    back = shared_pool.run(tasks.identity, x=bytearray(big))
    assert back == big and type(back) is bytearray
    assert shared_pool.run(tasks.identity, x=big) == big


@pytest.fixture
def memmap_file(tmp_path):
    """A 1 MB ``.npy`` file of float64 and its memmap, read-only."""
    path = tmp_path / "array.npy"
    np.save(path, np.arange(125_000, dtype=np.float64))
    return str(path), np.load(path, mmap_mode="r")


@pytest.mark.parametrize("data_pickle", PICKLE_TYPES, ids=lambda t: f"data-{t.name}")
def test_a_large_memmap_travels_as_a_plain_array_out_of_band(memmap_file, data_pickle):
    _, mm = memmap_file
    assert type(mm) is np.memmap and not mm.flags.writeable
    data_dumps = data_pickle_module(data_pickle).dumps
    data_loads = data_pickle_module(data_pickle).loads
    # as a result, as arguments (by position, by keyword), a view, and deeper
    # down (a joblib batch's), where dumps finds it in the pickle
    for obj, find in (
        (mm, lambda back: back),
        ((1, mm), lambda back: back[1]),
        (call_out_of_band((), {"x": mm}), lambda back: back[1]["x"]),
        (mm[1:], lambda back: back),
        ({"calls": [(mm, 2)]}, lambda back: back["calls"][0][0]),
    ):
        data, buffers = dumps(obj, data_dumps)
        assert len(data) < 1000, "the memmap's data went into the pickle"
        assert len(buffers) == 1
        # sent without a copy: the buffer is the file's mapped memory
        assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), mm)
        back = find(loads(data, [bytes(b) for b in buffers], data_loads))
        assert type(back) is np.ndarray and not back.flags.writeable
        assert np.array_equal(back, find(obj) if obj is not mm else mm)
    # a small one goes in the pickle, as pickle makes it: a memmap of no file
    small = mm[:100]
    data, buffers = dumps(small, data_dumps)
    assert buffers == []
    back = loads(data, buffers, data_loads)
    assert type(back) is np.memmap and np.array_equal(back, small)


@pytest.mark.parametrize("data_pickle", PICKLE_TYPES, ids=lambda t: f"data-{t.name}")
def test_memmap_arguments_and_results_arrive_as_plain_arrays(memmap_file, data_pickle, make_pool):
    """What the task and the caller get for a read-only memmap: a plain,
    read-only ``ndarray`` of its data (``ProcessPoolExecutor`` gives a
    writeable ``memmap`` of no file)."""
    path, mm = memmap_file
    total = float(mm.sum())
    pool = make_pool(1, data_pickle=data_pickle)
    expected = ("ndarray", False, total)
    assert pool.run(tasks.array_kind, mm) == expected
    assert pool.submit(tasks.array_kind, arr=mm).result() == expected
    assert list(pool.map(tasks.array_kind, [mm, mm[1:]])) == [expected, expected]
    for result in (
        pool.run(tasks.load_memmap, path),
        pool.submit(tasks.load_memmap, path, 1).result(),
    ):
        assert type(result) is np.ndarray and not result.flags.writeable
        assert np.array_equal(result, mm[len(mm) - len(result) :])


def test_a_script_function_that_reads_a_global_memmap_pickles_with_dill(memmap_file):
    # dill (the default func_pickle) failed on the mmap that a memmap holds
    _, mm = memmap_file
    namespace = {"__name__": "__main__", "MM": mm}
    exec("def total(i):\n    return type(MM).__name__, float(MM[i:].sum())\n", namespace)
    _, pickled = FunctionCache(PickleType.dill).get(namespace["total"])
    assert function_loads(PickleType.dill)(pickled)(1) == ("ndarray", float(mm[1:].sum()))


def test_unpicklable_argument_fails_the_future_of_submit(shared_pool):
    made = shared_pool.status().totals.tasks_submitted
    future = shared_pool.submit(tasks.identity, tasks.Unpicklable())
    with pytest.raises(pickle.PicklingError, match="refuses to be pickled"):
        future.result(timeout=0)
    with pytest.raises(pickle.PicklingError):
        shared_pool.run(tasks.identity, tasks.Unpicklable())
    future = shared_pool.submit(tasks.identity, x=__import__("threading").Lock())
    assert isinstance(future.exception(timeout=0), TypeError)
    assert "pickle" in str(future.exception())
    assert shared_pool.status().totals.tasks_submitted == made  # no task was made of them
    assert shared_pool.run(tasks.square, 3) == 9


def test_an_open_file_does_not_pickle_as_with_a_process_pool(shared_pool, tmp_path):
    # cloudpickle, which the default pickler falls back to, sent a text file
    # open for reading as an io.StringIO of what was left to read
    path = tmp_path / "lines.txt"
    path.write_text("one\ntwo\n")
    with open(path) as f:
        with pytest.raises(TypeError) as refused:
            pickle.dumps(f)  # pickle's own word, which differs between versions
        with pytest.raises(TypeError, match=re.escape(str(refused.value))):
            shared_pool.submit(tasks.identity, f).result(timeout=0)
    with pytest.raises(SerializationError, match="TextIOWrapper"):
        shared_pool.run(open, str(path))


def test_a_module_made_from_a_file_under_a_name_no_import_finds_is_named_as_such(
    shared_pool, tmp_path
):
    # a plugin loaded by path: a forked ProcessPoolExecutor has it, a worker
    # imports it by name in vain; the worker's advice (install it, add its
    # directory) did not say why the client has a module no worker finds
    import importlib.util

    path = tmp_path / "dzq_plugin_by_path.py"
    path.write_text("def plug(x):\n    return ('plugged', x)\n")
    spec = importlib.util.spec_from_file_location("dzq_plugin_by_path", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dzq_plugin_by_path"] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(SerializationError) as info:
            shared_pool.run(module.plug, 1)
    finally:
        del sys.modules["dzq_plugin_by_path"]
    assert "No module named 'dzq_plugin_by_path'" in str(info.value)
    assert (
        f"In the client, 'dzq_plugin_by_path' is a module made from {path} under a name "
        "that no import finds (importlib's spec_from_file_location, runpy.run_path)"
    ) in str(info.value)
    assert shared_pool.run(tasks.square, 3) == 9  # and the pool goes on


def test_a_memoryview_keeps_its_format_and_shape(shared_pool):
    # cloudpickle, which the default pickler falls back to, sent a memoryview
    # as its bytes: a view of int32 came as four bytes per item
    ints = memoryview(np.arange(6, dtype=np.int32).reshape(2, 3))
    back = shared_pool.run(tasks.identity, ints)
    assert isinstance(back, memoryview)
    assert (back.format, back.shape, back.tolist()) == ("i", (2, 3), [[0, 1, 2], [3, 4, 5]])
    strided = memoryview(np.arange(6, dtype=np.float64))[::2]
    assert shared_pool.run(tasks.identity, strided).tolist() == [0.0, 2.0, 4.0]
    # a format that memoryview.cast does not make comes as the bytes
    big_endian = memoryview(np.arange(2, dtype=">i4"))
    assert shared_pool.run(tasks.identity, big_endian) == big_endian.tobytes()


def _read_until_error(results):
    """The values a map yields before it raises, and what it raises."""
    values = []
    with pytest.raises(pickle.PicklingError, match="refuses to be pickled") as info:
        for value in results:
            values.append(value)
    return values, info.value


@pytest.mark.parametrize("good", [2, 300])
def test_an_unpicklable_input_raises_in_its_place_in_a_map(shared_pool, good):
    # as ProcessPoolExecutor: the results of the inputs before it, then its
    # error; 300 inputs go in chunks, and the one that holds it runs up to it
    inputs = [*range(good), tasks.Unpicklable(), 4]
    with concurrent.futures.ProcessPoolExecutor(1) as control:
        assert _read_until_error(control.map(tasks.identity, inputs))[0] == list(range(good))
    values, error = _read_until_error(shared_pool.map(tasks.identity, inputs))
    assert values == list(range(good))
    if sys.version_info >= (3, 11):  # add_note: the error says which input it was
        assert f"input #{good} of a map" in "".join(error.__notes__)
    assert list(shared_pool.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]
    assert shared_pool.run_on_all(tasks.square, 2) == [4, 4]


def test_an_unpicklable_input_raises_in_its_place_in_map_async(shared_pool):
    import asyncio

    async def main():
        values = []
        with pytest.raises(pickle.PicklingError):
            async for value in shared_pool.map_async(tasks.identity, [1, tasks.Unpicklable()]):
                values.append(value)
        assert values == [1]
        return await shared_pool.run_async(tasks.square, 4)

    assert asyncio.run(main()) == 16


def test_error_in_setstate_on_the_worker_is_a_serialization_error(pool):
    pids = set(pool.run_on_all(tasks.pid))
    with pytest.raises(SerializationError, match="could not unpickle") as info:
        pool.run(tasks.identity, tasks.BadSetstate())
    assert "setstate refuses" in str(info.value)
    with pytest.raises(SerializationError):
        list(pool.map(tasks.identity, [tasks.BadSetstate()]))
    # the workers keep working, and are the same processes
    assert pool.run(tasks.square, 4) == 16
    assert set(pool.run_on_all(tasks.pid)) == pids


def test_unpicklable_result_is_a_serialization_error(pool):
    pids = set(pool.run_on_all(tasks.pid))
    with pytest.raises(SerializationError, match="could not be pickled") as info:
        pool.run(tasks.return_lock)
    assert "lock" in str(info.value)
    with pytest.raises(SerializationError):
        pool.run(tasks.make_unpicklable)
    assert list(pool.map(tasks.square, range(4))) == [0, 1, 4, 9]
    assert set(pool.run_on_all(tasks.pid)) == pids


@pytest.mark.parametrize(
    "func, kind, items",
    [
        (tasks.count_up, "a generator", r"list\(f\(x\)\)"),
        (tasks.count_up_async, "an async generator", r"\[y async for y in f\(x\)\]"),
    ],
)
def test_a_generator_functions_result_says_to_return_its_items(shared_pool, func, kind, items):
    # it said to return data that pickles or give the class a __reduce__ method
    hint = rf"It is {kind}, as {kind} function's call returns without running it: .*{items}"
    with pytest.raises(SerializationError, match=hint):
        shared_pool.run(func, 3)
    with pytest.raises(SerializationError, match=hint):
        list(shared_pool.map(func, [3, 4], chunksize=2))
    assert shared_pool.run(tasks.square, 4) == 16


@pytest.mark.parametrize("func", [prop_tasks.lock_at, prop_tasks.lock_at_async])
@pytest.mark.parametrize("chunksize, n, bad", [(3, 9, 4), (7, 9, 4), (None, 3000, 1500)])
def test_an_unpicklable_result_in_a_chunk_fails_its_input_only(
    shared_pool, func, chunksize, n, bad
):
    # the inputs before it keep their results, as when an input raises (it
    # failed the whole chunk: the results of its inputs before it were lost)
    results = []
    with pytest.raises(SerializationError) as info:
        for y in shared_pool.map(func, itertools.repeat(bad), range(n), chunksize=chunksize):
            results.append(y)
    assert results == list(range(bad))
    # the error names the input, which the worker counted within its chunk
    name = func.__name__
    assert re.match(
        rf"task \d+ \({name}, input #{bad} of a map\) ran on .* but its result, of type "
        "lock, could not be pickled",
        str(info.value),
    ), info.value
    unordered = shared_pool.map(
        func, itertools.repeat(bad), range(n), chunksize=chunksize, ordered=False
    )
    got = set()
    with pytest.raises(SerializationError) as info:
        for y in unordered:
            got.add(y)
    assert info.value.index == bad
    assert got <= set(range(n)) - {bad}
    assert list(shared_pool.map(func, itertools.repeat(-1), range(n), chunksize=chunksize)) == list(
        range(n)
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_an_unpicklable_result_in_a_piece_of_a_chunk_names_its_input(shared_pool, ordered):
    # a chunk that runs past its budget sends its results in pieces, each
    # counted from its own first input: the error names the map's input
    results = []
    with pytest.raises(SerializationError) as info:
        for y in shared_pool.map(
            tasks.slow_lock_at, itertools.repeat(7), range(10), chunksize=10, ordered=ordered
        ):
            results.append(y)
    assert "(slow_lock_at, input #7 of a map) ran on" in str(info.value), info.value
    assert info.value.index == 7
    assert sorted(results) == list(range(7)) if ordered else set(results) <= set(range(10))


def test_unpicklable_exception_keeps_its_text_and_traceback(shared_pool):
    with pytest.raises(SerializationError, match="UnpicklableError: holds a lock") as info:
        shared_pool.run(tasks.raise_unpicklable_error)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert "raise_unpicklable_error" in str(cause)


def test_an_exception_whose_init_takes_other_arguments_is_raised_as_itself(shared_pool):
    # pickle.loads(pickle.dumps(DiskError(28, "/data"))) raises TypeError
    # (ProcessPoolExecutor breaks its pool on it): the worker sends it to be
    # rebuilt without its __init__, so that `except DiskError` catches it
    with pytest.raises(tasks.DiskError, match="^code 28 on /data$") as info:
        shared_pool.run(tasks.raise_disk_error)
    assert (info.value.code, info.value.path) == (28, "/data")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert "raise_disk_error" in str(cause)
    values = []
    with pytest.raises(tasks.DiskError, match="^code 28 on /data$"):
        for value in shared_pool.map(tasks.disk_error_at, range(10), [5] * 10, chunksize=10):
            values.append(value)
    assert values == [0, 1, 2, 3, 4]
    with pytest.raises(tasks.DiskError):
        asyncio.run(shared_pool.run_async(tasks.async_disk_error_at, 3, 3))
    assert shared_pool.run(tasks.square, 3) == 9


@pytest.mark.parametrize("data_pickle", ["pickle", "auto", "cloudpickle", "dill"])
def test_an_exception_whose_init_takes_other_arguments_travels_as_data(data_pickle, make_pool):
    # DiskError(28, "/data") pickles as DiskError("code 28 on /data"), which
    # its __init__ refuses (ProcessPoolExecutor breaks its pool on it): as an
    # argument, a result, or in a list of results (errors collected, not
    # raised), it loads without its __init__, as itself
    pool = make_pool(1, data_pickle=data_pickle)
    error = tasks.DiskError(28, "/data")
    assert pool.run(tasks.disk_error_fields, error) == ("DiskError", 28, "/data", str(error))
    back = pool.run(tasks.identity, error)
    assert type(back) is tasks.DiskError and (back.code, back.path) == (28, "/data")
    assert back.args == error.args
    errors = pool.run(tasks.disk_errors, 3)
    assert [(type(e), e.code, e.path, str(e)) for e in errors] == [
        (tasks.DiskError, i, f"/data/{i}", f"code {i} on /data/{i}") for i in range(3)
    ]
    assert [e.code for e in pool.map(tasks.identity, [error] * 4, chunksize=2)] == [28] * 4
    # one whose __new__ refuses its args too fails as before, naming it
    with pytest.raises(SerializationError, match="could not unpickle the arguments"):
        pool.run(tasks.identity, tasks.NewArgsError(28, "/data"))
    assert pool.run(tasks.square, 3) == 9


def test_an_exception_that_holds_one_whose_init_takes_other_arguments_is_raised(shared_pool):
    # an ExceptionGroup of DiskError (or an exception with one in its args)
    # raised SerializationError: only the exception raised was rebuilt
    def check(error: BaseException) -> None:
        held = error.exceptions[0] if hasattr(error, "exceptions") else error.args[1]
        assert type(held) is tasks.DiskError and (held.code, held.path) == (28, "/data")

    wrapping = RuntimeError if sys.version_info < (3, 11) else ExceptionGroup  # noqa: F821
    with pytest.raises(wrapping) as info:
        shared_pool.run(tasks.wrapped_disk_error_at, 1, 1)
    check(info.value)
    values = []
    with pytest.raises(wrapping) as info:
        for value in shared_pool.map(tasks.wrapped_disk_error_at, range(6), [3] * 6, chunksize=6):
            values.append(value)
    assert values == [0, 1, 2]
    check(info.value)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", ["control", "pickle", "auto", "cloudpickle", "dill"])
def test_an_exception_of_the_script_whose_init_takes_other_arguments_travels_as_data(executor):
    # the same for a class of the script (__main__), which goes by value
    # (but with data_pickle="pickle", by name: as results only); the
    # control, ProcessPoolExecutor, breaks its pool on each
    args = ["control"] if executor == "control" else ["local", executor]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "scripts" / "script_errors.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("OK\n")


def test_an_exception_whose_pickle_does_not_load_keeps_its_text_and_traceback(shared_pool):
    # not even without its __init__: its __new__ takes other arguments too.
    # What the caller gets names the error, its text and where it came from
    with pytest.raises(SerializationError, match="NewArgsError: code 28 on /data") as info:
        shared_pool.run(tasks.raise_new_args_error)
    assert "could not be unpickled" in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert "raise_new_args_error" in str(cause)
    assert shared_pool.run(tasks.square, 3) == 9


def test_a_result_of_a_module_the_client_cannot_import_fails_with_what_to_do(shared_pool):
    # a worker that has a package the client lacks (a remote host's) returns
    # an object of it: the error names the module and says what to do
    for run in (
        lambda: shared_pool.run(tasks.of_a_worker_only_module),
        lambda: list(shared_pool.map(lambda _: tasks.of_a_worker_only_module(), range(3))),
    ):
        with pytest.raises(SerializationError) as info:
            run()
        text = str(info.value)
        assert "could not be unpickled in the client" in text
        assert "No module named 'worker_only'" in text
        assert "the client cannot import, but the worker could: install that module" in text
    assert shared_pool.run(tasks.square, 3) == 9


def test_a_result_of_a_class_the_worker_set_on_a_module_at_run_time_says_so(make_pool):
    # the client imports the module but has no such class: the error said
    # to install the module where the client runs, which it was
    assert not hasattr(tasks, "RunTimePoint")
    pool = make_pool(1)
    with pytest.raises(SerializationError) as info:
        pool.run(tasks.run_time_point_of_the_worker)
    text = str(info.value)
    assert "could not be unpickled in the client" in text and "RunTimePoint" in text
    assert "the client imports but that has no such attribute here" in text
    assert "set it in the client too" in text
    assert "install that module" not in text
    assert pool.run(tasks.square, 3) == 9


def test_an_exception_of_a_module_the_client_cannot_import_keeps_its_text_and_traceback(
    shared_pool,
):
    # the worker could unpickle it, the client cannot: the error names its
    # class and text, says what to do, and the remote traceback is its cause
    with pytest.raises(SerializationError) as info:
        shared_pool.run(tasks.raise_worker_only_error)
    text = str(info.value)
    assert "(raise_worker_only_error) raised worker_only.WorkerOnlyError: disk full" in text
    assert "install that module (the version the worker has) where the client runs" in text
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert "raise_worker_only_error" in str(cause)
    assert shared_pool.run(tasks.square, 3) == 9


def test_an_input_whose_error_does_not_load_fails_alone_in_its_chunk(shared_pool):
    # the other results of the chunk come, then its error in its place
    values = []
    with pytest.raises(SerializationError, match="NewArgsError: code 28 on /data") as info:
        for value in shared_pool.map(tasks.new_args_error_at, range(10), [5] * 10, chunksize=10):
            values.append(value)
    assert values == [0, 1, 2, 3, 4]
    assert "new_args_error_at" in str(info.value.__cause__)


def test_an_awaited_input_whose_error_does_not_load_fails_alone_in_its_chunk(shared_pool):
    values = []
    with pytest.raises(SerializationError, match="NewArgsError: code 28 on /data") as info:
        for value in shared_pool.map(tasks.async_new_args_error_at, range(6), [3] * 6, chunksize=6):
            values.append(value)
    assert values == [0, 1, 2]
    assert "(async_new_args_error_at, input #3 of a map) raised" in str(info.value)
    assert info.value.index == 3
    assert "new_args_error_at" in str(info.value.__cause__)
    assert shared_pool.run(tasks.square, 3) == 9


@pytest.mark.parametrize("bad", [2, 5])
def test_a_stop_iteration_of_a_chunks_input_fails_that_input(shared_pool, bad):
    # map() in the worker ends at it as at the end of the inputs; the chunk
    # handed the rest back for ever. As with ProcessPoolExecutor.map, the
    # caller's loop gets a RuntimeError from the StopIteration
    values = []
    with pytest.raises(RuntimeError, match="raised StopIteration") as info:
        for value in shared_pool.map(tasks.stop_at, range(6), [bad] * 6, chunksize=6):
            values.append(value)
    assert values == list(range(bad))
    assert isinstance(info.value.__cause__, StopIteration)
    assert "stop_at raised StopIteration in a chunk" in str(info.value.__cause__)
    assert shared_pool.run(tasks.square, 3) == 9


def test_run_async_of_a_stop_iteration_raises_runtime_error(shared_pool):
    # an asyncio future refuses a StopIteration (TypeError): the call waited for ever
    async def main() -> None:
        with pytest.raises(
            RuntimeError, match=r"task \d+ \(stop_at\) raised StopIteration"
        ) as info:
            await asyncio.wait_for(shared_pool.run_async(tasks.stop_at, 1, 1), 30)
        assert isinstance(info.value.__cause__, StopIteration)
        assert info.value.__cause__.value == 1

    asyncio.run(main())
    assert shared_pool.run(tasks.square, 3) == 9


def test_run_on_all_async_of_a_stop_iteration_raises_runtime_error(shared_pool):
    # asyncio.wrap_future refuses to copy a StopIteration: the await waited for ever
    async def main() -> None:
        with pytest.raises(
            RuntimeError, match=r"run_on_all\(stop_at\) raised StopIteration"
        ) as info:
            await asyncio.wait_for(shared_pool.run_on_all_async(tasks.stop_at, 1, 1), 30)
        assert isinstance(info.value.__cause__, StopIteration)
        assert await shared_pool.run_on_all_async(tasks.stop_at, 1, 2) == [1] * 2

    asyncio.run(main())


def test_remote_exception_pickles_to_the_original_with_its_traceback():
    try:
        tasks.raise_custom("local")
    except tasks.CustomError as e:
        proxy = RemoteException(e)
    back = pickle.loads(pickle.dumps(proxy))
    assert type(back) is tasks.CustomError
    assert str(back) == "local"
    assert isinstance(back.__cause__, RemoteException)
    assert "raise_custom" in str(back.__cause__)
    assert "Remote traceback" in str(back.__cause__)


def test_exception_classes_keep_their_attributes(shared_pool):
    with pytest.raises(KeyError) as info:
        shared_pool.run(tasks.raise_key_error)
    assert info.value.args == ("missing-key",)


def _script_function(value, closure=None):
    """A function made as the user's script makes one (its globals are a
    ``__main__`` module's), which travels by value; it reads ``value``, a
    global, and ``closure`` if given, a captured variable."""
    namespace = {"__name__": "__main__", "VALUE": value}
    if closure is None:
        exec("def read(i):\n    return VALUE[i]\n", namespace)
        return namespace["read"]
    exec("def make(held):\n    return lambda i: (VALUE[i], held[i])\n", namespace)
    return namespace["make"](closure)


def _data_with_refs(refs, obj, data_pickle=PickleType.auto):
    collector = RefCollector(refs)
    data, buffers = dumps(obj, data_pickle_module(data_pickle).dumps, collector)
    return data, buffers, collector.taken()


@pytest.mark.parametrize("data_pickle", [PickleType.auto, PickleType.cloudpickle, PickleType.dill])
def test_a_script_function_in_data_is_pickled_once_and_named_by_id(data_pickle):
    refs = ScriptRefs(
        itertools.count(1).__next__,
        max_size=3,
        max_bytes=4 << 20,
        by_dill=data_pickle == PickleType.dill,
    )
    big = bytes(range(256)) * 4096  # 1 MiB, a global of the function
    read = _script_function(big)
    data, buffers, taken = _data_with_refs(refs, (read, 1), data_pickle)
    [ref] = taken
    # the data names the function; its pickle, with the global, is the ref's
    assert len(data) + sum(len(b) for b in buffers) < 1000
    assert len(ref.data) > len(big)
    # a worker loads it with its loads for data
    assert loads(ref.data, ref.buffers, data_pickle_module(data_pickle).loads)(1) == big[1]
    # the worker counts the function, not the globals it brings
    assert ref.held < 10_000
    # met again: the same ref, not pickled again
    assert _data_with_refs(refs, [read, read], data_pickle)[2] == (ref,)
    assert refs.known(read) is ref
    # another object with the same pickle shares its id
    twin = _script_function(big)
    assert _data_with_refs(refs, (twin,), data_pickle)[2][0].ref_id == ref.ref_id
    # a closure's captured data counts for the worker
    closure = _script_function(b"x", closure=big)
    assert _data_with_refs(refs, (closure,), data_pickle)[2][0].held > len(big)


def _script_dataclass():
    """A dataclass made as the user's script makes one (``__main__``), which
    travels by value."""
    namespace = {"__name__": "__main__"}
    exec(
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Job:\n"
        "    n: int\n"
        "    def double(self):\n"
        "        return Job(2 * self.n)\n",
        namespace,
    )
    return namespace["Job"]


@pytest.mark.parametrize("data_pickle", [PickleType.auto, PickleType.cloudpickle, PickleType.dill])
def test_a_script_class_in_data_is_pickled_once_and_named_by_id(data_pickle):
    refs = ScriptRefs(itertools.count(1).__next__, by_dill=data_pickle == PickleType.dill)
    job = _script_dataclass()
    data, buffers, taken = _data_with_refs(refs, [job(i) for i in range(3)], data_pickle)
    [ref] = taken
    # the data names the class; its body, the methods' code, is the ref's
    assert b"double" not in data and b"double" in ref.data
    assert len(data) < len(ref.data)
    assert _data_with_refs(refs, (job(4), job), data_pickle)[2] == (ref,)
    # the client keeps the class while it keeps its pickle
    assert refs.known(job) is ref
    held = weakref.ref(job)
    del job
    gc.collect()
    assert held() is not None


def test_a_result_of_a_class_the_client_no_longer_has_says_so():
    # a worker sends a class that came by id back by its tracker id; the
    # client looks it up among its classes
    job = _script_dataclass()
    tracker = cloudpickle.cloudpickle._get_or_create_tracker_id(job)
    assert script_rebuild.client_class("Job", tracker) is job
    with pytest.raises(RuntimeError, match="class Gone of the script, which this process no"):
        script_rebuild.client_class("Gone", "0" * 32)


@pytest.mark.timeout(60)
def test_results_of_a_script_class_defined_again_are_each_of_the_class_its_task_took(shared_pool):
    # two classes of the script by one name (the script defined it again):
    # each result is of the client's class that its argument was of, and
    # an enum's member comes back as the client's member itself
    first, again = _script_dataclass(), _script_dataclass()
    assert first is not again and first.__qualname__ == again.__qualname__
    futures = [
        shared_pool.submit(tasks.identity, cls(k)) for k in range(4) for cls in (first, again)
    ]
    assert [type(f.result()) for f in futures] == [first, again] * 4
    assert [f.result().n for f in futures] == [k for k in range(4) for _ in range(2)]
    namespace = {"__name__": "__main__"}
    exec("import enum\nclass Mode(enum.Enum):\n    ON = 1\n    OFF = 2\n", namespace)
    mode = namespace["Mode"]
    assert shared_pool.submit(tasks.identity, [mode.ON, mode.OFF]).result() == [mode.ON, mode.OFF]
    assert shared_pool.submit(tasks.identity, mode.OFF).result() is mode.OFF


def test_a_lock_among_a_script_functions_globals_goes_as_a_new_lock():
    # a lock among a script function's globals goes as a new one, unlocked,
    # as the script's import makes it in a worker of ProcessPoolExecutor
    # under spawn (cloudpickle refused it; dill sent it so already), and so
    # a partial of such a function goes by id, as any other does (a class's
    # lock: tests/scripts/script_globals.py, in workers)
    namespace = {"__name__": "__main__", "LOCK": threading.Lock()}
    exec("def guarded(x):\n    with LOCK:\n        return 2 * x\n", namespace)
    cache = FunctionCache(PickleType.dill)
    cache.collector = functools.partial(RefCollector, ScriptRefs(cache.new_id))
    _, _, taken = cache.get_with_refs(functools.partial(namespace["guarded"], 3))
    assert len(taken) == 1
    with namespace["LOCK"]:  # held in the client
        guarded = pickle.loads(dumps_by_value(namespace["guarded"], 5))
    assert guarded.__globals__["LOCK"] is not namespace["LOCK"]
    assert guarded(5) == 10  # its lock is not held
    # one passed as an argument still fails, as with ProcessPoolExecutor
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        dumps_by_value([namespace["LOCK"]], 5)


def _run_on(runner, task_id, func_id, func_pickle, data, buffers, flags=1):
    """Run a task (``FLAG_STAR``) on ``runner``; its result, or error."""
    runner.run(task_id, func_id, flags, func_pickle, data, buffers)
    [result] = runner.take_results().inline
    return pickle.loads(result)


def test_a_function_id_the_worker_does_not_hold_names_the_part_and_what_to_do(monkeypatch):
    # only a bug of the protocol (broker and worker disagreeing on what the
    # worker holds) gets here, so the Runner is given the client's own
    # pickles without the FLAG_REF entries that would bring the ids
    monkeypatch.setattr(script_rebuild, "held_objects", None)
    monkeypatch.setattr(script_rebuild, "script_namespace", None)
    refs = ScriptRefs(itertools.count(100).__next__)
    cache = FunctionCache(PickleType.dill)
    cache.collector = functools.partial(RefCollector, refs)
    read = _script_function(b"abc")
    func_id, func_pickle, [ref] = cache.get_with_refs(functools.partial(tasks.apply, read))
    data, buffers, taken = _data_with_refs(refs, (read, 1))
    assert taken == (ref,)
    loop = asyncio.new_event_loop()
    runner = Runner(PickleType.dill, PickleType.auto, loop, lambda: None, lambda frames: None)
    runner.share_script_globals()
    todo = "a bug of distex_zmq, not of the script. Please report it"
    try:
        # in the function's pickle
        error = _run_on(runner, 1, func_id, func_pickle, *dumps((1,)))
        assert "could not unpickle the function of task 1: ProtocolError" in str(error)
        assert f"function read of the script by id {ref.ref_id}" in str(error)
        assert todo in str(error)
        # in the arguments
        runner.functions.add(2, tasks.apply, 0)
        error = _run_on(runner, 2, 2, None, data, buffers)
        assert "could not unpickle the arguments of task 2: ProtocolError" in str(error)
        assert f"function read of the script by id {ref.ref_id}" in str(error)
        # the task's own function
        error = _run_on(runner, 3, 77, None, *dumps((1,)))
        assert "could not unpickle the function of task 3: ProtocolError" in str(error)
        assert "refers to its function by id 77" in str(error) and todo in str(error)
        # once the id came, both run
        runner.take_ref(ref.ref_id, ref.data, ref.buffers, ref.held)
        assert _run_on(runner, 4, 2, None, data, buffers) == ord("b")
        assert _run_on(runner, 5, func_id + 1, func_pickle, *dumps((2,))) == ord("c")
    finally:
        loop.close()


def test_the_client_keeps_the_pickles_of_the_recent_script_functions_only():
    refs = ScriptRefs(itertools.count(1).__next__, max_size=3, max_bytes=4 << 20)
    funcs = [_script_function(bytes([k]) * 1000) for k in range(5)]
    first = [_data_with_refs(refs, (f,))[2][0] for f in funcs]
    assert len({ref.ref_id for ref in first}) == 5
    assert len(refs) == 3  # by count
    assert refs.known(funcs[0]) is None and refs.known(funcs[4]) is first[4]
    # one let go is pickled anew, with its globals as they are then: the same
    # bytes keep the id they had
    assert _data_with_refs(refs, (funcs[3],))[2][0].ref_id == first[3].ref_id
    large = [_script_function(bytes([k]) * (3 << 20)) for k in range(3)]
    for f in large:
        _data_with_refs(refs, (f,))
    assert len(refs) == 1  # by bytes: but for the newest, 4 MiB


class _ScriptPoint:
    """An object of a class of the script (``__main__``), which goes by value."""

    def __init__(self, x):
        self.x = x


_ScriptPoint.__module__ = "__main__"


def test_the_by_value_pickler_looks_at_the_objects_of_a_type_once(monkeypatch):
    # it looks at every object but a few builtin ones for what it sends by
    # value; the first object of a type that needs none of that tells it so
    # for the others in the same pickle
    looked = []

    def counted(obj, protocol):
        looked.append(type(obj))
        return memmap_reduce(obj, protocol)

    monkeypatch.setattr(script_pickler, "memmap_reduce", counted)
    points = [_ScriptPoint(i) for i in range(100)]
    data = dumps_by_value([points, [{"x": i} for i in range(100)]], 5)
    assert len(looked) < 10
    back = pickle.loads(data)
    assert [p.x for p in back[0]] == list(range(100)) and back[1][99] == {"x": 99}
    assert type(back[0][0]) is _ScriptPoint  # the client's own class, by its tracker id


def _count_standard_pickles(monkeypatch) -> list[int]:
    """A list that ``PickleType.auto``'s standard pickle appends to at each try."""
    tried: list[int] = []

    def counted(*args, **kwargs):
        tried.append(1)
        return pickle.dumps(*args, **kwargs)

    monkeypatch.setattr(script_objects, "pickle", SimpleNamespace(dumps=counted))
    return tried


@pytest.mark.parametrize("dumper", ["inputs", "results"])
def test_auto_pickles_once_while_a_stream_holds_objects_of_the_script(monkeypatch, dumper):
    # standard pickle's try is skipped once an object of the stream needed
    # the by-value pickler, and made again once the stream holds plain data
    data_dumps = data_pickle_module(PickleType.auto).dumps
    if dumper == "results":
        data_dumps = results_dumper(data_dumps)
    tried = _count_standard_pickles(monkeypatch)
    guess = ScriptGuess()
    stream = [[_ScriptPoint(k), _ScriptPoint(-k)] for k in range(3)] + [[k, 1.5] for k in range(3)]
    pickled = [dumps(obj, data_dumps, guess=guess)[0] for obj in stream]
    assert len(tried) == 3  # the first of each kind, and the first plain one after it
    assert not guess.by_value
    assert pickled[5] == pickle.dumps(stream[5], 5)  # standard pickle's, as without a guess
    back = [pickle.loads(data) for data in pickled]
    assert [[point.x for point in obj] for obj in back[:3]] == [[k, -k] for k in range(3)]
    assert type(back[0][0]) is _ScriptPoint
    assert back[3:] == stream[3:]
    # an object that needs the by-value pickler again goes to it again
    dumps(stream[0], data_dumps, guess=guess)
    assert guess.by_value and len(tried) == 4


def test_a_map_pickles_its_inputs_once_while_they_hold_objects_of_the_script(monkeypatch):
    maker = TaskMaker(PickleType.dill, PickleType.auto, may_group=False)
    tried = _count_standard_pickles(monkeypatch)
    func = maker.function(tasks.identity)
    chunks = [[_ScriptPoint(k)] for k in range(3)] + [[float(k)] for k in range(3)]
    out: list = []
    maker.map_tasks(func, p.FLAG_CHUNK, chunks, None, 0, out, ScriptGuess())
    assert len(tried) == 3
    assert [task.data for task in out[4:]] == [pickle.dumps(c, 5) for c in chunks[4:]]
    assert b"script_ref" in out[1].data  # its class by id, as after a try of standard pickle


def test_the_calls_of_a_function_pickle_their_arguments_once_while_they_hold_objects_of_the_script(
    monkeypatch,
):
    # submit, run, run_async: each function's calls share a guess, as a map's inputs do
    maker = TaskMaker(PickleType.dill, PickleType.auto, may_group=False)
    tried = _count_standard_pickles(monkeypatch)
    made = [maker.call(tasks.identity, (_ScriptPoint(k),), {}, None) for k in range(3)]
    made += [maker.call(tasks.identity, (_ScriptPoint(k), [k]), {"key": k}, None) for k in range(3)]
    assert len(tried) == 1  # the first call's; the others go to the by-value pickler straight
    assert all(b"script_ref" in task.data for task in made)  # the class by id
    assert len(maker.call(tasks.square, (_ScriptPoint(0),), {}, None).data) > 0
    assert len(tried) == 2  # another function: a guess of its own
    plain = maker.call(tasks.identity, ([1.5],), {}, None)
    assert len(tried) == 2 and plain.data == pickle.dumps(([1.5],), 5)
    maker.call(tasks.identity, ([2.5],), {}, None)
    assert len(tried) == 3  # plain data again: standard pickle first again


@pytest.mark.timeout(120)
def test_a_map_whose_inputs_hold_objects_of_the_script_then_plain_data_returns_them(
    shared_pool,
):
    inputs = [_ScriptPoint(k) for k in range(40)] + [float(k) for k in range(40)]
    inputs += [_ScriptPoint(k) for k in range(40)]
    results = list(shared_pool.map(tasks.identity, inputs, chunksize=10))
    assert [type(r) for r in results] == [type(x) for x in inputs]
    assert [getattr(r, "x", r) for r in results] == [getattr(x, "x", x) for x in inputs]


def test_the_by_value_pickler_decides_per_object_where_the_object_tells():
    # an lru_cache function of the script goes by value, one of a module by
    # name: the type alone does not tell, whichever comes first
    namespace = {"__name__": "__main__"}
    exec(
        "import functools\n@functools.lru_cache(maxsize=8)\ndef sq(x):\n    return x * x\n",
        namespace,
    )
    script_sq = namespace["sq"]
    imported, by_value = pickle.loads(dumps_by_value([tasks.cached_square, script_sq], 5))
    assert imported is tasks.cached_square
    assert by_value is not script_sq and by_value(3) == 9
    assert by_value.cache_parameters()["maxsize"] == 8


class _Registered:
    """Of a class given a reducer with ``copyreg`` after distex_zmq is imported."""

    def __init__(self, value):
        self.value = value


def _registered_again(value):
    return _Registered(("reduced", value))


def test_the_by_value_pickler_takes_reducers_registered_with_copyreg_later():
    copyreg.pickle(_Registered, lambda obj: (_registered_again, (obj.value,)))
    try:
        back = pickle.loads(dumps_by_value([_Registered(1), _ScriptPoint(2)], 5))
    finally:
        del copyreg.dispatch_table[_Registered]
    assert back[0].value == ("reduced", 1) and back[1].x == 2


class _RegisteredLater:
    """Of a class that the by-value pickler meets before and after
    ``copyreg`` gets a reducer for it, and after that reducer is gone."""

    def __init__(self, value):
        self.value = value


def _registered_later_again(value):
    return _RegisteredLater(("reduced", value))


@pytest.mark.timeout(60)
def test_a_copyreg_reducer_applies_from_when_it_is_registered_to_when_it_is_removed(shared_pool):
    # the by-value pickler reads copyreg's table as it is at each pickle,
    # also for a type whose objects it pickled before: a task's argument
    # goes by the reducer while it is registered, by the class's own
    # reduction before and after
    def sent(value):
        args = [_RegisteredLater(value), _ScriptPoint(value)]
        back = pickle.loads(dumps_by_value(args, 5))
        result = shared_pool.submit(tasks.identity, args).result()
        assert type(result[1]) is _ScriptPoint  # by value, then back as the client's own
        assert back[0].value == result[0].value
        return result[0].value

    assert sent(1) == 1
    copyreg.pickle(_RegisteredLater, lambda obj: (_registered_later_again, (obj.value,)))
    try:
        assert sent(2) == ("reduced", 2)
    finally:
        del copyreg.dispatch_table[_RegisteredLater]
    assert sent(3) == 3


def test_cloudpickles_reducers_apply_to_each_object_and_before_copyregs():
    # cloudpickle's reducers (a mappingproxy's, a dict view's) apply to
    # every object of their types, not only to the first the pickler met,
    # and before a reducer that copyreg has for the same type
    copyreg.pickle(types.MappingProxyType, lambda obj: (dict, ((("copyreg's", 1),),)))
    try:
        for k in range(3):
            data = dumps_by_value([types.MappingProxyType({"k": k}), {"k": k}.keys()], 5)
            proxy, keys = pickle.loads(data)
            assert type(proxy) is types.MappingProxyType and dict(proxy) == {"k": k}
            assert list(keys) == ["k"]
    finally:
        del copyreg.dispatch_table[types.MappingProxyType]


def _module_of(name, source):
    """A module ``name`` made from ``source``, in ``sys.modules``."""
    module = types.ModuleType(name)
    exec(source, vars(module))
    sys.modules[name] = module
    return module


def test_the_by_value_pickler_looks_a_function_or_class_of_a_module_up_once(monkeypatch):
    # a task of dask or joblib names the same functions and classes of the
    # library in each pickle: cloudpickle looks each up by name once, not
    # once per pickle
    looked_up = []
    should = script_pickler._cloudpickle._should_pickle_by_reference

    def counted(obj, name=None):
        looked_up.append(obj)
        return should(obj, name)

    monkeypatch.setattr(script_pickler._cloudpickle, "_should_pickle_by_reference", counted)
    module = _module_of("_dzq_looked_up", "def f(x):\n    return x\nclass C:\n    pass\n")
    try:
        for _ in range(3):
            back = pickle.loads(dumps_by_value([module.f, module.C, _ScriptPoint(1)], 5))
            assert back[0] is module.f and back[1] is module.C and back[2].x == 1
    finally:
        del sys.modules["_dzq_looked_up"]
    assert looked_up.count(module.f) == 1 and looked_up.count(module.C) == 1


def test_a_function_of_a_module_rebound_since_its_last_pickle_goes_by_value():
    # pickled by name while it is its module's attribute, then by value once
    # the name holds another function, as cloudpickle finds it then
    module = _module_of("_dzq_rebound", "def f():\n    return 'old'\n")
    old = module.f
    try:
        assert pickle.loads(dumps_by_value(old, 5)) is old
        exec("def f():\n    return 'new'\n", vars(module))
        back = pickle.loads(dumps_by_value(old, 5))
        assert back is not module.f and back() == "old"
        assert pickle.loads(dumps_by_value(module.f, 5)) is module.f
    finally:
        del sys.modules["_dzq_rebound"]


def test_a_module_registered_by_value_after_a_pickle_goes_by_value():
    # register_pickle_by_value applies from the next pickle on, also to a
    # function and a class pickled by name before; by name again once
    # unregistered
    module = _module_of("_dzq_registered", "def f():\n    return 1\nclass C:\n    pass\n")
    try:
        assert pickle.loads(dumps_by_value([module.f, module.C], 5)) == [module.f, module.C]
        cloudpickle.register_pickle_by_value(module)
        try:
            f = pickle.loads(dumps_by_value(module.f, 5))
            assert f is not module.f and f() == 1
            # a class by value loads as the class it was made from in its own process
            by_value = dumps_by_value(module.C, 5)
            assert b"cloudpickle" in by_value or b"distex_zmq.script_rebuild" in by_value
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        assert pickle.loads(dumps_by_value([module.f, module.C], 5)) == [module.f, module.C]
    finally:
        del sys.modules["_dzq_registered"]


@pytest.mark.timeout(120)
def test_a_result_the_worker_changes_later_arrives_as_it_was_returned(shared_pool):
    # a task returns an array its worker keeps, and the next task on that
    # worker overwrites it: a result out of band must not be read from the
    # array after its task returned, as ProcessPoolExecutor's does not
    futures = [shared_pool.submit(tasks.fill_kept_array, i) for i in range(40)]
    for i, future in enumerate(futures):
        result = future.result()
        assert (result.min(), result.max()) == (i, i), f"result {i}"
    # one input per task: the results of a chunk's inputs are pickled together
    # (a chunk of ProcessPoolExecutor.map's too), so one object is one result
    for i, result in enumerate(shared_pool.map(tasks.fill_kept_array, range(40), chunksize=1)):
        assert (result.min(), result.max()) == (i, i), f"map result {i}"
    kept = shared_pool.map(tasks.fill_kept_bytearray, range(40), chunksize=1)
    for i, result in enumerate(kept):
        assert result == bytes([i]) * len(result), f"bytearray result {i}"


@pytest.mark.parametrize("func", [tasks.unloadable_at, tasks.worker_module_at])
@pytest.mark.parametrize("chunksize, n, bad", [(4, 12, 5), (None, 3000, 1500)])
@pytest.mark.parametrize("ordered", [True, False])
def test_a_result_that_does_not_unpickle_in_the_client_fails_its_input_only(
    shared_pool, func, chunksize, n, bad, ordered
):
    # a chunk's results load in one call; when that fails, they load one by
    # one: the other inputs of the chunk keep their results (it failed them all)
    results = []
    with pytest.raises(SerializationError) as info:
        for y in shared_pool.map(
            func, itertools.repeat(bad), range(n), chunksize=chunksize, ordered=ordered
        ):
            results.append(y)
    assert info.value.index == bad
    text = str(info.value)
    assert re.match(
        rf"the result of task \d+ \({func.__name__}, input #{bad} of a map\) could not be "
        "unpickled in the client: ",
        text,
    ), text
    if func is tasks.unloadable_at:
        assert "LoadsNowhere(1500)" in text or f"LoadsNowhere({bad})" in text
        assert "rebuilding it raised in the client" in text
    else:
        assert "No module named 'worker_only'" in text
    if ordered:
        assert results == list(range(bad))
    else:
        assert set(results) <= set(range(n)) - {bad}
        if chunksize == 4:  # the input before it, in its chunk, kept its result
            assert bad - 1 in results
    assert shared_pool.run(tasks.square, 3) == 9


def test_a_map_async_result_that_does_not_unpickle_fails_its_input_only(shared_pool):
    async def run():
        results = []
        with pytest.raises(SerializationError) as info:
            async for y in shared_pool.map_async(
                tasks.unloadable_at, itertools.repeat(2), range(8), chunksize=4
            ):
                results.append(y)
        return results, info.value

    results, error = asyncio.run(run())
    assert results == [0, 1]
    assert error.index == 2
    assert "(unloadable_at, input #2 of a map) could not be unpickled" in str(error)


@pytest.mark.parametrize("data_pickle", [PickleType.dill, PickleType.cloudpickle])
def test_a_result_that_does_not_unpickle_fails_its_input_only_with_each_pickler(
    make_pool, data_pickle
):
    pool = make_pool(1, data_pickle=data_pickle)
    results = []
    with pytest.raises(SerializationError) as info:
        for y in pool.map(tasks.worker_module_at, itertools.repeat(6), range(12), chunksize=4):
            results.append(y)
    assert results == list(range(6))
    assert info.value.index == 6
    assert "(worker_module_at, input #6 of a map) could not be unpickled" in str(info.value)


@pytest.mark.parametrize("ordered", [True, False])
def test_an_exception_the_client_cannot_import_in_a_chunk_fails_its_input_only(
    shared_pool, ordered
):
    # it keeps its class's name, its text and its traceback, as from submit
    results = []
    with pytest.raises(SerializationError) as info:
        for y in shared_pool.map(
            tasks.worker_only_error_at,
            itertools.repeat(5),
            range(12),
            chunksize=4,
            ordered=ordered,
        ):
            results.append(y)
    text = str(info.value)
    assert re.match(
        r"task \d+ \(worker_only_error_at, input #5 of a map\) raised "
        "worker_only.WorkerOnlyError: disk full; that exception could not be unpickled",
        text,
    ), text
    assert info.value.index == 5
    assert isinstance(info.value.__cause__, RemoteException)
    assert "raise_worker_only_error" in str(info.value.__cause__)
    assert 4 in results and 5 not in results


def test_a_large_container_in_a_function_goes_by_the_standard_pickler():
    # dill's pickler, written in Python, took 6 s for a script function's
    # table of a million strings (a partial's list of data: 1.5 s), where
    # the standard one takes a few hundredths
    table = {f"key {i}": f"value {i}" for i in range(5000)}
    rows = list(range(5000))
    held = {"table": table, "again": table, "rows": rows, "small": [1, 2]}
    data = dill_dumps(held, pickle.HIGHEST_PROTOCOL)
    # each large one is the standard pickle of it, within dill's
    assert pickle.dumps(table, pickle.HIGHEST_PROTOCOL) in data
    assert pickle.dumps(rows, pickle.HIGHEST_PROTOCOL) in data
    loaded = dill_loads(data)
    assert loaded == held
    assert loaded["table"] is loaded["again"]  # one object still
    # one that the standard pickler does not take goes through dill
    gen_rows = [(lambda i=i: i) for i in range(LARGE_CONTAINER)]
    again = dill_loads(dill_dumps(gen_rows, pickle.HIGHEST_PROTOCOL))
    assert [f() for f in again] == list(range(LARGE_CONTAINER))


_A_LOCK = threading.Lock()


def _uses_a_lock(x):
    with _A_LOCK:
        return x


class _HoldsALock:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 1

    def method(self, x):
        return x

    def __call__(self, x):
        return x


def test_the_part_of_a_function_that_does_not_pickle_is_named():
    # a pickler says which type failed, not where the function holds it
    gen = (i for i in range(3))
    dumps = pickle.dumps
    assert culprit(lambda: next(gen), dumps) == "its closure variable 'gen' (a generator)"
    assert culprit(_uses_a_lock, dumps) == "its global '_A_LOCK' (a lock)"
    assert culprit(functools.partial(abs, gen), dumps) == (
        "the partial's argument #0 (a generator)"
    )
    named = culprit(functools.partial(abs, x=gen), dumps)
    assert named == "the partial's argument x= (a generator)"
    assert culprit(_HoldsALock().method, dumps) == (
        "the object of the bound method (a _HoldsALock)"
    )
    assert culprit(_HoldsALock(), dumps) == "its attribute 'lock' (a lock)"
    assert culprit(lambda x=gen: x, dumps) == "its default #0 (a generator)"
    assert culprit(abs, dumps) == ""


@pytest.mark.parametrize("star", [False, True])
def test_an_input_that_does_not_unpickle_in_the_worker_fails_alone_in_its_chunk(shared_pool, star):
    # the whole chunk failed, blamed on its first input (#4), and the inputs
    # before the bad one lost their results
    inputs: list = list(range(12))
    inputs[6] = tasks.LoadsNowhere(6)
    results = []
    with pytest.raises(SerializationError) as info:
        if star:
            mapped = shared_pool.map(max, inputs, itertools.repeat(0), chunksize=4)
        else:
            mapped = shared_pool.map(abs, inputs, chunksize=4)
        for y in mapped:
            results.append(y)
    assert results == list(range(6))
    assert info.value.index == 6
    text = str(info.value)
    assert re.match(
        r"worker pid \d+ on \S+ could not unpickle the arguments of task \d+ "
        r"\((max|abs), input #6 of a map\): ValueError: LoadsNowhere\(6\) needs",
        text,
    ), text
    # the remote traceback shows where the load raised
    assert "in _refuse_to_load" in str(info.value.__cause__)


@pytest.mark.parametrize("how", ["attribute", "state"])
@pytest.mark.parametrize("chunksize", [None, 4])
def test_an_exception_that_does_not_unpickle_in_the_client_keeps_its_text_and_traceback(
    shared_pool, how, chunksize
):
    # one of a class the client has, with an attribute of a module only the
    # worker has, or whose __setstate__ raises in the client: the error said
    # "the result ... could not be unpickled", without the task's message
    # and traceback
    if chunksize is None:
        with pytest.raises(SerializationError) as info:
            shared_pool.run(tasks.raise_unloadable_in_client_at, 5, 5, how)
        start = r"task \d+ \(raise_unloadable_in_client_at\) raised "
    else:
        results = []
        with pytest.raises(SerializationError) as info:
            for y in shared_pool.map(
                tasks.raise_unloadable_in_client_at,
                range(12),
                itertools.repeat(5),
                itertools.repeat(how),
                chunksize=chunksize,
            ):
                results.append(y)
        assert results == list(range(5))
        assert info.value.index == 5
        start = r"task \d+ \(raise_unloadable_in_client_at, input #5 of a map\) raised "
    text = str(info.value)
    if how == "attribute":
        raised = "ValueError: bad response at 5; that exception could not be unpickled in "
        cause = "ModuleNotFoundError: No module named 'worker_only'"
    else:
        raised = "tests.tasks.ClientRefusesState: bad key 'timeout' at 5; that exception could "
        cause = "RuntimeError: this state loads in workers only"
    assert re.match(start + re.escape(raised), text), text
    assert cause in text and text.endswith("the remote traceback is the cause")
    assert isinstance(info.value.__cause__, RemoteException)
    assert "raise_unloadable_in_client_at" in str(info.value.__cause__)


@pytest.mark.parametrize("ordered", [True, False])
def test_a_result_that_does_not_unpickle_in_a_piece_of_a_chunk_names_its_input(
    shared_pool, ordered
):
    results = []
    with pytest.raises(SerializationError) as info:
        for y in shared_pool.map(
            tasks.slow_unloadable_at, itertools.repeat(7), range(10), chunksize=10, ordered=ordered
        ):
            results.append(y)
    assert "(slow_unloadable_at, input #7 of a map) could not be unpickled" in str(info.value)
    assert info.value.index == 7
    if ordered:
        assert results == list(range(7))
    else:
        assert set(results) <= set(range(10)) - {7}


def test_a_task_whose_result_does_not_unpickle_says_what_to_do(shared_pool):
    for get in (
        lambda: shared_pool.submit(tasks.unloadable_at, 1, 1).result(),
        lambda: shared_pool.run(tasks.unloadable_at, 1, 1),
        lambda: asyncio.run(shared_pool.run_async(tasks.unloadable_at, 1, 1)),
    ):
        with pytest.raises(SerializationError) as info:
            get()
        text = str(info.value)
        assert re.match(r"the result of task \d+ \(unloadable_at\) could not be unpickled", text)
        assert "LoadsNowhere(1) needs what only the worker has" in text
        assert "rebuilding it raised in the client" in text


@pytest.mark.parametrize("container", [list, tuple])
def test_a_chunk_loads_one_result_at_a_time_when_it_does_not_load_whole(container):
    # objects of one class share its memo entry: one that fails leaves the
    # others whole; one that refers to an object of the failed one fails too.
    # A chunk's results are a list; its inputs, which a worker loads so, a tuple
    bad = tasks.LoadsNowhere(2)
    day = datetime.date(2020, 1, 1)
    for loader, dumper in ((pickle.loads, None), (dill_loads, dill_data_dumps)):
        items = container([datetime.date(2020, 1, 2), bad, day, [bad], [day], "s", *range(3000)])
        data, buffers = dumps(items) if dumper is None else dumps(items, dumper)
        with pytest.raises(ValueError):
            loader(data)
        loaded = load_each(data, buffers, loader)
        assert loaded is not None
        assert [type(item).__name__ for item in loaded[:6]] == [
            "date",
            "Unloaded",
            "date",
            "Unloaded",
            "list",
            "str",
        ]
        assert loaded[2] == day and loaded[4] == [day]
        assert loaded[1].shared is None and loaded[3].shared == 1
        assert "LoadsNowhere(2)" in str(loaded[3].error)
        assert loaded[6:] == list(range(3000))
    # a tuple of up to three, made without a mark, of tuples (starred inputs)
    data, buffers = dumps(((1, 2), (bad,), ("x", day)))
    loaded = load_each(data, buffers, pickle.loads)
    assert loaded is not None and len(loaded) == 3
    assert loaded[0] == (1, 2) and loaded[2] == ("x", day)
    assert type(loaded[1]).__name__ == "Unloaded"
    # neither a list nor a tuple: not split
    assert load_each(*dumps({"a": [bad]}), pickle.loads) is None
    assert load_each(*dumps(frozenset({(1, 2)})), pickle.loads) is None


@pytest.mark.parametrize("data_pickle", list(PickleType))
def test_a_chunk_loaded_one_result_at_a_time_is_the_chunk_loaded_whole(data_pickle):
    # objects by value (a local class), shared and recursive ones, buffers
    # out of band, and more than one batch of the list's items
    class Local:
        def __init__(self, a):
            self.a = a

    shared = {"k": [1, 2]}
    inner: list = []
    recursive = (inner,)
    inner.append(recursive)
    items = [
        shared,
        datetime.date(2020, 1, 2),
        recursive,
        np.arange(10_000),
        b"x" * OOB_THRESHOLD,
        [shared, shared],
        "s",
        *range(2500),
    ]
    if data_pickle != PickleType.pickle:
        items[1:1] = [Local(1), Local(2)]
    module = data_pickle_module(data_pickle)
    data, buffers = dumps(items, module.dumps)
    whole = loads(data, buffers, module.loads)
    each = load_each(data, buffers, module.loads)
    assert each is not None and len(each) == len(whole)
    assert each[0] == whole[0]
    if data_pickle != PickleType.pickle:
        assert [local.a for local in each[1:3]] == [1, 2]
        # one class (each load of a class by value makes a class of its own)
        assert type(each[1]) is type(each[2])
        del each[1:3], whole[1:3]
    date, again, array, large, pair, *rest = each[1:]
    assert date == whole[1]
    assert type(again) is tuple and again[0][0] is again
    assert (array == whole[3]).all()
    assert large == whole[4]
    assert pair == [each[0], each[0]] and pair[0] is pair[1] is each[0]
    assert rest == whole[6:]


@pytest.mark.parametrize("data_pickle", [PickleType.pickle, PickleType.auto])
def test_a_result_or_argument_too_deep_to_pickle_says_so(data_pickle, make_pool):
    # it said to return data that pickles (not a lock, socket, open file or
    # generator) or give its class a __reduce__ method, as for a lock
    pool = make_pool(1, data_pickle=data_pickle)
    pid = pool.run(tasks.pid)
    hint = "nested too deeply to pickle.*return it flattened"
    with pytest.raises(SerializationError, match=hint) as result_info:
        pool.run(tasks.nested, 100_000)
    assert ".." not in str(result_info.value)
    with pytest.raises(SerializationError, match=hint):
        list(pool.map(tasks.nested, [2, 100_000, 3], chunksize=3))
    with pytest.raises((RecursionError, pickle.PicklingError)) as info:
        pool.submit(tasks.identity, tasks.nested(100_000)).result(timeout=0)
    if sys.version_info >= (3, 11):  # add_note
        notes = "".join(info.value.__notes__)
        assert "nested too deeply to pickle" in notes and "pass it flattened" in notes, notes
    assert pool.run(tasks.nested, 3) == [[[[]]]]
    assert pool.run(tasks.pid) == pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, /proc")
def test_a_result_that_runs_its_worker_out_of_memory_while_pickled_says_so(make_pool):
    # it said to return data that pickles (not a lock, ...), which it does
    pool = make_pool(1)
    pid = pool.run(tasks.pid)
    hint = "The worker ran out of memory while pickling it.*return it in smaller parts"
    with pytest.raises(SerializationError, match=hint) as info:
        pool.run(tasks.big_list_within_memory_limit, 16 << 20)
    assert "could not be pickled: MemoryError. The worker" in str(info.value)
    assert pool.run(tasks.lift_memory_limit) == pid
    assert pool.run(tasks.square, 3) == 9
