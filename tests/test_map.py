"""Pool.map: lazy input, zip, star, chunks, order, timeout, errors, early break."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import inspect
import itertools
import sys
import threading
import time
import weakref

import pytest
from distex_zmq.broker import Task

from distex_zmq import Pool, RemoteException
from distex_zmq.map_run import BYTES_AHEAD, HOLD_AHEAD, map_window
from distex_zmq.map_sizing import MAX_BATCH, ChunkSizer, RunTimes
from distex_zmq.wire import frames as p
from tests import tasks
from tests.helpers import wait_until

#: the credits of each worker of ``shared_pool``: ``Pool``'s default qsize
QSIZE = inspect.signature(Pool).parameters["qsize"].default

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("chunksize", [1, 3, 16, 1000])
def test_map_matches_builtin_map(shared_pool, chunksize):
    xs = list(range(-50, 150))
    assert list(shared_pool.map(tasks.square, xs, chunksize=chunksize)) == list(
        map(tasks.square, xs)
    )


def test_map_of_a_non_iterable_says_which_argument(shared_pool):
    with pytest.raises(TypeError, match="argument 2 must be an iterable or an async .*, not int"):
        shared_pool.map(tasks.add, range(3), 5)
    with pytest.raises(TypeError, match="argument 1 must be an iterable"):
        shared_pool.map_async(tasks.square, None)


def test_map_of_a_positional_chunksize_says_it_is_a_keyword(shared_pool):
    # multiprocessing.Pool.map(func, iterable, chunksize), as code written
    # for it calls the pool's map
    hint = r"chunksize is a keyword argument: map\(func, iterable, chunksize=4\)"
    with pytest.raises(TypeError, match=hint):
        shared_pool.map(tasks.square, range(3), 4)
    with pytest.raises(TypeError, match=hint):
        shared_pool.map_async(tasks.square, range(3), 4)
    with pytest.raises(TypeError) as error:
        shared_pool.map(tasks.add, range(3), None)
    assert "chunksize" not in str(error.value)


class _IterIsNone:
    __iter__ = None


class _NextOnly:
    def __next__(self):
        raise StopIteration


class _IterIsNoneWithGetitem:
    __iter__ = None

    def __getitem__(self, i):
        return i


class _GetitemOnly:
    def __getitem__(self, i):
        if i > 2:
            raise IndexError
        return i


class _NotIterableDict(dict):
    __iter__ = None


class _AsAttribute:
    """``__iter__`` on the instance: ``iter`` looks at the type only."""

    def __init__(self):
        self.__iter__ = lambda: iter(())


def _iter_accepts(obj):
    try:
        iter(obj)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize(
    "obj",
    [
        [1],
        "ab",
        {1: 2},
        iter([]),
        _GetitemOnly(),
        _IterIsNone(),
        _NextOnly(),
        _IterIsNoneWithGetitem(),
        _NotIterableDict(),
        _AsAttribute(),
        5,
    ],
    ids=lambda obj: type(obj).__name__,
)
def test_map_takes_what_iter_takes(shared_pool, obj):
    if _iter_accepts(obj):
        assert list(shared_pool.map(tasks.identity, obj)) == list(obj)
    else:
        with pytest.raises(TypeError, match="argument 1 must be an iterable"):
            shared_pool.map(tasks.identity, obj)


def test_map_of_empty_input_is_empty(shared_pool):
    assert list(shared_pool.map(tasks.square, [])) == []
    assert list(shared_pool.map(tasks.square, [], chunksize=10)) == []
    assert list(shared_pool.map(tasks.add, [], range(10))) == []


def test_map_returns_a_lazy_iterator(shared_pool):
    it = shared_pool.map(tasks.square, range(5))
    assert iter(it) is it
    assert next(it) == 0
    assert list(it) == [1, 4, 9, 16]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_a_list_changed_after_the_call_does_not_change_the_map(shared_pool, chunksize):
    # a batch list reused once the call returned: the map read it as it
    # went, lost the inputs not read yet in silence and mapped what came
    # next; Executor.map takes its inputs at the call
    def maps(executor, **kwargs):
        batch, kept = list(range(1000)), []
        for _ in range(3):
            kept.append(executor.map(tasks.square, batch, **kwargs))
            batch.clear()
            batch.extend(range(5))
        return [list(m) for m in kept]

    with concurrent.futures.ProcessPoolExecutor(2) as control:
        expected = maps(control, chunksize=chunksize or 1)
    assert expected == [[x * x for x in range(1000)], [0, 1, 4, 9, 16], [0, 1, 4, 9, 16]]
    assert maps(shared_pool, **({} if chunksize is None else {"chunksize": chunksize})) == expected


@pytest.mark.parametrize(
    "make", [list, collections.deque, dict.fromkeys, set, lambda xs: bytearray(xs)]
)
def test_map_async_takes_a_changeable_container_at_the_call(shared_pool, make):
    async def main():
        items = make(range(200))
        m = shared_pool.map_async(tasks.square, items)
        items.clear()
        return [r async for r in m]

    assert sorted(asyncio.run(main())) == [x * x for x in range(200)]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_several_iterables_are_zipped(shared_pool, chunksize):
    a, b, c = range(30), range(100, 125), [7] * 40  # the shortest ends it
    assert list(shared_pool.map(tasks.add3, a, b, c, chunksize=chunksize)) == list(
        map(tasks.add3, a, b, c)
    )


@pytest.mark.parametrize("chunksize", [1, 5])
def test_star_unpacks_like_starmap(shared_pool, chunksize):
    args = [(i, 2 * i) for i in range(33)]
    assert list(shared_pool.map(tasks.add, args, star=True, chunksize=chunksize)) == list(
        itertools.starmap(tasks.add, args)
    )
    # without star each tuple is one argument
    assert list(shared_pool.map(tasks.identity, args, chunksize=chunksize)) == args


def test_star_with_generator_of_tuples(shared_pool):
    gen = ((i, i, i) for i in range(20))
    assert list(shared_pool.map(tasks.add3, gen, star=True)) == [3 * i for i in range(20)]


def test_map_of_large_input_with_chunks(shared_pool):
    n = 20_000
    assert list(shared_pool.map(tasks.add, range(n), range(n), chunksize=500)) == [
        2 * i for i in range(n)
    ]


def test_unordered_yields_every_result(shared_pool):
    xs = list(range(40)) + list(range(10))  # with duplicates
    for chunksize in (1, 3):
        results = list(shared_pool.map(tasks.square, xs, ordered=False, chunksize=chunksize))
        assert collections.Counter(results) == collections.Counter(map(tasks.square, xs))


def test_unordered_yields_in_order_of_completion(pool):
    # the first input takes 1 s, the others 0.02 s: with 2 workers the quick
    # ones that are not stuck behind the slow one come out first
    delays = [1.0] + [0.02] * 5
    values = list(range(len(delays)))
    ordered = list(pool.map(tasks.sleep_return, delays, values))
    assert ordered == values
    unordered = list(pool.map(tasks.sleep_return, delays, values, ordered=False))
    assert sorted(unordered) == values
    assert unordered[0] != 0
    assert unordered.index(0) > 0


@pytest.mark.parametrize("chunksize", [1, None], ids=["chunksize=1", "adaptive"])
def test_unbounded_input_with_early_break(shared_pool, chunksize):
    pulled = 0

    def numbers():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    results = []
    for result in shared_pool.map(tasks.square, numbers(), chunksize=chunksize):
        results.append(result)
        if len(results) == 100:
            break
    assert results == [i * i for i in range(100)]
    # read lazily: a window of tasks in flight beyond what was yielded (of
    # single inputs, or of adaptive chunks of at most MAX_BATCH inputs), and
    # those answered out of order, which wait for an earlier one (at most
    # HOLD_AHEAD windows in all)
    capacity = shared_pool.status().configured_workers * QSIZE  # tasks the workers hold
    window = map_window(capacity) * (1 if chunksize else MAX_BATCH)
    assert pulled <= 100 + HOLD_AHEAD * window, f"map read {pulled} inputs to yield 100"
    # nothing is left pending: the pool drains and keeps working
    assert shared_pool.run_on_all(tasks.square, 2) == [4, 4]
    assert list(shared_pool.map(tasks.square, range(10))) == [i * i for i in range(10)]


class _Endless:
    """``0, 1, 2, ...`` for ever, counting what was read (``pulled``)."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self):
        for i in itertools.count():
            self.pulled += 1
            yield i


def _executors_with_buffersize(shared_pool):
    """The pool, and the standard library's executors where their ``map``
    takes ``buffersize`` (Python 3.14 and later): the semantics to match."""
    yield shared_pool
    if sys.version_info >= (3, 14):
        with concurrent.futures.ThreadPoolExecutor(2) as executor:
            yield executor


@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_map_buffersize_reads_an_endless_input_only_that_far_ahead(shared_pool, chunksize):
    # Executor.map's buffersize (Python 3.14): at most that many submitted
    # and not yet yielded, the input read lazily; a TypeError before
    per_task = chunksize or 1
    for executor in _executors_with_buffersize(shared_pool):
        numbers = _Endless()
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        results = executor.map(tasks.square, numbers, buffersize=4, **kwargs)
        assert numbers.pulled <= 4 * per_task  # at the call, before any result
        taken = [next(results) for _ in range(25)]
        assert taken == [i * i for i in range(25)]
        # the standard library's reads one more before each result it yields
        assert numbers.pulled <= 25 + 1 + 4 * per_task, f"{executor}: read {numbers.pulled}"
        results.close()
    assert list(shared_pool.map(tasks.square, range(30), buffersize=3)) == [
        i * i for i in range(30)
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_a_slow_input_streams_its_results(shared_pool, chunksize):
    # a generator that waits for each input (a socket, a queue): the map read
    # a whole window of them (about 32) at the call, and again before it took
    # results, so its first result waited for the 32 inputs after it
    pulled = [0]

    def slow_inputs():
        for i in range(40):
            time.sleep(0.03)
            pulled[0] += 1
            yield i

    results = shared_pool.map(tasks.square, slow_inputs(), chunksize=chunksize)
    assert pulled[0] < 10
    assert next(results) == 0
    assert pulled[0] < 15, pulled[0]
    assert list(results) == [i * i for i in range(1, 40)]


def test_a_map_with_buffersize_never_iterated_reads_no_more(pool):
    # without a buffersize a map never iterated runs every input (at its
    # drop, at the shutdown), as Executor.map does; with one it runs those
    # submitted only, as Executor.map's: the input may be endless
    numbers = _Endless()
    kept = pool.map(tasks.square, numbers, buffersize=3)
    dropped = _Endless()
    pool.map(tasks.square, dropped, buffersize=2)
    gc.collect()
    pool.shutdown()
    assert (numbers.pulled, dropped.pulled) == (3, 2)
    del kept


@pytest.mark.parametrize("source", ["sync", "async"])
def test_map_async_buffersize_reads_only_that_far_ahead(shared_pool, source):
    numbers = _Endless()

    async def endless():
        for i in numbers:
            yield i

    async def main():
        results = []
        inputs = numbers if source == "sync" else endless()
        async for result in shared_pool.map_async(tasks.square, inputs, buffersize=4):
            results.append(result)
            assert numbers.pulled <= len(results) + 4
            if len(results) == 20:
                break
        return results

    assert asyncio.run(main()) == [i * i for i in range(20)]


@pytest.mark.parametrize(
    "buffersize, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_buffersize_raises_as_executor_map_does(shared_pool, buffersize, error):
    # the standard library's messages: "buffersize must be None or >= 1."
    with pytest.raises(error, match="buffersize must be"):
        shared_pool.map(tasks.square, range(3), buffersize=buffersize)
    with pytest.raises(error, match="buffersize must be"):
        shared_pool.map_async(tasks.square, range(3), buffersize=buffersize)


def test_adaptive_sizing_reads_results_the_pool_loop_appends_to():
    # A map's thread samples the newest results while the pool loop appends
    # more to the same deque; iterating it then raised "deque mutated during
    # iteration" out of the map, now and then. A thread that appends (as the
    # pool loop does) and thread switches as often as Python allows make it
    # happen within a few thousand samples.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    results: collections.deque = collections.deque()
    task = Task(1, 1, b"", p.FLAG_STAR, b"", [], None)  # type: ignore[arg-type]
    stop = threading.Event()

    def pool_loop():
        while not stop.is_set():
            if len(results) < 256:  # as the map's window bounds them
                results.append((task, p.STATUS_OK, (b"", [], 5)))
            else:
                time.sleep(0)

    appender = threading.Thread(target=pool_loop)
    appender.start()
    sizer = ChunkSizer(None, True)
    # (20 s of it at most: handed over this often, the GIL makes the loop's
    # pace differ widely between Python versions)
    deadline = time.monotonic() + 20
    try:
        for _ in range(20_000):
            if time.monotonic() > deadline:
                break
            sizer.sample(results, {})
            while len(results) > 64:  # as the map takes them
                results.popleft()
    finally:
        stop.set()
        appender.join()
        sys.setswitchinterval(old_interval)
    assert sizer.chunksize > 1  # the results were read: tiny tasks are grouped


def test_a_run_time_remembered_wrong_is_replaced_by_the_first_measured():
    # a tiny function remembered as slow (its last chunk lost its core for a
    # while) starts its next map one input per task, and the first result
    # says otherwise: the map's chunks grow from that at once, as for a
    # function not mapped before, not after a dozen tasks of an average
    # coming down from the wrong time
    run_times = RunTimes()
    run_times.note(7, 0.005)
    remembered = ChunkSizer(None, True, run_times, func_id=7)
    fresh = ChunkSizer(None, True)
    assert remembered.chunksize == fresh.chunksize == 1
    for _ in range(4):
        for sizer in (remembered, fresh):
            sizer.note_run(2 * sizer.chunksize, sizer.chunksize)  # 2 µs an input
    assert remembered.chunksize == fresh.chunksize == 16
    assert run_times.get(7) == pytest.approx(2e-6)
    # and one remembered right starts the map with its chunks
    assert ChunkSizer(None, True, run_times, func_id=7).chunksize == MAX_BATCH


def test_a_chunk_of_few_inputs_that_lost_its_core_weighs_by_its_inputs():
    # chunks of 100 inputs of 20 µs each, then a last chunk of one input
    # whose worker was preempted for 5 ms: the time per input the map goes
    # on with, and the one the pool remembers, rise from 20 to about 44 µs
    # (the delay spread over the inputs averaged), not to 1.5 ms (a third
    # of it, were each task to weigh alike)
    run_times = RunTimes()
    sizer = ChunkSizer(None, True, run_times, func_id=3)
    for _ in range(12):
        sizer.note_run(20 * sizer.chunksize, sizer.chunksize)
    steady = sizer.chunksize
    assert steady == 100  # BATCH_TIME's 2 ms of 20 µs inputs
    assert run_times.get(3) == pytest.approx(20e-6)
    sizer.note_run(5_000, 1)
    assert sizer.chunksize >= steady // 3
    remembered = run_times.get(3)
    assert remembered is not None and remembered < 3 * 20e-6
    # a chunk as large as the others that ran slow still counts in full
    sizer.note_run(100 * 5_000, 100)
    assert sizer.chunksize == 1


def _read_ahead(pool: Pool, mib: int, count: int, **kwargs: object) -> tuple[int, int]:
    """How many inputs of ``mib`` MiB, at most, a map of ``count`` of them
    (``kwargs``: its options) read ahead of its consumer; and the limit
    that ``BYTES_AHEAD`` sets."""
    payload = b"x" * (mib * 2**20)
    pulled = 0

    def payloads():
        nonlocal pulled
        for _ in range(count):
            pulled += 1
            yield payload

    ahead = []
    for yielded, length in enumerate(pool.map(tasks.bytes_len, payloads(), **kwargs)):
        assert length == len(payload)
        ahead.append(pulled - yielded)
    assert pulled == count
    capacity = pool.total_workers() * QSIZE  # tasks the workers hold at once
    return max(ahead), max(BYTES_AHEAD // len(payload), capacity + 2)


def test_large_inputs_are_read_ahead_by_bytes_not_by_count(shared_pool):
    # 8 MiB inputs: BYTES_AHEAD of them, not the whole window of 32 small ones
    ahead, limit = _read_ahead(shared_pool, 8, 24, chunksize=1)
    assert ahead <= limit + 1, f"read {ahead} inputs ahead"
    assert map_window(shared_pool.total_workers() * QSIZE) > limit + 1


def test_large_quick_inputs_are_not_grouped_past_the_bound(shared_pool):
    # a quick function of large inputs (the first pixel of each image):
    # adaptive chunks grouped them by the hundred, and the map read that
    # many ahead of its consumer, far past BYTES_AHEAD (1.2 GB of 1 MiB inputs)
    ahead, limit = _read_ahead(shared_pool, 2, 160)
    assert ahead <= limit + 1, f"read {ahead} inputs ahead"


@pytest.mark.timeout(120)
def test_an_input_windows_behind_a_slow_first_one_runs_while_it_waits(pool, tmp_path):
    # The first input waits (20 s at most) until an input three windows
    # after it has run. The results between are answered while it waits and
    # held for their order: they are not in flight, so the map reads on and
    # the other worker runs them, as in ProcessPoolExecutor (which submits
    # every input at once). Were they counted in flight, that worker would
    # idle until the first input gave up, and the last one would not have run.
    capacity = pool.total_workers() * QSIZE
    roles = ["wait"] + ["pass"] * (3 * map_window(capacity)) + ["come"]

    async def from_a_list(path: str) -> list:
        it = pool.map_async(tasks.meet, [path] * len(roles), roles, chunksize=1)
        return [result async for result in it]

    async def from_an_async_source(path: str) -> list:
        async def inputs():
            for role in roles:
                yield path, role

        it = pool.map_async(tasks.meet, inputs(), star=True)
        return [result async for result in it]

    def control(path: str) -> list:
        with concurrent.futures.ProcessPoolExecutor(2) as executor:
            return list(executor.map(tasks.meet, [path] * len(roles), roles))

    runs = {
        "ProcessPoolExecutor": control,
        "map": lambda path: list(pool.map(tasks.meet, [path] * len(roles), roles, chunksize=1)),
        "map_async": lambda path: asyncio.run(from_a_list(path)),
        "map_async of an async source": lambda path: asyncio.run(from_an_async_source(path)),
    }
    for name, run in runs.items():
        results = run(str(tmp_path / name))
        assert [role for role, _, _ in results] == roles, name
        by_role = {role: (pid, came) for role, pid, came in results if role != "pass"}
        assert by_role["wait"][1], f"{name}: the last input ran only after the first"
        assert by_role["wait"][0] != by_role["come"][0], name


def _held_up_map(pool, path: str, size: int):
    """A map of ``tasks.bytes_when_exists`` whose first input waits until
    ``path`` exists and whose others return ``size`` bytes at once, over an
    endless input, and a thread that waits for its first result: return the
    map, a list with the number of inputs read, and the thread."""
    pulled = [0]

    def inputs():
        pulled[0] += 1
        yield path
        while True:
            pulled[0] += 1
            yield None

    results = pool.map(tasks.bytes_when_exists, inputs(), itertools.repeat(size), chunksize=1)
    consumer = threading.Thread(target=next, args=(results,))
    consumer.start()
    return results, pulled, consumer


def _read_until_held_up(pool, pulled: list, done_before: int) -> int:
    """Wait until the map of ``_held_up_map`` reads no further: every input
    it read was answered but the first. Return how many it read."""

    def stopped() -> bool:
        totals = pool.status().totals
        return (
            totals.queued == 0
            and totals.in_flight == 1
            and totals.done - done_before == pulled[0] - 1
        )

    # twice, apart: a map that reads on is not caught between two reads
    assert wait_until(lambda: stopped() and not time.sleep(0.3) and stopped(), timeout=30), (
        f"the map read on: {pulled[0]} inputs"
    )
    return pulled[0]


def test_a_map_held_up_by_its_first_input_reads_only_so_far_ahead(pool, tmp_path):
    # the inputs answered behind a slow one are held, and bounded
    capacity = pool.total_workers() * QSIZE
    window = map_window(capacity)
    path = str(tmp_path / "go")
    done_before = pool.status().totals.done
    results, pulled, consumer = _held_up_map(pool, path, 10)
    try:
        read = _read_until_held_up(pool, pulled, done_before)
        assert window < read <= HOLD_AHEAD * window
    finally:
        open(path, "w").close()
        consumer.join(30)
    assert not consumer.is_alive()
    assert list(itertools.islice(results, 100)) == [b"x" * 10] * 100
    results.close()


def test_large_results_wait_for_a_slow_consumer_bounded_by_bytes(pool):
    # the map read its whole window (32 tasks here) before it knew how large
    # the results are, and grouped inputs of large results into chunks,
    # which count as one task: 50 MiB results held up to 1.4 GB for a
    # consumer that dropped each. Now about BYTES_AHEAD of them wait, and
    # no fewer than keep every worker's credits busy
    size = 8 * 2**20
    capacity = pool.total_workers() * QSIZE
    assert map_window(capacity) > BYTES_AHEAD // size + capacity + 2
    done_before = pool.status().totals.done
    results = pool.map(tasks.bytes_when_exists, itertools.repeat(None, 60), itertools.repeat(size))
    assert next(results) == b"x" * size

    def done() -> int:
        return pool.status().totals.done - done_before

    # the consumer waits: the map runs on until the results ahead of it are full
    assert wait_until(
        lambda: done() > 3 and not time.sleep(0.3) and pool.status().totals.in_flight == 0,
        timeout=30,
    )
    assert done() <= 1 + BYTES_AHEAD // size + capacity + 2, done()
    assert sum(len(r) for r in results) == 59 * size


def test_large_results_held_behind_a_slow_input_are_bounded_by_bytes(pool, tmp_path):
    # 4 MiB results: about BYTES_AHEAD of them ahead of the consumer, those
    # held and those in flight together, not HOLD_AHEAD windows
    size = 4 * 2**20
    capacity = pool.total_workers() * QSIZE
    window = map_window(capacity)
    assert HOLD_AHEAD * window > window + BYTES_AHEAD // size + 1
    path = str(tmp_path / "go")
    done_before = pool.status().totals.done
    results, pulled, consumer = _held_up_map(pool, path, size)
    try:
        read = _read_until_held_up(pool, pulled, done_before)
        # every worker's credits busy at least; the first, held up, beside
        assert capacity + 2 <= read <= BYTES_AHEAD // size + 1
    finally:
        open(path, "w").close()
        consumer.join(30)
    assert not consumer.is_alive()
    assert next(results) == b"x" * size
    results.close()


def test_unbounded_input_with_chunks_and_early_break(shared_pool):
    it = shared_pool.map(tasks.add, itertools.count(), itertools.repeat(1), chunksize=50)
    assert list(itertools.islice(it, 500)) == list(range(1, 501))
    it.close()
    assert shared_pool.run(tasks.square, 12) == 144


def test_break_out_of_map_of_slow_tasks_leaves_pool_usable(pool):
    it = pool.map(tasks.sleep_return, [0.01] + [0.3] * 20, range(21))
    assert next(it) == 0
    it.close()  # as a for loop's break does when the iterator is dropped
    assert list(pool.map(tasks.square, range(20))) == [i * i for i in range(20)]
    assert pool.run_on_all(tasks.square, 3) == [9, 9]


def _assert_freed(ref: weakref.ref) -> None:
    gc.collect()
    assert ref() is None, "the map still holds a result it yielded"


@pytest.fixture
def frozen_gc():
    """The objects of the test process so far left out of ``gc.collect()``
    (``gc.freeze``): a test that collects after each result then costs the
    same however many objects the tests before it left (dask, sklearn and
    Jupyter's modules make each full collection slow)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("chunksize", [1, None, 7])
def test_map_lets_go_of_each_result_it_yielded(shared_pool, chunksize, frozen_gc):
    # as concurrent.futures' own executors: a large result is freed as soon
    # as the consumer drops it, not when the batch it came in is all yielded
    count = 0
    for obj in shared_pool.map(tasks.make_scaler, range(200), chunksize=chunksize):
        ref = weakref.ref(obj)
        del obj
        _assert_freed(ref)
        count += 1
    assert count == 200

    async def consume():
        count = 0
        async for obj in shared_pool.map_async(tasks.make_scaler, range(200), chunksize=chunksize):
            ref = weakref.ref(obj)
            del obj
            _assert_freed(ref)
            count += 1
        return count

    assert asyncio.run(consume()) == 200


def _idle(pool: Pool) -> bool:
    totals = pool.status().totals
    return totals.queued == 0 and totals.in_flight == 0


@pytest.mark.parametrize("iterated", [True, False], ids=["broken", "never-iterated"])
def test_results_nobody_takes_are_freed_without_the_cyclic_collector(pool, iterated):
    # The results that a broken map did not take, and those of a map never
    # iterated, hold their tasks, and a task its map's sink: were they kept
    # in the sink, each map's results would wait for a full garbage
    # collection, which a program with many objects runs rarely.
    gc.collect()
    gc.disable()
    try:
        it = pool.map(tasks.sleep_return, [0.0] + [0.02] * 20, range(21))
        sink = weakref.ref(it._gen.gi_frame.f_locals["run"].sink)
        if iterated:
            assert next(it) == 0
            assert wait_until(lambda: _idle(pool), timeout=20)  # the rest arrived
            it.close()
            del it
        else:
            del it
            assert wait_until(lambda: _idle(pool), timeout=20)
        assert wait_until(lambda: sink() is None), "the map's results wait for the collector"
    finally:
        gc.enable()
    assert pool.run(tasks.square, 4) == 16


def test_break_in_a_for_loop_cancels_pending(pool, tmp_path):
    # each task takes 50 ms, so that a loaded machine cannot run all 40
    # (a second on 2 workers) before the break reaches the pool
    markers = [tmp_path / f"m{i}" for i in range(40)]
    paths = [str(m) for m in markers]
    for result in pool.map(tasks.touch_then_sleep, paths, [0.05] * 40, range(40)):
        if result == 0:
            break
    pool.run_on_all(tasks.pid)
    ran = sum(m.exists() for m in markers)
    assert 1 <= ran < 40, f"{ran} of 40 tasks ran after breaking out at the first"


def test_timeout_raises_pool_timeout_error(pool):
    results = []
    with pytest.raises(Pool.TimeoutError):
        for result in pool.map(
            tasks.sleep_return, [0.01, 0.01, 3, 3], ["a", "b", "c", "d"], timeout=0.5
        ):
            results.append(result)
    assert results == ["a", "b"]
    assert issubclass(Pool.TimeoutError, concurrent.futures.TimeoutError)


def test_timeout_counts_from_the_start_of_the_map(pool):
    # each result comes quickly, but all of them take longer than the timeout
    with pytest.raises(Pool.TimeoutError):
        for _ in pool.map(tasks.sleep_return, [0.2] * 20, timeout=0.7):
            pass


def test_map_within_its_timeout_succeeds(shared_pool):
    assert list(shared_pool.map(tasks.square, range(20), timeout=30)) == [i * i for i in range(20)]


def test_exception_raises_at_its_item_after_earlier_results(shared_pool):
    results = []
    with pytest.raises(ValueError, match="bad input 5") as info:
        for result in shared_pool.map(tasks.fail_on, range(10), [5] * 10):
            results.append(result)
    assert results == [0, 10, 20, 30, 40]
    assert "Remote traceback" in str(info.value.__cause__)


@pytest.mark.parametrize("bad, chunksize", [(5, 4), (0, 4), (3, 4), (4, 4), (9, 3), (7, 100)])
def test_chunk_with_exception_in_the_middle(shared_pool, bad, chunksize):
    results = []
    with pytest.raises(ValueError, match=f"bad input {bad}$"):
        for result in shared_pool.map(tasks.fail_on, range(12), [bad] * 12, chunksize=chunksize):
            results.append(result)
    assert results == [10 * i for i in range(bad)]


def test_chunk_results_that_name_item_error_are_plain_values(shared_pool):
    values = ["ItemError", b"ItemError", "no ItemError here"] * 4
    assert list(shared_pool.map(tasks.identity, values, chunksize=5)) == values


def test_unordered_map_still_raises_the_error(shared_pool):
    results = []
    with pytest.raises(ValueError, match="bad input 6"):
        for result in shared_pool.map(tasks.fail_on, range(10), [6] * 10, ordered=False):
            results.append(result)
    assert 60 not in results
    assert len(results) < 10


def test_map_keeps_working_after_an_error(shared_pool):
    with pytest.raises(ValueError):
        list(shared_pool.map(tasks.fail_on, range(10), [2] * 10, chunksize=3))
    assert list(shared_pool.map(tasks.fail_on, range(10), [99] * 10, chunksize=3)) == [
        10 * i for i in range(10)
    ]


@pytest.mark.parametrize("chunksize", [0, -1, -100, 1.5, "2"])
def test_bad_chunksize_is_a_value_error(shared_pool, chunksize):
    with pytest.raises(ValueError, match="chunksize"):
        shared_pool.map(tasks.square, range(3), chunksize=chunksize)
    with pytest.raises(ValueError, match="chunksize"):
        shared_pool.map_async(tasks.square, range(3), chunksize=chunksize)


@pytest.mark.parametrize("timeout", ["1", float("nan"), True])
def test_bad_map_timeout_is_a_type_error(shared_pool, timeout):
    # "1" failed adding it to the clock; nan and True passed as no timeout
    # and as one of a second
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        shared_pool.map(tasks.square, range(3), timeout=timeout)
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        shared_pool.map_async(tasks.square, range(3), timeout=timeout)


def test_a_map_of_no_iterable_is_empty(shared_pool):
    # as Executor.map (zip of nothing)
    assert list(shared_pool.map(tasks.square)) == []


def test_error_in_the_input_iterator_propagates(shared_pool):
    def inputs():
        yield 1
        yield 2
        raise LookupError("input broke")

    with pytest.raises(LookupError, match="input broke"):
        list(shared_pool.map(tasks.square, inputs()))
    assert shared_pool.run(tasks.square, 3) == 9


def test_an_input_read_after_the_call_from_a_closed_file_says_why(shared_pool, tmp_path):
    # Executor.map reads its input at the call; a map reads it as its
    # results are taken, so a file closed between the call and the loop
    # raised a bare "I/O operation on closed file" from the map's guts
    path = tmp_path / "lines.txt"
    path.write_text("abc\n" * 20_000)
    with open(path) as lines:
        results = shared_pool.map(len, lines)
    with pytest.raises(ValueError, match="closed file") as info:
        list(results)
    if sys.version_info >= (3, 11):  # notes
        notes = "\n".join(info.value.__notes__)
        assert "a map of len, read after pool.map(...) returned" in notes
        assert "keep what the input reads from open" in notes

    def broken():
        yield from "ab" * 20_000
        raise LookupError("input broke")

    # an input's own error after the call: no note
    results = shared_pool.map(len, broken())
    with pytest.raises(LookupError, match="input broke") as info:
        list(results)
    assert not getattr(info.value, "__notes__", None)
    with open(path) as lines:
        assert sum(shared_pool.map(len, lines)) == 80_000


async def agen(n, delay=0.0):
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


def test_sync_map_of_an_async_iterable(shared_pool):
    assert list(shared_pool.map(tasks.square, agen(20))) == [i * i for i in range(20)]
    assert list(shared_pool.map(tasks.square, agen(20), chunksize=6)) == [i * i for i in range(20)]


def test_sync_map_of_mixed_iterables_async_shortest(shared_pool):
    expected = list(map(tasks.add3, range(15), range(100, 200), range(50)))
    assert list(shared_pool.map(tasks.add3, agen(15), range(100, 200), iter(range(50)))) == (
        expected
    )
    assert (
        list(shared_pool.map(tasks.add3, agen(15), range(100, 200), range(50), chunksize=4))
        == expected
    )
    assert (
        sorted(
            shared_pool.map(
                tasks.add3, agen(15), range(100, 200), range(50), chunksize=4, ordered=False
            )
        )
        == expected
    )


def test_sync_map_of_mixed_iterables_sync_shortest(shared_pool):
    # zip ends when the shortest ends, also when that one is a sync iterable
    assert list(shared_pool.map(tasks.add3, range(15), agen(100), agen(50))) == [
        3 * x for x in range(15)
    ]


def test_sync_map_of_an_unbounded_async_iterable_with_early_break(shared_pool):
    async def forever():
        i = 0
        while True:
            await asyncio.sleep(0)
            yield i
            i += 1

    it = shared_pool.map(tasks.square, forever())
    assert list(itertools.islice(it, 30)) == [i * i for i in range(30)]
    it.close()
    assert shared_pool.run(tasks.square, 5) == 25


@pytest.mark.parametrize("in_a_loop", [False, True], ids=["plain", "inside-a-running-loop"])
def test_sync_map_closes_an_async_iterable_it_left_half_read(shared_pool, in_a_loop):
    # as asyncio.run does when it ends: the source's finally (a cursor or a
    # connection to release) runs when the map ends, not never
    closed = []

    async def source():
        try:
            for i in itertools.count():
                yield i
        finally:
            closed.append(True)

    def consume():
        for result in shared_pool.map(tasks.square, source()):
            if result == 9:
                break

    if in_a_loop:

        async def main():
            consume()

        asyncio.run(main())
    else:
        consume()
    assert closed == [True]


def test_map_of_a_coroutine_function(shared_pool):
    for chunksize in (1, 3):
        assert list(shared_pool.map(tasks.async_square, range(10), chunksize=chunksize)) == [
            i * i for i in range(10)
        ]


def test_map_of_a_failing_coroutine_function_in_chunks(shared_pool):
    with pytest.raises(ValueError, match="async failure 0"):
        list(shared_pool.map(tasks.async_fail, range(5), chunksize=2))


def test_sync_error_in_a_chunk_of_coroutines_is_wrapped_once(shared_pool):
    # the chunk's first input gives a coroutine, so the chunk is awaited; its
    # input 4 raises before any coroutine: one RemoteException, with the
    # input's own remote traceback
    results = []
    with pytest.raises(ValueError, match="^bad input 4$") as info:
        for result in shared_pool.map(tasks.async_square_unless, range(6), [4] * 6, chunksize=3):
            results.append(result)
    assert results == [0, 1, 4, 9]
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException) and cause.__cause__ is None
    assert "RemoteException" not in cause.tb
    assert cause.tb.rstrip().endswith("ValueError: bad input 4")


def test_map_inside_a_running_event_loop(shared_pool):
    async def main():
        return list(shared_pool.map(tasks.square, range(10), chunksize=2))

    assert asyncio.run(main()) == [i * i for i in range(10)]


def test_two_maps_interleaved(shared_pool):
    a = shared_pool.map(tasks.square, range(100))
    b = shared_pool.map(tasks.add, range(100), range(100), chunksize=7)
    got_a, got_b = [], []
    for x, y in zip(a, b, strict=True):
        got_a.append(x)
        got_b.append(y)
    assert got_a == [i * i for i in range(100)]
    assert got_b == [2 * i for i in range(100)]


def test_a_map_that_ended_is_not_counted_as_waiting_for_results(pool):
    # While a map's consumer waits for results, the pool loop may poll for
    # the next one instead of sleeping. A map still counted once it ended,
    # by a timeout, a break or in full, would keep the pool loop polling.
    broker = pool._runtime.broker
    assert list(pool.map(tasks.square, range(50), chunksize=1)) == [x * x for x in range(50)]
    with pytest.raises(concurrent.futures.TimeoutError):
        list(pool.map(tasks.sleep_return, [5.0, 5.0], timeout=0.2))
    for _ in pool.map(tasks.square, range(500), chunksize=1):
        break

    async def main() -> None:
        async for _ in pool.map_async(tasks.square, range(500), chunksize=1):
            break
        with pytest.raises(asyncio.TimeoutError):
            async for _ in pool.map_async(tasks.sleep_return, [5.0, 5.0], timeout=0.2):
                pass
        assert [x async for x in pool.map_async(tasks.square, range(50))] == [
            x * x for x in range(50)
        ]

    asyncio.run(main())
    gc.collect()
    assert broker.consumers_waiting == set()
