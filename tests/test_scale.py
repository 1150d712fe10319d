"""The pool under the numbers and limits a real program reaches: a client
out of file descriptors, a worker that cannot start, a socket directory
that goes away."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distex_zmq import PoolClosedError
from distex_zmq.launch.local import die_with_parent
from tests import fault_tasks as ft
from tests.helpers import (
    MakePool,
    child_pids,
    pid_alive,
    wait_until,
    workers_run_sitecustomize,
)

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def fds_used_up() -> Iterator[list[int]]:
    """Use up the file descriptors of this process up to its hard limit (a
    pool raises the soft limit to the hard one; a hard limit lowered may not
    be raised again); yield the list of those taken (close some to free
    them), and give them all back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard > 1 << 20:
        pytest.skip(f"the hard limit of open files is {hard}: too many to use up")
    filler: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        yield filler
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(60)
def test_a_replacement_that_cannot_start_is_tried_again(make_pool: MakePool) -> None:
    # the client runs out of file descriptors as its worker dies: the
    # replacement cannot be started (no pipes for it) until some are closed
    pool = make_pool(1)
    victim = pool.run(ft.pid)
    with fds_used_up():
        # its reaping closes its pidfd and its two pipes: too few for a new
        # worker's pipes
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(victim), timeout=10)
        future = pool.submit(ft.pid)
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=2)
    assert future.result(timeout=30) not in (victim, None)
    assert pool.run(ft.square, 7) == 49


@pytest.mark.timeout(60)
def test_a_worker_starts_after_the_socket_directory_was_removed(make_pool: MakePool) -> None:
    # a cleaner of TMPDIR removed the directory of the broker's socket
    pool = make_pool(1)
    victim = pool.run(ft.pid)
    (socket_dir,) = glob.glob(os.path.join(tempfile.gettempdir(), f"distex_zmq-{os.getpid()}-*"))
    shutil.rmtree(socket_dir)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(victim), timeout=10)
    assert pool.submit(ft.pid).result(timeout=20) not in (victim, None)
    assert pool.run(ft.square, 7) == 49


def slow_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the workers started from now on hang before their code runs (in
    a ``sitecustomize``) once the returned path exists."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "slow-start"
    workers_run_sitecustomize(
        site,
        f"import os, time\nif os.path.exists({str(marker)!r}):\n    time.sleep(60)\n",
        monkeypatch,
    )
    return marker


@pytest.mark.timeout(60)
def test_cancel_futures_ends_a_task_requeued_after_its_worker_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_pool: MakePool
) -> None:
    # the task ran on a worker that died: it waits in the queue to run again
    # (its future runs already) while the replacement starts
    marker = slow_start(tmp_path, monkeypatch)
    pool = make_pool(1)
    victim = pool.run(ft.pid)
    future = pool.submit(ft.sleep_then, 10.0, 1)
    assert wait_until(future.running, timeout=10)
    marker.touch()
    os.kill(victim, signal.SIGKILL)
    # the pool has seen the death: the task waits in the queue
    assert wait_until(lambda: pool.status().totals.workers_lost == 1, timeout=10)
    pool.shutdown(cancel_futures=True)
    assert future.done()
    assert isinstance(future.exception(timeout=0), concurrent.futures.CancelledError)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not die_with_parent(), reason="no setpriv with --pdeathsig")
def test_a_worker_hung_before_its_code_runs_dies_with_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = slow_start(tmp_path, monkeypatch)
    marker.touch()
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            f"sys.path[:0] = [{str(tmp_path / 'site')!r}, {str(ROOT)!r}]\n"
            "from distex_zmq import Pool\n"
            "pool = Pool(1)\n"
            "pool.submit(abs, 1)\n"
            "time.sleep(60)\n",
        ],
        stdin=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        assert wait_until(lambda: bool(child_pids(client.pid)), timeout=20)
        workers = child_pids(client.pid)
        time.sleep(0.5)  # the worker is in its sitecustomize
        client.kill()
        client.wait()
        assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), timeout=10)
    finally:
        client.kill()
        client.wait()
        for pid in workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_resize_that_cannot_start_every_worker_adds_none(make_pool: MakePool) -> None:
    # children of this process that earlier tests left (multiprocessing's
    # resource tracker lives as long as the process) are not the pool's
    others = child_pids()
    pool = make_pool(1)
    pool.run(ft.pid)
    with fds_used_up() as filler:
        # room for the pipes of one new worker, not of two
        for _ in range(8):
            os.close(filler.pop())
        with pytest.raises(OSError):
            pool.resize(4)
    assert pool.total_workers() == 1
    assert wait_until(lambda: len(child_pids() - others) == 1, timeout=10)
    assert len(pool.run_on_all(ft.pid)) == 1


@pytest.mark.timeout(60)
def test_a_map_kept_but_never_iterated_runs_all_its_inputs_by_the_shutdown(
    make_pool: MakePool,
) -> None:
    # as with ProcessPoolExecutor: its inputs run before the pool stops, and
    # its results can be read after
    pool = make_pool(2)
    results = pool.map(ft.square, iter(range(500)))
    pool.shutdown()
    assert list(results) == [x * x for x in range(500)]


@pytest.mark.timeout(60)
def test_a_map_of_a_list_read_in_part_runs_the_rest_by_the_shutdown(make_pool: MakePool) -> None:
    # as with ProcessPoolExecutor, whose map submits every input at the
    # call: read once, then left by the shutdown (the end of a with block),
    # it raised PoolClosedError where it was read on. One of a generator,
    # which may be endless, still stops where it was read.
    pool = make_pool(2)
    of_a_range = pool.map(ft.square, range(3000))
    of_a_list = pool.map(ft.square, list(range(3000)))
    of_a_generator = pool.map(ft.square, iter(range(3000)))
    assert next(of_a_range) == next(of_a_list) == next(of_a_generator) == 0
    for _ in of_a_list:
        break  # a for loop left: the map is kept, as the variable holds it
    pool.shutdown()
    assert list(of_a_range) == [x * x for x in range(1, 3000)]
    assert list(of_a_list) == [x * x for x in range(2, 3000)]
    with pytest.raises(PoolClosedError, match="shut down before input #"):
        list(of_a_generator)


#: A client that starts ``Pool(N)`` under the limit of open files it is
#: given, and prints its soft limit after, or the error of its start and how
#: many of its children are still alive a moment after.
_OPEN_FILES_CLIENT = """
import os, resource, sys
sys.path.insert(0, {root!r})
from distex_zmq import Pool
from tests.helpers import child_pids, wait_until
try:
    with Pool({workers}) as pool:
        print("workers", len(set(pool.run_on_all(os.getpid))))
except OSError as e:
    print("error", e.errno, e)
    print("children", int(not wait_until(lambda: not child_pids(), timeout=10)))
print("soft limit", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _client_with_open_files(workers: int, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-c", _OPEN_FILES_CLIENT.format(root=str(ROOT), workers=workers)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.timeout(120)
def test_a_pool_raises_the_soft_limit_of_open_files_to_the_hard_one_for_its_workers() -> None:
    # 30 local workers need more descriptors than a soft limit of 96 allows
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 512:
        pytest.skip(f"the hard limit of open files is {hard}: too low for 30 workers")
    proc = _client_with_open_files(30, 96, hard)
    assert proc.returncode == 0, proc.stderr
    assert "workers 30\n" in proc.stdout, proc.stdout
    assert f"soft limit {hard}\n" in proc.stdout, proc.stdout


@pytest.mark.timeout(120)
def test_workers_beyond_the_hard_limit_of_open_files_fail_the_start_with_what_to_do() -> None:
    # the start failed with a bare "Too many open files" from wherever the
    # descriptors ran out, or libzmq aborted the client (an assertion on
    # EMFILE in its accept: SIGABRT, no Python error) when the broker's socket
    # had none left for a worker's connection; it now fails before, with
    # EMFILE and what to do, and leaves no worker
    proc = _client_with_open_files(40, 128, 128)
    assert proc.returncode == 0, proc.stderr
    assert "error 24 " in proc.stdout, proc.stdout + proc.stderr
    assert "no room for another local worker" in proc.stdout, proc.stdout
    assert "raise the limit (ulimit -n" in proc.stdout, proc.stdout
    assert "children 0\n" in proc.stdout, proc.stdout
