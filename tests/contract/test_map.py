"""The executor contract: map and map_async on every kind of pool.

Order, chunks, several and async iterables, star, errors in place, and the
free reference of CPython's ``test_free_reference``. The tests share one pool
per kind; the ones that leave tasks behind (timeouts, breaking out) are in
``test_lifecycle``.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from tests import tasks

pytestmark = pytest.mark.timeout(60)

SQUARES = [x * x for x in range(200)]


async def aiterate(n):
    for i in range(n):
        if i % 50 == 0:
            await asyncio.sleep(0)
        yield i


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_ordered(executor, chunksize):
    assert list(executor.map(tasks.square, range(200), chunksize=chunksize)) == SQUARES


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_unordered(executor, chunksize):
    results = list(executor.map(tasks.square, range(200), chunksize=chunksize, ordered=False))
    assert sorted(results) == SQUARES


def test_map_of_several_iterables_stops_at_the_shortest(executor):
    assert list(executor.map(pow, range(10), range(10))) == [pow(x, x) for x in range(10)]
    assert list(executor.map(tasks.add3, range(5), range(100), [1] * 3)) == [1, 3, 5]


def test_map_star(executor):
    pairs = [(x, 2 * x) for x in range(50)]
    assert list(executor.map(tasks.add, pairs, star=True)) == [3 * x for x in range(50)]


def test_map_of_a_generator_and_an_async_iterable(executor):
    gen = (x for x in range(200))
    assert list(executor.map(tasks.square, gen)) == SQUARES
    assert list(executor.map(tasks.square, aiterate(200))) == SQUARES
    assert list(executor.map(tasks.add, aiterate(10), range(10))) == [2 * x for x in range(10)]


def test_map_of_a_coroutine_function(executor):
    assert list(executor.map(tasks.async_square, range(20))) == SQUARES[:20]


def test_map_of_nothing(executor):
    assert list(executor.map(tasks.square, [])) == []
    # no iterable at all is an empty map too, as with ProcessPoolExecutor
    assert list(executor.map(tasks.square)) == []

    async def no_iterable():
        return [x async for x in executor.map_async(tasks.square)]

    assert asyncio.run(no_iterable()) == []


def test_map_error_raises_in_its_place(executor):
    results = executor.map(tasks.fail_on, range(6))
    assert next(results) == 0 and next(results) == 10 and next(results) == 20
    with pytest.raises(ValueError, match="bad input 3"):
        next(results)


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_map_async(executor, chunksize):
    async def main():
        squares = executor.map_async(tasks.square, range(200), chunksize=chunksize)
        ordered = [r async for r in squares]
        unordered = [
            r
            async for r in executor.map_async(
                tasks.square, aiterate(200), chunksize=chunksize, ordered=False
            )
        ]
        several = [r async for r in executor.map_async(tasks.add, range(5), aiterate(5))]
        return ordered, sorted(unordered), several

    assert asyncio.run(main()) == (SQUARES, SQUARES, [0, 2, 4, 6, 8])


def test_map_async_error_raises_in_its_place(executor):
    async def main():
        seen = []
        with pytest.raises(ValueError, match="async failure 2"):
            async for r in executor.map_async(tasks.async_fail_on, range(5)):
                seen.append(r)
        return seen

    assert asyncio.run(main()) == [0, 1]


def test_map_keeps_no_reference_to_yielded_results(executor):
    for obj in executor.map(tasks.make_scaler, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None
