"""Elastic pools on the multi-host cluster (``tests.multihost``): hosts added
to a running pool take work, removed ones are left empty, bad requests fail
clearly and leave the pool working. Spawners on ``dzq-a`` and ``dzq-b`` are
those of ``test_spawner``'s fixtures; ``dzq-c`` is reached over SSH.
(Local workers: ``test_elastic``.)
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from distex_zmq import HostConnectionError, WorkerLostError
from distex_zmq.runtime.reconnect import RECONNECT_DELAY
from tests import tasks, test_spawner
from tests.helpers import wait_until
from tests.multihost import REMOTE_PYTHON, unavailable

REASON = unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.timeout(180),
]
# the spawners on dzq-a and dzq-b, and the cluster with their secret
secret_file = test_spawner.secret_file
spawners = test_spawner.spawners
hosts = test_spawner.hosts
at = test_spawner.at


def _sessions_stopped(cluster, host) -> int:
    return cluster.spawner_log(host).count("stopped by its pool")


def test_hosts_added_mid_map_take_work_and_removed_ones_are_left_empty(hosts, make_pool):
    here = socket.gethostname()
    pool = make_pool(
        1, remote_python=REMOTE_PYTHON, initializer=tasks.init_state, initargs=("k", 7)
    )
    results: list = []
    started = threading.Event()

    def consume():
        for r in pool.map(tasks.host_and_value, [0.05] * 80, range(80), chunksize=1):
            results.append(r)
            started.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert started.wait(30)
    # the pool started without remote hosts: no TCP endpoint, no secret loaded
    spawner = at(hosts, "dzq-a", 2)
    pool.add_hosts([spawner, "ssh://dzq-c/1"])
    assert pool.total_workers() == 4
    thread.join(60)
    assert [v for _, v in results] == list(range(80))
    assert {"dzq-a", "dzq-c"} <= {h for h, _ in results}
    # the initializer ran on every added worker
    states = pool.run_on_all(tasks.get_state)
    assert sorted(s["k"] for s in states) == [7] * 4

    stopped = _sessions_stopped(hosts, "dzq-a")
    pool.remove_hosts([hosts.addresses["dzq-a"], "dzq-c"])
    assert pool.total_workers() == 1
    assert hosts.pool_processes() == {}, "no worker or agent left on the hosts"
    assert _sessions_stopped(hosts, "dzq-a") == stopped + 1, "the spawner session ended"
    assert set(pool.map(tasks.hostname_after, [0.01] * 10)) == {here}
    # and no reconnection brings them back
    time.sleep(3)
    assert hosts.pool_processes() == {}


def test_removed_host_drains_its_running_task(hosts, make_pool):
    pool = make_pool(1, ["ssh://dzq-c/1"], qsize=1, remote_python=REMOTE_PYTHON)
    pool.run_on_all(int, 0)
    futures = [pool.submit(tasks.host_and_value, 1.0, i) for i in range(4)]
    time.sleep(0.3)  # the first two run, one on each worker
    pool.remove_hosts("dzq-c", drain=True)
    assert hosts.pool_processes() == {}
    where = [f.result(timeout=30)[0] for f in futures]
    assert where.count("dzq-c") == 1, where


def test_removed_host_drains_only_until_its_timeout(hosts, make_pool):
    here = socket.gethostname()
    pool = make_pool(1, ["ssh://dzq-c/1"], qsize=1, max_retries=0, remote_python=REMOTE_PYTHON)
    pool.run_on_all(int, 0)
    futures = [pool.submit(tasks.host_and_value, 3.0, i) for i in range(2)]
    time.sleep(0.3)  # one runs on each worker
    pool.remove_hosts("dzq-c", drain=True, timeout=0.5)
    assert hosts.pool_processes() == {}
    # the task still running on dzq-c after the timeout ran again here,
    # counting no try (max_retries=0)
    assert [f.result(timeout=30) for f in futures] == [(here, 0), (here, 1)]


def test_removed_host_without_drain_requeues_without_a_retry(hosts, make_pool):
    here = socket.gethostname()
    spec = at(hosts, "dzq-a", 1)
    pool = make_pool(1, [spec], qsize=1, max_retries=0)
    pool.run_on_all(int, 0)
    futures = [pool.submit(tasks.host_and_value, 1.0, i) for i in range(2)]
    time.sleep(0.3)
    pool.remove_hosts(spec, drain=False)
    assert hosts.workers("dzq-a") == []
    # max_retries=0: the task taken from dzq-a counted no try
    assert [f.result(timeout=30) for f in futures] == [(here, 0), (here, 1)]


def test_bad_hosts_raise_and_the_pool_works_on(hosts, make_pool):
    pool = make_pool(1, ["ssh://dzq-c/1"], remote_python=REMOTE_PYTHON, connect_timeout=5)
    with pytest.raises(ValueError, match="'dzq-b'"):
        pool.remove_hosts(["dzq-b"])
    with pytest.raises(ValueError, match="in the pool already"):
        pool.add_hosts("ssh://dzq-c/2")
    # all or nothing: dzq-a connects, dzq-c runs no spawner (its port refuses
    # at once, or, where the network drops the attempt, nothing answers)
    with pytest.raises(HostConnectionError, match="connection was refused|no spawner answered"):
        pool.add_hosts([at(hosts, "dzq-a", 1), at(hosts, "dzq-c", 1)])
    with pytest.raises(HostConnectionError):
        pool.add_hosts("ssh://nosuchhost.invalid/1")
    assert pool.total_workers() == 2
    # dzq-a's worker leaves (once done with any task it took meanwhile)
    assert wait_until(lambda: hosts.workers("dzq-a") == [], timeout=10), hosts.workers("dzq-a")
    assert sorted(pool.run_on_all(socket.gethostname)) == sorted([socket.gethostname(), "dzq-c"])
    assert pool.run(tasks.square, 5) == 25


def test_a_lost_host_removed_is_not_reconnected(hosts, make_pool):
    here = socket.gethostname()
    pool = make_pool(
        1,
        ["ssh://dzq-c/1"],
        remote_python=REMOTE_PYTHON,
        heartbeat_timeout=2,
        connect_timeout=3,
    )
    assert sorted(pool.run_on_all(socket.gethostname)) == sorted([here, "dzq-c"])
    hosts.link("dzq-c", up=False)

    def only_here() -> bool:
        try:
            return pool.run_on_all(socket.gethostname) == [here]
        except WorkerLostError:  # it ran on dzq-c as the host was lost
            return False

    assert wait_until(only_here, timeout=30)

    def connecting() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "distex_zmq ssh dzq-c connect"]

    # while the pool tries to reconnect to it: a login that will not come
    assert wait_until(connecting, timeout=30)
    pool.remove_hosts("dzq-c")
    # it did not wait for that login to fail (up to connect_timeout, 5 s at
    # most), which the thread's own call ends and then closes what it opened
    assert any(t.is_alive() for t in connecting())
    assert pool.total_workers() == 1
    hosts.link("dzq-c", up=True)
    time.sleep(RECONNECT_DELAY * 3)
    assert hosts.pool_processes() == {}
    assert pool.run_on_all(socket.gethostname) == [here]
