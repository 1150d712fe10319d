"""The kinds of pool that the executor contract runs against.

Every test of ``tests/contract`` takes ``executor`` (one pool of the kind,
shared by the tests of a module that leave no state behind) or
``make_executor`` (a fresh pool of the kind, with options, shut down after
the test), and so runs once per kind, in the spirit of the executor mixins
of CPython's ``test_concurrent_futures``:

- ``local``: ``Pool(2)``, workers that are children of the test process;
- ``spawner``: ``Pool(None, ['127.0.0.1:PORT/2'])``, two workers started by
  a ``python -m distex_zmq.spawner`` on loopback without a secret;
- ``ssh``: ``Pool(None, ['ssh://dzq-a/2'])``, two workers on a host of the
  network-namespace cluster (``tests.multihost``; needs root, else skipped).

Each kind has two workers, none of them local to the pool's process unless
it is ``local``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from distex_zmq import Pool
from tests.helpers import LoopbackSpawner, wait_until
from tests.multihost import REMOTE_PYTHON, Cluster, unavailable

KINDS = ("local", "spawner", "ssh")
#: workers of every kind of pool
WORKERS = 2


@dataclass
class PoolKind:
    """How to make a pool of one kind, and what stays the same across its pools."""

    name: str
    num_workers: int | None
    hosts: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    cluster: Cluster | None = None

    def make(self, **kwargs: Any) -> Pool:
        return Pool(self.num_workers, self.hosts, **{**self.options, **kwargs})

    def host_processes(self) -> set[int]:
        """Pids of pool processes on the cluster's hosts (none for the other kinds)."""
        if self.cluster is None:
            return set()
        return {pid for procs in self.cluster.pool_processes().values() for pid in procs}


@pytest.fixture(scope="module", params=KINDS)
def kind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoolKind]:
    """The kind of pool of this module's tests, with what it needs running."""
    if request.param == "local":
        yield PoolKind("local", WORKERS)
    elif request.param == "spawner":
        spawner = LoopbackSpawner(tmp_path_factory.mktemp("spawner") / "spawner.log")
        try:
            hosts = [f"127.0.0.1:{spawner.port}/{WORKERS}"]
            yield PoolKind("spawner", None, hosts, {"secret": None})
        finally:
            spawner.stop()
    else:
        reason = unavailable()
        if reason is not None:
            pytest.skip(reason)
        cluster = request.getfixturevalue("cluster")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(cluster.home))
            mp.delenv("SSH_AUTH_SOCK", raising=False)
            yield PoolKind(
                "ssh", None, [f"ssh://dzq-a/{WORKERS}"], {"remote_python": REMOTE_PYTHON}, cluster
            )
            left = cluster.pool_processes()
            if left and not wait_until(lambda: not cluster.pool_processes(), timeout=10):
                pytest.fail(f"pool processes left on the hosts: {cluster.pool_processes()}")


@pytest.fixture(scope="module")
def executor(kind: PoolKind) -> Iterator[Pool]:
    """One ready pool of the kind for the module's tests that leave no state behind."""
    pool = kind.make()
    try:
        pool.run_on_all(int, 0)
        yield pool
    finally:
        pool.shutdown()


@pytest.fixture
def make_executor(kind: PoolKind, make_pool: Callable[..., Pool]) -> Iterator[Callable[..., Pool]]:
    """``make_executor(**options)``: a fresh pool of the kind, shut down after the test.

    For the SSH kind the test also must leave no new process on the hosts.
    """
    before = kind.host_processes()
    pools: list[Pool] = []

    def make(**kwargs: Any) -> Pool:
        pool = make_pool(kind.num_workers, kind.hosts, **{**kind.options, **kwargs})
        pools.append(pool)
        return pool

    yield make
    for pool in pools:  # here, not in make_pool's finalizer, which runs after this one
        pool.shutdown(cancel_futures=True, timeout=30)  # bounded: see tests/conftest.py
    assert kind.cluster is None or wait_until(lambda: kind.host_processes() <= before, 10), (
        f"pool processes left on the hosts: {kind.host_processes() - before}"
    )
