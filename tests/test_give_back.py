"""Tasks held behind a long one: a worker whose task has run
``LONG_TASK_US`` gives back the tasks it holds and has not started (the rest
of its TASK message, the messages waiting in its socket), and the broker
sends it nothing more until that task ends, so that idle workers run them,
as the shared queue of ``ProcessPoolExecutor`` has its idle workers do.

The broker does not hold a second task back from a worker whose task's
function ran short last time: a function whose run time depends on its
arguments is the case. The long task here waits for a file that the test
makes only once the tasks queued with it are done (or for 30 s): without
the give-back, one of them waits behind it and the test's wait for them
ends without them.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from distex_zmq import TaskTimeoutError
from tests import tasks
from tests.helpers import wait_until


@pytest.mark.timeout(90)
@pytest.mark.parametrize("executor", ["distex_zmq", "ProcessPoolExecutor"])
def test_tasks_queued_behind_a_long_one_run_on_a_free_worker(make_pool, tmp_path, executor):
    if executor == "distex_zmq":
        pool = make_pool(2, qsize=2)
        pool.run_on_all(tasks.pid_once_exists, None)  # known as quick on both
    else:
        pool = concurrent.futures.ProcessPoolExecutor(2)
        pool.submit(tasks.pid_once_exists, None).result(timeout=30)
    gate = tmp_path / "go"
    try:
        slow = pool.submit(tasks.pid_once_exists, str(gate))
        quick = [pool.submit(tasks.pid_once_exists, None) for _ in range(8)]
        done, _ = concurrent.futures.wait(quick, timeout=20)
        assert len(done) == len(quick), "quick tasks waited behind the long one"
        assert not slow.done()
    finally:
        gate.touch()
        if executor != "distex_zmq":
            pool.shutdown()
    # none ran behind it on its worker, nor after it
    assert slow.result(timeout=30) not in {f.result() for f in quick}


@pytest.mark.timeout(90)
def test_tasks_waiting_in_the_socket_are_given_back(make_pool, tmp_path):
    # both workers run a long task when the quick ones come, each in a
    # message of its own: one waits in each worker's socket, the others in
    # the queue; the worker whose long task ends first runs them all
    pool = make_pool(2, qsize=2)
    pool.run_on_all(tasks.pid_once_exists, None)
    gate, other_gate = tmp_path / "go", tmp_path / "go too"
    try:
        slow = pool.submit(tasks.pid_once_exists, str(gate))
        other = pool.submit(tasks.pid_once_exists, str(other_gate))
        assert wait_until(lambda: [w.tasks_held for w in pool.status().workers] == [1, 1])
        quick = [pool.submit(tasks.pid_once_exists, None) for _ in range(4)]
        other_gate.touch()
        done, _ = concurrent.futures.wait(quick, timeout=20)
        assert len(done) == len(quick), "a quick task waited behind the long one"
        assert not slow.done()
    finally:
        gate.touch()
    assert {f.result() for f in quick} == {other.result(timeout=30)}
    assert slow.result(timeout=30) != other.result()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_inputs_given_back_keep_the_order_of_a_map_and_run_once(make_pool, tmp_path, chunksize):
    # input 0 waits until every input outside its own chunk has run: those
    # queued behind it at its worker must be given back and run elsewhere
    pool = make_pool(2, qsize=2)
    warm = tmp_path / "warm"
    warm.mkdir()
    pool.run_on_all(tasks.run_counted, str(warm), 0, 0)  # known as quick on both
    runs = tmp_path / "runs"
    runs.mkdir()
    n = 30
    waits = [n - chunksize] + [0] * (n - 1)
    results = list(
        pool.map(tasks.run_counted, [str(runs)] * n, range(n), waits, chunksize=chunksize)
    )
    assert [i for i, _ in results] == list(range(n))
    assert results[0][1], "inputs waited behind the long one"
    counts = {path.name: path.read_text().count("ran") for path in runs.iterdir()}
    assert counts == {str(i): 1 for i in range(n)}


@pytest.mark.timeout(90)
def test_a_worker_that_gave_back_tasks_takes_no_more_until_its_task_ends(make_pool, tmp_path):
    pool = make_pool(2, qsize=4)
    pool.run_on_all(tasks.pid_once_exists, None)
    gate = tmp_path / "go"
    try:
        slow = pool.submit(tasks.pid_once_exists, str(gate))
        first = [pool.submit(tasks.pid_once_exists, None) for _ in range(6)]
        concurrent.futures.wait(first, timeout=20)
        assert all(f.done() for f in first)
        later = [pool.submit(tasks.pid_once_exists, None) for _ in range(20)]
        concurrent.futures.wait(later, timeout=20)
        assert all(f.done() for f in later)
        assert not slow.done()
    finally:
        gate.touch()
    pid = slow.result(timeout=30)
    assert pid not in {f.result() for f in first + later}
    # afterwards it takes tasks again
    assert pid in set(pool.run_on_all(tasks.pid))


@pytest.mark.timeout(90)
def test_a_task_given_back_is_pending_again_and_can_be_cancelled(make_pool, tmp_path):
    # a submitted task that went to the worker behind a long one is running
    # (ProcessPoolExecutor's call queue alike); given back unrun, it waits
    # in the queue again: pending, and cancelled it never runs
    pool = make_pool(1, qsize=2)
    pool.run_on_all(tasks.pid_once_exists, None)  # known as quick
    pool.run(tasks.meet, str(tmp_path / "warm"), "pass")
    gate, trace = tmp_path / "go", tmp_path / "held ran"
    try:
        slow = pool.submit(tasks.pid_once_exists, str(gate))
        held = pool.submit(tasks.meet, str(trace), "come")
        # sent to the worker (where it was running), then given back
        assert wait_until(lambda: held._task.worker is not None and not held.running())
        assert pool.status().totals.queued == 1
        assert held.cancel() and held.cancelled()
    finally:
        gate.touch()
    slow.result(timeout=30)
    assert pool.run(tasks.meet, str(tmp_path / "after"), "come")[2]
    assert not trace.exists(), "the task cancelled after it was given back ran"


@pytest.mark.timeout(90)
def test_task_timeout_still_ends_a_long_task_that_gave_back_others(make_pool):
    pool = make_pool(2, qsize=2, task_timeout=1.0)
    pool.run_on_all(tasks.sleep_return, 0, 0)
    slow = pool.submit(tasks.sleep_return, 60, "slow")
    quick = [pool.submit(tasks.sleep_return, 0, i) for i in range(8)]
    assert [f.result(timeout=30) for f in quick] == list(range(8))
    with pytest.raises(TaskTimeoutError):
        slow.result(timeout=30)
    assert pool.submit(tasks.sleep_return, 0, "after").result(timeout=30) == "after"


@pytest.mark.timeout(90)
def test_max_tasks_per_child_with_tasks_given_back(make_pool, tmp_path):
    pool = make_pool(2, qsize=2, max_tasks_per_child=3)
    runs = tmp_path / "runs"
    runs.mkdir()
    pool.submit(tasks.run_counted, str(tmp_path), -1, 0).result(timeout=30)
    n = 12
    futures = [pool.submit(tasks.run_counted, str(runs), 0, 4)]
    futures += [pool.submit(tasks.run_counted, str(runs), i, 0) for i in range(1, n)]
    assert [f.result(timeout=60)[0] for f in futures] == list(range(n))
    counts = {path.name: path.read_text().count("ran") for path in runs.iterdir()}
    assert counts == {str(i): 1 for i in range(n)}
