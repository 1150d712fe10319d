"""Shared fixtures of the distex_zmq test suite.

How task functions reach the workers
------------------------------------
Workers are ``python -m distex_zmq.worker`` children of the test process. The
local launcher gives them ``PYTHONPATH`` = the client's ``sys.path`` plus its
working directory, and the default function pickler (dill), like cloudpickle
and plain pickle, sends a function of an importable module *by reference*
(module name + qualified name). So a task function must live in a module the
worker can import under the same name.

- ``tests/`` is a package (``tests/__init__.py``) and the task functions live
  in ``tests/tasks.py``; tests use ``from tests import tasks``. pytest runs
  with ``--import-mode=importlib``, which does not touch ``sys.path``, so the
  lines below put the repository root on ``sys.path``: then ``tests.tasks``
  imports in the client and, through the inherited ``PYTHONPATH``, in every
  worker, whatever directory pytest is started from. (Checked: without this,
  ``pytest /work/main/tests`` started from ``/tmp`` fails every task with
  ``SerializationError ... No module named 'tests.tasks'``.)
- Functions defined in a test module also work while the root is on the path
  (the module is ``tests.test_x`` and the worker imports it, pytest and all),
  but that is slow and fragile, so the suite does not rely on it.
- Lambdas and closures are pickled *by value* by dill and cloudpickle (the
  ``func_pickle`` default is dill); plain pickle refuses them in the caller.

Leak check
----------
The autouse fixture ``no_leaks`` fails any test after which a new child
process (a worker), the keeper of a worker's process group that outlived
its worker, or a thread named ``distex_zmq pool loop`` is still alive
about 5 s after the test ended, and then kills/shuts down the leftovers so
that one leak does not make the following tests fail too. The logic is
``tests.helpers.LeakCheck``; ``test_lifecycle`` proves that it sees a leaked
pool and a stray child.

The cluster
-----------
``cluster`` (once per run) builds the multi-host cluster of
``tests/multihost.py``: network namespaces with an sshd each, and a client
``HOME`` that reaches them. ``ssh_home`` points ``HOME`` at it for one test
and then checks that no agent or worker of any pool is left on any host.
Both need root; the modules that use them skip with the reason otherwise.

Pools
-----
``pool``: a fresh ``Pool(2)``, ready, shut down after the test.
``shared_pool``: one ``Pool(2)`` per module for tests that only compute (a
pool costs most of a second to start on 2 cores).
``make_pool(*args, **kwargs)``: a factory of pools with options, each shut
down after the test (its finalizer is in place the moment the pool exists).
``tests/contract`` runs the executor contract against local, loopback-spawner
and SSH pools (its own ``conftest.py``: ``executor`` and ``make_executor``).

Another Python
--------------
``other_python_venv`` (once per run) is the python of a venv of a CPython
of another minor version than the tests' (``helpers.other_python``: one of
pyenv's versions, as on the CI machine, or ``python3.X`` on PATH) with this
distex_zmq installed; tests that use it skip, saying so, where there is none.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distex_zmq import Pool  # noqa: E402
from tests.helpers import (  # noqa: E402
    LeakCheck,
    other_python,
    pid_alive,  # noqa: F401 (re-exported)
    wait_until,  # noqa: F401 (re-exported)
)
from tests.multihost import HOSTS, Cluster  # noqa: E402

#: Seconds a test's processes and threads get to wind down after it.
WIND_DOWN = 5.0
#: Seconds a pool of ``make_pool`` lets its tasks run on at the end of a test.
TEARDOWN_DRAIN = 30.0


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail the test if it leaves a child process or a pool thread behind."""
    check = LeakCheck()
    yield
    gc.collect()
    pids, threads = check.leftovers(timeout=WIND_DOWN)
    if pids or threads:
        descriptions = check.describe(pids)
        check.clean_up(pids, threads)
        pytest.fail(
            f"the test left {len(pids)} child process(es) and {len(threads)} pool "
            f"thread(s) alive {WIND_DOWN} s after it ended: {descriptions}"
        )


def _started_pool():
    """A pool of 2 local workers, all up (so a pool that cannot start fails
    here, not in the test), shut down when the generator closes."""
    p = Pool(2)
    try:
        p.run_on_all(int, 0)
        yield p
    finally:
        p.shutdown()


@pytest.fixture
def pool():
    """A pool of 2 local workers, ready, shut down after the test."""
    yield from _started_pool()


@pytest.fixture(scope="module")
def shared_pool():
    """One pool of 2 workers for a whole module, for tests that only compute.

    Starting a pool costs most of a second on 2 cores, so tests that leave
    no state behind (no cancelled or killed tasks, no shutdown) share this
    one; the others use ``pool``. Its workers and thread exist before each
    test starts, so the leak check does not count them.
    """
    yield from _started_pool()


@pytest.fixture
def make_pool():
    """``make_pool(*args, **kwargs)``: a ``Pool(*args, **kwargs)``, shut down
    (cancelling what waits) after the test, also when the test fails."""
    pools: list[Pool] = []

    def make(*args, **kwargs) -> Pool:
        pool = Pool(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in reversed(pools):
        # bounded: a test that timed out may leave a task that never ends,
        # and its timeout no longer runs here
        pool.shutdown(cancel_futures=True, timeout=TEARDOWN_DRAIN)


@pytest.fixture(scope="session")
def cluster():
    """The multi-host cluster (``tests.multihost``), once for the whole run."""
    c = Cluster()
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture
def ssh_home(cluster, monkeypatch):
    """The cluster, with ``HOME`` pointing at its client; after the test,
    checks that no process of any pool is left on any host."""
    monkeypatch.setenv("HOME", str(cluster.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield cluster
    for host in HOSTS:
        cluster.link(host, up=True)
    left = cluster.pool_processes()
    if left and not wait_until(lambda: not cluster.pool_processes(), timeout=10):
        left = cluster.pool_processes()
        for procs in left.values():
            for pid in procs:
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"pool processes left on the hosts: {left}")


@pytest.fixture(scope="session")
def other_python_venv(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The python of a venv of another Python minor version (``other_python``)
    with this distex_zmq installed in it (editable, from the package index
    that pip is configured with)."""
    python = other_python()
    if python is None:
        pytest.skip(
            f"no CPython 3.10+ other than {sys.version_info[0]}.{sys.version_info[1]} here "
            "(looked in pyenv's versions and for python3.X on PATH)"
        )
    venv = tmp_path_factory.mktemp("other_python") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(ROOT)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(install)} failed:\n{done.stderr}"
    return str(venv / "bin" / "python")
