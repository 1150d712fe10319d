"""Results that would wait behind a slow task, and work that would strand
behind one: a worker sends the results it holds while a later task (or a
later input of a chunk) runs long, and a chunk that overruns its budget hands
back the inputs it has not started, so that idle workers take them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pickle
import re
import time
from collections.abc import Iterator

import pytest
from distex_zmq.broker import Task
from distex_zmq.worker.watch import ResultWatch

from distex_zmq import Pool
from distex_zmq.map_results import MapResults
from distex_zmq.map_sizing import ChunkSizer
from distex_zmq.results import QueueSink
from distex_zmq.wire import frames as p
from tests import tasks


def tasks_made(pool: Pool, run) -> int:
    """Run ``run()``; return how many tasks it submitted (a chunk is one)."""
    before = pool.status().totals.tasks_submitted
    run()
    return pool.status().totals.tasks_submitted - before


def results_before_timeout(pool: Pool, inputs: list[float], timeout: float, **kw) -> list:
    """What ``map`` yields before it raises ``TimeoutError`` (which it must)."""
    got = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for result in pool.map(time.sleep, inputs, timeout=timeout, **kw):
            got.append(result)
    return got


@pytest.mark.timeout(60)
def test_map_yields_the_finished_results_before_its_timeout(pool):
    # the executor contract (CPython's test_map_timeout): map(time.sleep,
    # [0, 0, 6], timeout=5) yields two Nones, then raises TimeoutError. Once
    # time.sleep is known as tiny, the worker that runs the slow input holds
    # the results before it in its batch unless it sends them meanwhile.
    made = tasks_made(pool, lambda: list(pool.map(time.sleep, [0] * 2000)))
    assert made < 1000, "the test needs time.sleep known as tiny (chunked)"
    deadline = time.monotonic() + 20
    for _ in range(100):
        assert results_before_timeout(pool, [0, 0, 0.4], timeout=0.2) == [None, None]
        time.sleep(0.25)  # the slow input ends: every credit is free again
        if time.monotonic() > deadline:
            break


def test_a_chunk_sends_its_finished_results_while_an_input_runs_long(pool):
    got = results_before_timeout(pool, [0] * 5 + [1.0], timeout=0.5, chunksize=6)
    assert got == [None] * 5


def test_slow_inputs_after_instant_ones_spread_over_the_workers(pool):
    # the map learns that its inputs are instant and groups the next ones
    # into chunks; the slow ones that follow are handed back and shared
    inputs = [0.0] * 1000 + [0.02] * 60
    pids: list[int] = []
    made = tasks_made(pool, lambda: pids.extend(pool.map(tasks.nap_pid, inputs)))
    assert made < 500, "the test needs the inputs chunked"
    assert len(pids) == len(inputs)
    assert len(set(pids[1000:])) == 2, "the slow inputs all ran on one worker"


def met(results: list) -> tuple[int, int, bool]:
    """Of ``tasks.meet``'s results: the pids of the waiter and the comer, and
    whether the waiter saw the comer run."""
    by_role = {role: (pid, came) for role, pid, came in results if role != "pass"}
    return by_role["wait"][0], by_role["come"][0], by_role["wait"][1]


@pytest.mark.timeout(60)
def test_an_input_behind_a_long_one_of_its_chunk_runs_elsewhere_meanwhile(pool, tmp_path):
    # A chunk of two whose first input waits until the second has run. Past
    # the chunk's budget, its worker hands back the second while the first
    # runs on, and the other worker runs it. Kept behind the first, as
    # ProcessPoolExecutor keeps a chunk's inputs, it would run only after
    # the first gave up waiting (20 s).
    path = str(tmp_path / "came")
    results = list(pool.map(tasks.meet, [path] * 2, ["wait", "come"], chunksize=2))
    assert [role for role, _, _ in results] == ["wait", "come"]
    waiter, comer, came = met(results)
    assert came, "the second input of the chunk ran only after the first"
    assert waiter != comer


@pytest.mark.timeout(120)
def test_a_default_map_does_not_keep_an_input_behind_a_long_one(pool, tmp_path):
    # the same among inputs known to be instant, which the map groups into
    # chunks of many (the pair then nearly always shares one): sync, async,
    # and async as they come
    roles = ["pass"] * 1500 + ["wait", "come"] + ["pass"] * 100

    async def consume(path: str, ordered: bool) -> list:
        it = pool.map_async(tasks.meet, [path] * len(roles), roles, ordered=ordered)
        return [result async for result in it]

    runs = {
        "sync": lambda path: list(pool.map(tasks.meet, [path] * len(roles), roles)),
        "async": lambda path: asyncio.run(consume(path, True)),
        "unordered": lambda path: asyncio.run(consume(path, False)),
    }
    for name, run in runs.items():
        results: list = []
        path = str(tmp_path / name)
        made = tasks_made(pool, lambda: results.extend(run(path)))  # noqa: B023
        assert made < 500, f"{name}: the test needs the inputs chunked"
        answered = [role for role, _, _ in results]
        assert answered == roles if name != "unordered" else sorted(answered) == sorted(roles)
        waiter, comer, came = met(results)
        assert came, f"{name}: the input after the long one ran only after it"
        assert waiter != comer, name


def test_pieces_of_chunks_keep_their_order_and_errors(pool):
    # slow inputs between instant ones: chunks answer in pieces and hand
    # back parts; every result lands in its place, the error in its own
    inputs = [0.0] * 600 + [0.01, 0.0, 0.0] * 40 + [0.0] * 200
    expected = list(inputs)
    assert list(pool.map(tasks.sleep_return, inputs, inputs)) == expected
    assert sorted(pool.map(tasks.sleep_return, inputs, inputs, ordered=False)) == sorted(expected)
    bad = [0.0] * 600 + [0.01] * 30 + [-1.0] + [0.0] * 100
    it = pool.map(tasks.sleep_return, bad, range(len(bad)))
    for i in range(630):
        assert next(it) == i
    with pytest.raises(ValueError):
        next(it)


@pytest.mark.timeout(60)
def test_inputs_answered_before_a_worker_died_do_not_run_again(pool, tmp_path):
    # the worker sends the results of inputs 0-3 while input 4 sleeps, then
    # dies: the chunk runs again elsewhere from input 4 on, not from 0
    from tests import fault_tasks

    journal = str(tmp_path / "journal")
    n = 8
    results = list(
        pool.map(fault_tasks.journal_then, [journal] * n, range(n), [4] * n, [0.5] * n, chunksize=n)
    )
    assert results == list(range(n))
    with open(journal) as f:
        started = [int(line) for line in f]
    assert sorted(started) == [0, 1, 2, 3, 4, 4, 5, 6, 7], started


@pytest.mark.timeout(60)
def test_a_part_handed_back_that_kills_its_worker_fails_in_its_place(make_pool):
    # the chunk hands back its inputs after the first; the part that holds
    # input 13 kills every worker that runs it: with max_retries=0 the map
    # yields 0-12, then raises WorkerLostError for input 13
    from distex_zmq.errors import WorkerLostError
    from tests import fault_tasks

    pool = make_pool(2, max_retries=0)
    n = 20
    it = pool.map(fault_tasks.nap_or_die, range(n), [13] * n, [0.01] * n, chunksize=n)
    got = []
    with pytest.raises(WorkerLostError) as caught:
        for value in it:
            got.append(value)
    assert got == list(range(13))
    # the part names its chunk's task id, not the broker's id of the part
    shown = re.search(r"task (\d+) \(", str(caught.value))
    assert shown is not None and int(shown[1]) < 1000, caught.value


@contextlib.contextmanager
def map_results(chunksize: int, ordered: bool) -> Iterator[tuple[QueueSink, MapResults]]:
    """The results of a map, which a test feeds as the pool loop does (``answer``)."""
    loop = asyncio.new_event_loop()
    try:
        sink = QueueSink(lambda: None, loop, 100, 1)
        yield sink, MapResults(sink, pickle.loads, ChunkSizer(chunksize, True), ordered, None)
    finally:
        loop.close()


def answer(task: Task, status: int, values: list[int], first: int) -> None:
    """Deliver a result of chunk ``task``, its ``values`` from its input ``first`` on."""
    task.sink.deliver(task, status, (pickle.dumps(values), [], 10, first))


@pytest.mark.timeout(30)
def test_an_empty_piece_of_a_chunk_takes_no_other_parts_place():
    # A chunk whose results all went in pieces (the worker's watch thread
    # sends the results done while the chunk's last input ends) finishes
    # with no result, at the offset where its inputs end. When the chunk
    # runs the first part of inputs handed back, that offset is the first
    # input of the next part. Stored there, the empty piece replaced that
    # part's piece, and an ordered map skipped that input: 199 results of
    # 200, the rest shifted (seen about once in a thousand maps of 200
    # two-millisecond inputs at chunksize=200 on a loaded machine).
    with map_results(6, ordered=True) as (sink, results):
        chunk = Task(1, 1, b"", p.FLAG_CHUNK, b"", [], sink, tag=0)
        rest = Task(3, 1, b"", p.FLAG_CHUNK, b"", [], sink, tag=0)
        results.submitted(0, [chunk], [tuple(range(6))], chunked=True)
        answer(chunk, p.STATUS_PARTIAL, [0, 1], 0)
        # the chunk hands back 2-5: it runs 2 again, another worker 3-5
        answer(rest, p.STATUS_OK, [3, 4, 5], 3)
        answer(chunk, p.STATUS_PARTIAL, [2], 2)
        answer(chunk, p.STATUS_OK, [], 3)  # its pieces answered all of it
        results.collect()
        assert sorted(results.pop_values()) == [0, 1, 2, 3, 4, 5]
        assert results.finished


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_an_empty_result_after_its_chunk_was_yielded_opens_nothing(ordered):
    # The watch thread's piece may hold every result of a chunk (it looked
    # after the last input returned, before the main thread took the chunk
    # back), and the worker's own result of the chunk, which frees its
    # credit, follows it, empty. The map may have yielded the chunk by then:
    # taken as a piece, the empty result opened the chunk again, which never
    # finished, and the map waited for ever (seen at chunk 1,502 of a map of
    # 2,000 while py-spy paused its workers for samples).
    with map_results(3, ordered) as (sink, results):
        chunk = Task(1, 1, b"", p.FLAG_CHUNK, b"", [], sink, tag=0)
        after = Task(2, 1, b"", p.FLAG_CHUNK, b"", [], sink, tag=1)
        results.submitted(0, [chunk, after], [(0, 1, 2), (3, 4, 5)], chunked=True)
        answer(chunk, p.STATUS_PARTIAL, [0, 1, 2], 0)
        assert results.collect()
        assert sorted(results.pop_values()) == [0, 1, 2]
        answer(chunk, p.STATUS_OK, [], 3)  # the worker's own, after the pieces
        answer(after, p.STATUS_OK, [3, 4, 5], 0)
        assert results.collect()
        assert results.pop_values() == [5, 4, 3]  # last first, for pop()
        assert not results.collect()
        assert results.finished


def _chunk_past_its_budget(
    gate: list[int],
) -> tuple[ResultWatch, list[list], list[int], Iterator[int], list[int]]:
    """The watch thread of a worker, driven as the main thread drives it:
    chunk 7 of the inputs in ``gate`` started a second ago, none taken yet;
    ``(watch, messages it sent, gate, the chunk's iterator of inputs, its
    results)``."""
    sent: list[list] = []
    batch = p.Writer(p.RESULT)
    watch = ResultWatch(sent.append, lambda: batch, pickle.dumps, lambda value: False)
    watch.lock.release()  # as the main thread does while a chunk runs
    inputs = iter(gate)
    results: list[int] = []
    watch.begin(7, results, time.perf_counter() - 1, 0, gate, inputs)
    return watch, sent, gate, inputs, results


def test_a_split_chunk_counts_its_later_pieces_from_the_inputs_it_kept():
    # The watch thread of a worker, driven as the main thread drives it: a
    # chunk of five inputs has answered two and runs the third past its
    # budget. The split keeps the third (the chunk's payload from then on)
    # and hands back the fourth and fifth; a piece sent after it counts its
    # mark in that payload, as the broker does, not in the first one.
    watch, sent, gate, inputs, results = _chunk_past_its_budget([10, 11, 12, 13, 14])
    for _ in range(3):
        results.append(next(inputs) * 2)
    results.pop()  # the third runs

    def looked() -> list[tuple[int, int, object]]:
        with watch.lock:
            watch._look()
        frames = sent.pop()
        kind, count, buf = p.check(frames[0])
        reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), frames)
        return [
            (status, mark, pickle.loads(reader.data(size, nbuffers)[0]))
            for _, status, _, size, nbuffers, mark in p.result_entries(buf, count)
        ]

    assert looked() == [
        (p.STATUS_PARTIAL, 2, [20, 22]),
        (p.STATUS_SPLIT, 2, (12,)),
        (p.STATUS_HANDED_BACK, 3, (13,)),
        (p.STATUS_HANDED_BACK, 4, (14,)),
    ]
    assert gate == [] and next(inputs, None) is None  # the chunk ends after its input
    results.append(24)
    assert looked() == [(p.STATUS_PARTIAL, 1, [24])]
    assert watch.end() == (3, 3)


def test_a_chunk_past_its_budget_before_its_first_input_is_split_once_one_runs():
    # The main thread of a worker lost its core between starting a chunk
    # and taking its first input, long enough for the chunk's budget to
    # pass: no input ran, so nothing says that they are slow, and the watch
    # leaves the chunk whole. Once an input runs past the budget, it splits.
    watch, sent, gate, inputs, _ = _chunk_past_its_budget([10, 11, 12, 13, 14])
    with watch.lock:
        watch._look()
    assert sent == [] and gate == [10, 11, 12, 13, 14]

    assert next(inputs) == 10  # the first input runs
    with watch.lock:
        watch._look()
    kind, count, buf = p.check(sent.pop()[0])
    assert [(status, mark) for _, status, _, _, _, mark in p.result_entries(buf, count)] == [
        (p.STATUS_SPLIT, 0),
        (p.STATUS_HANDED_BACK, 1),
        (p.STATUS_HANDED_BACK, 2),
        (p.STATUS_HANDED_BACK, 3),
        (p.STATUS_HANDED_BACK, 4),
    ]
    assert gate == [] and next(inputs, None) is None
    assert watch.end() == (0, 1)
