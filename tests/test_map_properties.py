"""Property tests: ``Pool.map``, ``map_async``, ``submit`` and ``run_on_all``
against the builtin ``map`` and ``concurrent.futures.ProcessPoolExecutor``.

The docs are the contract; where they are silent, what the stdlib executor
does is what a user expects. Each example runs on pools shared by the whole
module (2 workers each), so a property also checks that an example leaves
nothing behind that spoils the next one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import multiprocessing
import os
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distex_zmq import Pool, RemoteException, SerializationError
from tests import prop_tasks
from tests.helpers import wait_until
from tests.prop_tasks import Bad

pytestmark = pytest.mark.timeout(120)

#: examples per property; PROPS_EXAMPLES=300 hunts longer, with new examples each run
EXAMPLES = int(os.environ.get("PROPS_EXAMPLES", "30"))
#: the suite's runs (CI's among them) try the same examples each time
HUNTING = "PROPS_EXAMPLES" in os.environ


def examples(n: int) -> settings:
    """Settings for ``n`` examples (scaled by ``PROPS_EXAMPLES``), no deadline."""
    return settings(
        max_examples=max(1, n * EXAMPLES // 30),
        deadline=None,
        derandomize=not HUNTING,
        database=None,  # nothing written into the checkout
        # the suite's autouse leak check is per test, not per example: fine here
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


SETTINGS = examples(30)

CHUNKSIZES = st.sampled_from([None, 1, 2, 3, 7, 100])
#: lengths around the chunk sizes above and the adaptive chunks' ceiling
LENGTHS = st.one_of(
    st.integers(0, 12),
    st.sampled_from([0, 1, 2, 6, 7, 8, 99, 100, 101, 255, 256, 257]),
    st.integers(0, 300),
)
#: how an input reaches ``map``: the pool also takes async iterables
SYNC_FORMS = ("list", "tuple", "iter", "generator")
FORMS = (*SYNC_FORMS, "async generator")


@pytest.fixture(scope="module")
def pools():
    """Pools of 2 workers by ``qsize``: 1 (one task per worker, chunks kept
    as given) and the default."""
    made = {1: Pool(2, qsize=1), 2: Pool(2)}
    try:
        for p in made.values():
            p.run_on_all(int, 0)
        yield made
    finally:
        for p in made.values():
            p.shutdown()


@pytest.fixture(scope="module")
def executor():
    """The control: the stdlib's process pool, 2 workers."""
    # "spawn" (no fork of a process with the pools' threads) starts workers
    # on demand: two tasks at once start both here, not inside a test, whose
    # leak check would count them as its own
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as ex:
        list(ex.map(prop_tasks.sleep_return, [0.2, 0.2]))
        yield ex


def norm(value: Any) -> Any:
    """A value that compares by content: exceptions as (type, args)."""
    if isinstance(value, BaseException):
        return ("exception", type(value).__name__, value.args)
    return value


def as_form(xs: list[int], form: str) -> Any:
    """``xs`` as a list, tuple, iterator, generator or async generator."""
    if form == "list":
        return list(xs)
    if form == "tuple":
        return tuple(xs)
    if form == "iter":
        return iter(list(xs))
    if form == "generator":
        return (x for x in xs)

    async def agen():
        for x in xs:
            yield x

    return agen()


@st.composite
def map_cases(draw, with_bad: bool = False, forms: tuple[str, ...] = FORMS):
    """``(func, lists, forms, chunksize, ordered, bad)``: ``func`` fails at
    the indices in ``bad`` (the maps pass the index of each input first, see
    ``inputs``), the lists go to the map in their forms."""
    count = draw(st.integers(1, 3))
    lists = [
        draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
        for n in [draw(LENGTHS) for _ in range(count)]
    ]
    n = min(len(xs) for xs in lists)
    bad: frozenset[int] = frozenset()
    if with_bad and n:
        bad = frozenset(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(prop_tasks.KINDS))
    variant = draw(st.sampled_from(["plain", "plain", "paced", "async", "big"]))
    if variant == "paced":
        # instant inputs, then a few of 5 ms: chunks hand back what they hold
        slow = frozenset(draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=4)))
        func = functools.partial(prop_tasks.paced, kind, bad, slow)
    else:
        funcs = {
            "plain": prop_tasks.compute,
            "async": prop_tasks.compute_async,
            "big": prop_tasks.big,
        }
        func = functools.partial(funcs[variant], kind, bad)
    chosen = [draw(st.sampled_from(forms)) for _ in lists]
    return func, lists, chosen, draw(CHUNKSIZES), draw(st.booleans()), bad


def inputs(lists: list[list[int]], forms: list[str], longest: int | None = None) -> list[Any]:
    """The index iterable (a ``range`` or, unbounded, ``itertools.count``)
    followed by the lists in their forms."""
    index: Any = itertools.count() if longest is None else range(longest)
    return [index, *(as_form(xs, f) for xs, f in zip(lists, forms, strict=True))]


def drain(it) -> tuple[list[Any], BaseException | None]:
    """The results of a map iterator up to its first error, and that error."""
    out = []
    try:
        for y in it:
            out.append(norm(y))
    except Exception as exc:  # noqa: BLE001 (the error is what is compared)
        return out, exc
    return out, None


async def drain_async(agen) -> tuple[list[Any], BaseException | None]:
    out = []
    try:
        async for y in agen:
            out.append(norm(y))
    except Exception as exc:  # noqa: BLE001
        return out, exc
    return out, None


def expected(func, lists: list[list[int]]) -> tuple[list[Any], BaseException | None]:
    """What the stdlib executor's map yields and raises, from the builtin map."""
    return drain(map(reference(func), itertools.count(), *lists))


def reference(func) -> Any:
    """The plain function that ``func`` computes as, for the builtin map."""
    if func.func is prop_tasks.compute_async:
        return functools.partial(prop_tasks.compute, *func.args)
    if func.func is prop_tasks.paced:
        kind, bad, _ = func.args
        return functools.partial(prop_tasks.compute, kind, bad)
    return func


def good_results(func, lists: list[list[int]]) -> list[Any]:
    """The results of every input that does not fail, in input order."""
    bad = func.args[1]
    ref = functools.partial(reference(func).func, func.args[0], frozenset())
    return [norm(ref(i, *xs)) for i, xs in enumerate(zip(*lists, strict=False)) if i not in bad]


def multiset(values: list[Any]) -> collections.Counter[str]:
    return collections.Counter(map(repr, values))


def check_outcome(
    got, func, lists: list[list[int]], ordered: bool, remote: type = RemoteException
) -> None:
    """``got`` (results, error) is what the builtin map gives, in order or,
    unordered, as a multiset of its results, up to an error of one of the
    failing inputs."""
    results, error = got
    want_results, want_error = expected(func, lists)
    bad = func.args[1]
    if want_error is None:
        assert error is None, f"unexpected {error!r}"
    else:
        assert type(error) is Bad, f"expected Bad, got {error!r}"
        assert isinstance(error.__cause__, remote)
    if ordered:
        assert results == want_results
        if want_error is not None:
            assert error.args == want_error.args
    elif want_error is None:
        assert multiset(results) == multiset(want_results)
    else:
        assert error.args[0] in bad
        assert not multiset(results) - multiset(good_results(func, lists))


@given(case=map_cases())
@SETTINGS
def test_map_matches_builtin_map(pools, case):
    func, lists, forms, chunksize, ordered, bad = case
    for qsize in (1, 2):
        got = drain(
            pools[qsize].map(func, *inputs(lists, forms), chunksize=chunksize, ordered=ordered)
        )
        check_outcome(got, func, lists, ordered)


@given(case=map_cases(with_bad=True))
@SETTINGS
def test_map_raises_the_error_of_the_first_failing_input(pools, case):
    func, lists, forms, chunksize, ordered, bad = case
    for qsize in (1, 2):
        it = pools[qsize].map(func, *inputs(lists, forms), chunksize=chunksize, ordered=ordered)
        check_outcome(drain(it), func, lists, ordered)
        # as the stdlib executor's generator: an error ends the iteration
        assert next(it, "ended") == "ended"


@given(case=map_cases(with_bad=True, forms=SYNC_FORMS))
@SETTINGS
def test_the_expectation_is_what_the_stdlib_executor_does(executor, case):
    """The builtin ``map`` stands in for ``ProcessPoolExecutor.map`` above,
    but for one documented difference: the stdlib's chunk is one future, so
    an error drops the results of its chunk that come before it, where the
    pool keeps each input's own (docs: adaptive batching)."""
    func, lists, forms, chunksize, ordered, bad = case
    chunksize = chunksize or 1
    results, error = drain(
        executor.map(reference(func), *inputs(lists, forms), chunksize=chunksize)
    )
    want_results, want_error = expected(func, lists)
    if want_error is None:
        assert (results, error) == (want_results, None)
    else:
        first_of_chunk = len(want_results) // chunksize * chunksize
        assert results == want_results[:first_of_chunk]
        assert type(error) is Bad and error.args == want_error.args


@given(case=map_cases(with_bad=True))
@SETTINGS
def test_map_async_matches_builtin_map(pools, case):
    func, lists, forms, chunksize, ordered, bad = case

    async def main(pool):
        agen = pool.map_async(func, *inputs(lists, forms), chunksize=chunksize, ordered=ordered)
        got = await drain_async(agen)
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()
        return got

    for qsize in (1, 2):
        check_outcome(asyncio.run(main(pools[qsize])), func, lists, ordered)


@given(
    rows=st.lists(st.lists(st.integers(-5, 5), max_size=4).map(tuple), max_size=40),
    chunksize=CHUNKSIZES,
)
@SETTINGS
def test_star_map_matches_itertools_starmap(pools, rows, chunksize):
    got = list(pools[2].map(prop_tasks.star_args, iter(rows), chunksize=chunksize, star=True))
    assert got == list(itertools.starmap(prop_tasks.star_args, rows))


def failing_input(xs: list[int], k: int):
    """A generator of ``xs`` that raises ``LookupError(k)`` in place of
    ``xs[k]`` (past the end: never)."""
    for i, x in enumerate(xs):
        if i == k:
            raise LookupError(k)
        yield x


async def failing_async_input(xs: list[int], k: int):
    """``failing_input``, as an async generator."""
    for x in failing_input(xs, k):
        yield x


@given(
    xs=st.lists(st.integers(-50, 50), max_size=120),
    k=st.integers(0, 130),
    chunksize=CHUNKSIZES,
    qsize=st.sampled_from([1, 2]),
    source=st.sampled_from(["sync", "async"]),
    caller=st.sampled_from(["map", "map_async"]),
)
@SETTINGS
def test_an_input_that_raises_at_k_gives_the_results_before_it(
    pools, xs, k, chunksize, qsize, source, caller
):
    """As the builtin ``map``: the results before it, then its error."""
    func = functools.partial(prop_tasks.compute, "int", frozenset())
    want = drain(map(func, itertools.count(), failing_input(xs, k)))
    make = failing_input if source == "sync" else failing_async_input
    args = (func, itertools.count(), make(xs, k))
    if caller == "map":
        got = drain(pools[qsize].map(*args, chunksize=chunksize))
    else:
        got = asyncio.run(drain_async(pools[qsize].map_async(*args, chunksize=chunksize)))
    assert got[0] == want[0]
    assert type(got[1]) is type(want[1])
    if want[1] is not None:
        assert got[1].args == want[1].args


@given(
    xs=st.lists(st.integers(-50, 50), max_size=300),
    take=st.integers(0, 310),
    chunksize=CHUNKSIZES,
    ordered=st.booleans(),
    qsize=st.sampled_from([1, 2]),
)
@SETTINGS
def test_a_map_read_in_part_then_closed_leaves_the_pool_as_it_was(
    pools, xs, take, chunksize, ordered, qsize
):
    pool = pools[qsize]
    func = functools.partial(prop_tasks.compute, "int", frozenset())
    it = pool.map(func, itertools.count(), xs, chunksize=chunksize, ordered=ordered)
    head = list(itertools.islice(it, take))
    want = list(map(func, itertools.count(), xs))
    if ordered:
        assert head == want[:take]
    else:
        assert not multiset(head) - multiset(want)
        assert len(head) == min(take, len(xs))
    it.close()
    assert next(it, "ended") == "ended"
    assert list(pool.map(func, itertools.count(), xs[:5])) == want[:5]


@given(
    kind=st.sampled_from(prop_tasks.KINDS),
    args=st.lists(st.integers(-50, 50), max_size=4),
    fail=st.booleans(),
)
@SETTINGS
def test_submit_matches_a_call(pools, kind, args, fail):
    bad = frozenset([0]) if fail else frozenset()
    fut = pools[2].submit(prop_tasks.compute, kind, bad, 0, *args)
    if fail:
        exc = fut.exception(timeout=30)
        assert type(exc) is Bad and exc.args == (0,)
    else:
        assert norm(fut.result(timeout=30)) == norm(prop_tasks.compute(kind, bad, 0, *args))


def test_submit_and_run_pass_keyword_arguments_named_as_their_parameters(pools):
    """``Executor.submit(fn, /, *args, **kwargs)``: ``fn`` is a keyword the task may take."""
    pool = pools[2]
    want = ((), {"fn": 1, "func": 2, "self": 3})
    assert pool.submit(prop_tasks.keywords, fn=1, func=2, self=3).result(timeout=30) == want
    assert pool.run(prop_tasks.keywords, fn=1, func=2, self=3) == want
    assert asyncio.run(pool.run_async(prop_tasks.keywords, fn=1, func=2, self=3)) == want
    assert pool.run_on_all(prop_tasks.keywords, fn=1, func=2, self=3) == [want, want]


@given(kind=st.sampled_from(prop_tasks.KINDS), args=st.lists(st.integers(-50, 50), max_size=3))
@examples(10)
def test_run_on_all_runs_once_per_worker(pools, kind, args):
    want = norm(prop_tasks.compute(kind, frozenset(), 0, *args))
    for qsize in (1, 2):
        got = pools[qsize].run_on_all(prop_tasks.compute, kind, frozenset(), 0, *args)
        assert [norm(y) for y in got] == [want, want]


def test_maps_of_no_input(pools, executor):
    pool = pools[2]
    func = functools.partial(prop_tasks.compute, "int", frozenset())
    for args in [(), ([],), ([], itertools.count()), (itertools.count(), [])]:
        assert list(pool.map(func, *args)) == list(executor.map(func, *args)) == []
        assert list(pool.map(func, *args, ordered=False, chunksize=3)) == []


@pytest.mark.parametrize("timeout", [0, -1])
def test_a_timeout_that_has_passed_raises_at_once_for_an_unfinished_input(pools, executor, timeout):
    """``Executor.map(..., timeout=0)`` raises unless the result is there."""
    for ex in (executor, pools[2]):
        it = ex.map(prop_tasks.sleep_return, [1.0], timeout=timeout)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
        # as the stdlib's generator, a map that raised is over
        assert next(it, "ended") == "ended"

    async def main() -> None:
        agen = pools[2].map_async(prop_tasks.sleep_return, [1.0], timeout=timeout)
        # what asyncio code catches, and on Python 3.10, where the two are
        # classes of their own, what the sync map raises too
        with pytest.raises(asyncio.TimeoutError) as raised:
            await agen.__anext__()
        assert isinstance(raised.value, concurrent.futures.TimeoutError)
        assert isinstance(raised.value, TimeoutError)
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()

    asyncio.run(main())


class Calls:
    """A ``progress`` callback that keeps its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


@given(
    case=map_cases(),
    longest=st.sampled_from([None, 0, 5, 300, 10**20]),
)
@SETTINGS
def test_progress_reports_every_input_and_the_length(pools, case, longest):
    """The last report is ``(inputs, length)``, the length being the
    shortest iterable's, None if one has none (docs: progress). A range too
    long for ``len`` bounds nothing."""
    func, lists, forms, chunksize, ordered, _ = case
    n = min([len(xs) for xs in lists] + ([] if longest is None else [longest]))
    lengths = [len(xs) for xs, form in zip(lists, forms, strict=True) if form in ("list", "tuple")]
    if longest is None or len(lengths) < len(lists):
        total = None
    else:
        total = min(lengths + ([longest] if longest < 2**63 else []))
    calls = Calls()
    it = pools[2].map(
        func, *inputs(lists, forms, longest), chunksize=chunksize, ordered=ordered, progress=calls
    )
    assert len(list(it)) == n
    assert calls.calls[-1] == (n, total) if n else calls.calls in ([], [(0, total)])
    assert {t for _, t in calls.calls} <= {total}
    assert [d for d, _ in calls.calls] == sorted(d for d, _ in calls.calls)


def test_progress_of_a_map_of_no_iterable(pools):
    """No iterable: an empty map, as with ``Executor.map``, of length 0."""
    calls = Calls()
    assert list(pools[2].map(prop_tasks.star_args, progress=calls)) == []
    assert calls.calls in ([], [(0, 0)])


@given(
    n=LENGTHS,
    chunksize=CHUNKSIZES,
    ordered=st.booleans(),
    qsize=st.sampled_from([1, 2]),
)
@examples(15)
def test_a_map_never_iterated_runs_every_input_once_dropped(
    pools, tmp_path_factory, n, chunksize, ordered, qsize
):
    """Like ``Executor.map`` (docs: map): run for its effects, each input once."""
    path = str(tmp_path_factory.mktemp("effects") / "log")
    m = pools[qsize].map(
        prop_tasks.record, itertools.repeat(path), range(n), chunksize=chunksize, ordered=ordered
    )
    del m
    assert wait_until(lambda: len(prop_tasks.recorded(path)) >= n, timeout=30)
    # a map closed before it is read runs nothing it had not sent
    pools[qsize].map(int, [0]).close()
    assert list(pools[qsize].map(int, range(4))) == list(range(4))
    assert sorted(prop_tasks.recorded(path)) == list(range(n))


@given(
    n=st.integers(0, 12),
    qsize=st.sampled_from([1, 2]),
    wait=st.booleans(),
)
@examples(6)
def test_shutdown_cancelling_futures_runs_none_of_the_cancelled(tmp_path_factory, n, qsize, wait):
    """As with ``ProcessPoolExecutor``: after ``shutdown(cancel_futures=True)``
    every future is done, cancelled or with its result, and a cancelled task
    never ran; what ran is what has a result."""
    path = str(tmp_path_factory.mktemp("cancel") / "log")
    pool = Pool(2, qsize=qsize)
    try:
        pool.run_on_all(int, 0)
        futures = [pool.submit(prop_tasks.record, path, i, 0.05) for i in range(n)]
        pool.shutdown(wait=wait, cancel_futures=True)
    finally:
        pool.shutdown()
    assert all(f.done() for f in futures)
    ran = sorted(f.result() for f in futures if not f.cancelled())
    assert sorted(prop_tasks.recorded(path)) == ran
    with pytest.raises(RuntimeError):
        pool.submit(int)
    with pytest.raises(RuntimeError):
        pool.map(int, [1])


@given(
    n=st.integers(500, 3000),
    bad=st.lists(st.integers(0, 3000), max_size=2).map(frozenset),
    slow=st.lists(st.integers(0, 3000), max_size=6).map(frozenset),
    ordered=st.booleans(),
)
@examples(10)
def test_adaptive_chunks_keep_each_inputs_result_and_error(pools, n, bad, slow, ordered):
    """Enough tiny inputs for the default chunksize to group them, a few
    slow ones among them (a chunk hands back what it has not started), and
    errors: each input keeps its own result, error and place."""
    func = functools.partial(prop_tasks.paced, "tuple", bad, slow)
    lists = [list(range(n))]
    for qsize in (1, 2):
        it = pools[qsize].map(func, itertools.count(), range(n), ordered=ordered)
        check_outcome(drain(it), func, lists, ordered)


@given(
    n=LENGTHS,
    bad=st.lists(st.integers(0, 300), max_size=3).map(frozenset),
    chunksize=CHUNKSIZES,
    ordered=st.booleans(),
    where=st.sampled_from(["input", "result"]),
)
@SETTINGS
def test_what_does_not_pickle_fails_its_own_input(pools, n, bad, chunksize, ordered, where):
    """An input or a result that does not pickle (a lock) fails as if its
    input raised: the others keep their results and places."""
    bad = frozenset(i for i in bad if i < n)
    if where == "input":
        xs: list[Any] = [threading.Lock() if i in bad else i for i in range(n)]
        it = pools[2].map(prop_tasks.identity, xs, chunksize=chunksize, ordered=ordered)
        error_type: type = TypeError
    else:
        func = functools.partial(prop_tasks.locks_at, bad)
        it = pools[2].map(func, range(n), chunksize=chunksize, ordered=ordered)
        error_type = SerializationError
    results, error = drain(it)
    if not bad:
        assert error is None and sorted(results) == list(range(n))
        return
    assert type(error) is error_type, repr(error)
    if ordered:
        assert results == list(range(min(bad)))
    else:
        assert len(set(results)) == len(results) and not set(results) & bad
        assert set(results) <= set(range(n))


@given(
    n=st.integers(0, 14),
    cancel=st.lists(st.integers(0, 13), max_size=8).map(frozenset),
    qsize=st.sampled_from([1, 2]),
)
@examples(15)
def test_a_cancelled_future_never_runs_and_the_others_do(pools, tmp_path_factory, n, cancel, qsize):
    """``Future.cancel()`` as with ``ProcessPoolExecutor``: True until a
    worker holds the task, and then that task never runs; every other runs
    once."""
    pool = pools[qsize]
    path = str(tmp_path_factory.mktemp("cancel") / "log")
    futures = [pool.submit(prop_tasks.record, path, i, 0.01) for i in range(n)]
    cancelled = {i for i in cancel if i < n and futures[i].cancel()}
    assert {i for i, f in enumerate(futures) if f.cancelled()} == cancelled
    for i, f in enumerate(futures):
        if i not in cancelled:
            assert f.result(timeout=30) == i
    # after what was submitted before it: a cancelled task that ran would show
    pool.run_on_all(int, 0)
    assert sorted(prop_tasks.recorded(path)) == sorted(set(range(n)) - cancelled)


#: values that pickle, of many types: exceptions, None and nested ones too
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**64),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=40),
        st.builds(KeyError, st.integers()),
        st.builds(StopIteration, st.integers()),
        st.just(b"x" * 40_000),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner)),
    max_leaves=8,
)


@given(
    xs=st.lists(VALUES, max_size=40),
    chunksize=CHUNKSIZES,
    ordered=st.booleans(),
    star=st.booleans(),
)
@SETTINGS
def test_a_map_of_identity_gives_back_its_inputs(pools, xs, chunksize, ordered, star):
    """Inputs and results of any type, exceptions and ``None`` among them,
    are values, not signals."""
    if star:
        xs = [(x,) for x in xs]
    got = list(
        pools[2].map(prop_tasks.identity, xs, chunksize=chunksize, ordered=ordered, star=star)
    )
    want = [x[0] for x in xs] if star else xs
    if ordered:
        assert list(map(repr, got)) == list(map(repr, want))
    else:
        assert multiset(got) == multiset(want)
