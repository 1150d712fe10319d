"""Real clients on the pool: script objects (``__main__``) as task data,
dask with ``scheduler=pool``, the joblib backend, scikit-learn, and what
the errors of unpicklable tasks say. Scripts run as subprocesses, so that
``__main__`` is the script, with ``ProcessPoolExecutor`` as the control.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distex_zmq import Pool
from distex_zmq.serialization import PickleType, dumps, loads, pickle_module
from tests import client_tasks
from tests.helpers import CONTROL_WITH_MAX_TASKS, LoopbackSpawner, pid_alive, wait_until

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ROOT = SCRIPTS.parent.parent

joblib = pytest.importorskip("joblib")
pytest.importorskip("dask")


def run_script(name: str, *args: str, timeout: float = 90) -> str:
    """Run ``tests/scripts/<name>`` as ``__main__``; return its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DISTEX_ZMQ_SECRET", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_in(
    directory: Path,
    script: str,
    *args: str,
    options: tuple[str, ...] = (),
    timeout: float = 50,
    name: str = "script.py",
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (its text) as ``name`` in ``directory``, as
    ``__main__``, with the interpreter's ``options``; ``kwargs`` go to
    ``subprocess.run`` (``env``)."""
    (directory / name).write_text(script)
    return subprocess.run(
        [sys.executable, *options, name, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=directory,
        **kwargs,
    )


# objects of the script


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", ["control", "local", "spawner"])
@pytest.mark.parametrize("script", ["script_objects.py", "script_globals.py"])
def test_the_scripts_objects_and_globals_as_with_a_process_pool(tmp_path, script, executor):
    # script_objects.py: classes (with __slots__ too), dataclasses, enums,
    # functions and lambdas of __main__ as arguments, in containers and as
    # results, which are the script's classes; script_globals.py: what the
    # initializer or run_on_all sets, or a task assigns, the script's other
    # functions see in that worker, as in a forked worker
    if executor != "spawner":
        assert run_script(script, executor).endswith("OK\n")
        return
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        assert run_script(script, f"spawner:{spawner.port}").endswith("OK\n")
    finally:
        spawner.stop()


@pytest.mark.timeout(100)
@pytest.mark.parametrize("data_pickle", ["cloudpickle", "dill"])
@pytest.mark.parametrize("script", ["script_objects.py", "script_globals.py"])
def test_the_scripts_objects_and_globals_with_data_pickled_by(script, data_pickle):
    # data_pickle=cloudpickle or dill sends the script's objects as the
    # default does, and its functions inside a task's data share the
    # worker's globals: cloudpickle alone gives them globals of their own
    # (the initializer's model is None to them) and sends a cached function
    # by name, dill alone makes them on the worker's __main__ (NameError)
    assert run_script(script, "local", data_pickle).endswith("OK\n")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", ["control", "local", "spawner"])
def test_tasks_from_a_module_next_to_the_script(tmp_path, executor):
    # `python run.py` with `from utils import work`: local workers import
    # the module as ProcessPoolExecutor's do; a spawner's workers, which do
    # not have the script's directory on their path, fail with an error that
    # says to install it there or to send it by value, and cloudpickle's
    # register_pickle_by_value with func_pickle and data_pickle cloudpickle
    # runs it there
    if executor != "spawner":
        assert run_script("sibling_module.py", executor).endswith("OK\n")
        return
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        assert run_script("sibling_module.py", f"spawner:{spawner.port}").endswith("OK\n")
    finally:
        spawner.stop()


POOL_AT_IMPORT = """\
from distex_zmq import Pool
from tests.helpers import child_pids

pool = Pool(1)  # at import, as a web app's module may make it


def state_here():
    return pool.status().state, len(child_pids())


def use_the_modules_pool():
    return pool.run(abs, -3), pool.status().state, len(child_pids())
"""


@pytest.mark.timeout(60)
def test_a_pool_made_at_the_import_of_a_tasks_module_starts_no_workers_in_a_worker(
    tmp_path, monkeypatch
):
    # the worker imports the module of a function sent by name, and with it
    # makes the module's pool: a pool that starts only at its first use, as
    # a ProcessPoolExecutor does, not one more set of workers per worker
    (tmp_path / "pool_at_import.py").write_text(POOL_AT_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pool_at_import", raising=False)
    import pool_at_import

    try:
        assert pool_at_import.pool.run(pool_at_import.state_here) == ("not started", 0)
        # used in the worker, it starts there
        result = pool_at_import.pool.run(pool_at_import.use_the_modules_pool)
        assert result == (3, "ready", 1)
    finally:
        pool_at_import.pool.shutdown()
        del sys.modules["pool_at_import"]


POOL_USED_AT_IMPORT = """\
from distex_zmq import Pool


def square(x):
    return x * x


with Pool(1) as pool:
    print(list(pool.map(square, range(3))))
"""


@pytest.mark.timeout(60)
def test_a_pool_used_at_the_import_of_a_tasks_module_fails_at_once(tmp_path):
    # each worker imported the module to load `square`, and so mapped with a
    # pool of its own, whose workers did the same: 127 processes in 6 s and
    # climbing, and no answer. (ProcessPoolExecutor cannot be the control:
    # under fork its child waits for the import lock of the module, under
    # spawn its parent waits after the child refused to start a process)
    (tmp_path / "used_at_import.py").write_text(POOL_USED_AT_IMPORT)
    result = run_in(tmp_path, "import used_at_import\n")
    assert result.returncode == 1
    assert (
        "RuntimeError: a pool was used while this worker imported the module of a task's "
        "function: the module's top level uses a pool" in result.stderr
    ), result.stderr


HELPER_MODULE = """\
import threading

LOCAL = threading.local()  # does not pickle
CALLS = [0]


def bump(x):
    CALLS[0] += 1
    return x, CALLS[0]
"""

SCRIPT_WITH_HELPER = """\
import helper
from distex_zmq import Pool

if __name__ == "__main__":
    with Pool(1) as pool:
        # lambdas of the script that use a module next to it
        assert pool.run(lambda x: helper.bump(x), "a") == ("a", 1)
        assert pool.run(lambda x: helper.bump(x), "b") == ("b", 2)
        assert list(pool.map(lambda x: helper.bump(x)[0], "cd")) == ["c", "d"]
        assert pool.run(helper.bump, "e") == ("e", 5)
        assert helper.CALLS == [0]
    print("OK")
"""


@pytest.mark.timeout(60)
def test_a_lambda_that_uses_a_module_next_to_the_script(tmp_path):
    # the module goes by name (as cloudpickle sends it), not with a copy of
    # its globals: one that does not pickle is no error, and the worker's
    # module keeps its own state from task to task
    (tmp_path / "helper.py").write_text(HELPER_MODULE)
    result = run_in(tmp_path, SCRIPT_WITH_HELPER)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK\n"


SCRIPT_WHOSE_TASK_FAILS = """\
import dask
from distex_zmq import Pool


def check(x):
    if x == 1:
        raise ValueError(f"bad input {x}")
    return x


if __name__ == "__main__":
    with Pool(1) as pool:
        try:
            dask.compute(*[dask.delayed(check)(x) for x in range(2)], scheduler=pool)
        except ValueError as error:
            print(error.__cause__)
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", ["control", "local"])
def test_code_written_for_a_process_pool_executor_runs_as_there(executor):
    # except BrokenProcessPool (to make a new pool) after a task that kills
    # its worker and after an initializer that raises; a worker is not
    # "MainProcess" and has a number (current_process()._identity[0]): the
    # pool raised errors that were no BrokenProcessPool, and its workers
    # were main processes with no number (IndexError)
    assert run_script("executor_idioms.py", executor).endswith("OK\n")


SCRIPT_WITH_A_FILE_OPEN = """
import sys
from distex_zmq import Pool

OUT = open(sys.argv[1], sys.argv[2])
OUT.write("the client's header\\n")
OUT.flush()


def work(x):
    OUT.write(f"task {x}\\n")
    OUT.flush()
    return x


if __name__ == "__main__":
    with Pool(2) as pool:
        try:
            print(list(pool.map(work, range(4))))
        except Exception as error:
            print(type(error).__name__, error)
    OUT.close()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["w", "r+", "a"])
def test_a_file_of_the_script_open_for_writing_is_not_emptied_in_workers(tmp_path, mode):
    # dill sent the file to be opened again in each worker, by name and in
    # its mode: "w" emptied what the client had written, "r+" wrote over it
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_WITH_A_FILE_OPEN)
    out = tmp_path / "out.txt"
    out.write_text("")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script), str(out), mode],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    if mode == "a":  # appended to, in a worker as in the client
        assert result.stdout == "[0, 1, 2, 3]\n", result.stdout
        assert lines[0] == "the client's header" and len(lines) == 5, lines
        return
    assert result.stdout.startswith(f"PicklingError cannot send the file '{out}', open in mode"), (
        result.stdout
    )
    assert "open the file in the task" in result.stdout, result.stdout
    assert lines == ["the client's header"], lines


@pytest.mark.timeout(60)
def test_a_remote_traceback_shows_the_file_and_lines_of_the_script(tmp_path):
    # a function of the script in a task's data (dask's) goes by value, and
    # cloudpickle names the file of its code "<dynamic-code>": the traceback
    # named no file and showed none of the script's lines
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_WHOSE_TASK_FAILS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50, env=env
    )
    assert result.returncode == 0, result.stderr
    assert f'File "{script}", line 7, in check' in result.stdout, result.stdout
    assert 'raise ValueError(f"bad input {x}")' in result.stdout, result.stdout


def test_plain_data_is_plain_pickle():
    # the default data pickle costs plain data nothing but a scan of its bytes
    auto = pickle_module(PickleType.auto)
    value = ([1, 2.5, "x"], {"k": (None, b"y")})
    data, buffers = dumps(value, auto.dumps)
    assert data == pickle.dumps(value, protocol=5) and buffers == []
    assert loads(data, buffers, auto.loads) == value


def test_by_value_keeps_large_buffers_out_of_band():
    np = pytest.importorskip("numpy")
    array = np.arange(100_000)
    auto = pickle_module(PickleType.auto)
    value = (array, lambda x: x)  # a lambda: pickled by value
    data, buffers = dumps(value, auto.dumps)
    assert len(buffers) == 1 and len(data) < 10_000
    back = loads(data, buffers, auto.loads)
    assert (back[0] == array).all() and back[1](3) == 3


def test_func_pickle_auto_is_refused():
    with pytest.raises(ValueError, match="data_pickle"):
        Pool(1, func_pickle=PickleType.auto, lazy_create=True)


# executor conventions


def test_max_workers_is_the_number_of_workers():
    pool = Pool(3, lazy_create=True)
    assert pool._max_workers == 3 == pool.total_workers()
    pool.shutdown()


def test_the_proxies_of_a_multiprocessing_manager_reach_it(pool):
    # ProcessPoolExecutor code shares a Manager's Queue (for progress) and
    # dict with its tasks: their proxies connect with the client's key
    import multiprocessing

    with multiprocessing.get_context("fork").Manager() as manager:
        queue, shared = manager.Queue(), manager.dict()
        futures = [pool.submit(client_tasks.report, queue, shared, i) for i in range(3)]
        assert [f.result(timeout=30) for f in futures] == [0, 1, 2]
        assert sorted(queue.get(timeout=10) for _ in range(3)) == [0, 1, 2]
        assert dict(shared) == {0: 0, 1: 1, 2: 4}


@pytest.mark.parametrize("pythonpath", [None, "/srv/app-of-the-client"])
def test_a_process_a_task_starts_gets_the_clients_environment(pythonpath, monkeypatch):
    # the workers got the client's whole sys.path as PYTHONPATH, and every
    # process that a task started inherited it: another Python failed to
    # start ("SRE module mismatch"), the system's got this one's packages
    if pythonpath is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", pythonpath)
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    names = ("PYTHONPATH", "PYTHONUNBUFFERED")
    # spawned: a fork server (the default from Python 3.14) started by an
    # earlier test would give its workers the environment of that time
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as control:
        expected = control.submit(client_tasks.child_env, *names).result(timeout=60)
    assert expected == [pythonpath, None]
    with Pool(1) as pool:
        assert pool.run(client_tasks.child_env, *names) == expected
        assert pool.run(client_tasks.env_var, "PYTHONPATH") == pythonpath


SCRIPT_IN_AN_ODD_DIRECTORY = """\
import concurrent.futures
import os
import pathlib
import sys

from distex_zmq import Pool
import helper  # next to the script, in a directory whose name has a ':'

sys.path.append(pathlib.Path("/not/a/str"))  # the import system skips it


def where(_):
    return os.getcwd(), sys.flags.optimize, os.environ.get("PYTHONOPTIMIZE")


if __name__ == "__main__":
    if sys.argv[1] == "control":
        pool = concurrent.futures.ProcessPoolExecutor(1, max_tasks_per_child=1)
    else:
        pool = Pool(1, max_tasks_per_child=1)
    with pool:
        assert list(pool.map(helper.square, range(4))) == [0, 1, 4, 9]
        print(*pool.submit(where, 0).result())
        os.chdir("sub")
        print(*pool.submit(where, 0).result())
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", [CONTROL_WITH_MAX_TASKS, "local"])
def test_workers_import_and_run_as_the_client_did_at_the_start(tmp_path, executor):
    # a directory whose name has a ':' went into PYTHONPATH, which split it
    # (a module next to the script failed to import); a pathlib.Path on
    # sys.path failed the start with a TypeError; under -E the workers took
    # PYTHONOPTIMIZE, which the client ignored (their asserts were off);
    # and a worker that replaced another started where the client was then,
    # with the path and environment of the pool's start
    odd = tmp_path / "run:2024-01-01"
    (odd / "sub").mkdir(parents=True)
    (odd / "helper.py").write_text("def square(x):\n    return x * x\n")
    env = dict(os.environ, PYTHONOPTIMIZE="1")
    env.pop("PYTHONPATH", None)
    result = run_in(odd, SCRIPT_IN_AN_ODD_DIRECTORY, executor, options=("-E",), env=env)
    assert result.returncode == 0, result.stderr
    first, then = result.stdout.splitlines()
    # the client's options, and its environment for the tasks
    assert first == f"{odd} 0 1"
    # ProcessPoolExecutor's new worker starts where the client is now, with
    # its path and environment of now; a pool's, as all its workers, with
    # those of its start
    assert then == (f"{odd / 'sub'} 0 1" if executor == "control" else first)


SCRIPT_NAMED_LIKE_A_MODULE = """\
import concurrent.futures
import sys

from distex_zmq import Pool


def square(x):
    return x * x


if __name__ == "__main__":
    if sys.argv[1] == "control":
        pool = concurrent.futures.ProcessPoolExecutor(1)
    else:
        pool = Pool(1)
    with pool:
        print(*pool.map(square, range(4)))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["control", "local"])
@pytest.mark.parametrize("name", ["argparse.py", "gettext.py"])
def test_a_script_named_like_a_module_the_worker_imports(tmp_path, executor, name):
    # ``python -m distex_zmq.worker`` put the script's directory (the
    # worker's) first on sys.path, where the worker's own ``import
    # argparse`` found the script: the worker failed to start
    result = run_in(tmp_path, SCRIPT_NAMED_LIKE_A_MODULE, executor, name=name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "4", "9"]


SCRIPT_WITH_A_RANDOM_GENERATOR = """\
import operator
import random
import sys

import numpy as np

from distex_zmq import Pool

RNG = np.random.default_rng()
R = random.Random()
SYSTEM = random.SystemRandom()
SEEDS = np.random.SeedSequence(7)


def draw(_):
    return RNG.random(), R.random(), SYSTEM.random(), SEEDS.entropy


def by_lambda():
    rng = random.Random()
    return lambda _: rng.random()


def fresh(_):
    return np.random.default_rng().random(), random.random()


if __name__ == "__main__":
    with Pool(2, data_pickle=sys.argv[1]) as pool:
        assert len(set(pool.map(fresh, range(8)))) == 8
        print("fresh: no warning", flush=True)
        pool.submit(draw, 0).result()
        pool.submit(draw, 1).result()
        pool.map(by_lambda(), range(2))
        # in task data, as dask and joblib send functions
        print(list(pool.map(operator.methodcaller("__call__", 0), [draw]))[0][3])
        # its method as the task's function, once per method
        pool.map(RNG.normal, [0.0] * 2)
        pool.map(RNG.normal, [0.0] * 2)
        pool.submit(random.gauss, 0, 1).result()
        pool.submit(len, "builtins: no warning").result()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data_pickle", ["auto", "dill"])
def test_a_random_generator_of_the_script_copied_to_workers_is_warned_of(tmp_path, data_pickle):
    # each worker got a copy of the script's generator, as it was: the
    # workers drew the same numbers, as the script did after them, where
    # ProcessPoolExecutor's workers make one each from fresh entropy
    result = run_in(tmp_path, SCRIPT_WITH_A_RANDOM_GENERATOR, data_pickle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "fresh: no warning\n7\n"
    warned = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 5, result.stderr
    at = f"{tmp_path / 'script.py'}:"
    # by name, at the function's line
    assert warned[0].startswith(f"{at}15: RuntimeWarning: draw uses R, a random generator")
    assert "draw uses R, a random generator of the script (random.Random)" in warned[0]
    assert warned[1].startswith(f"{at}15: RuntimeWarning: draw uses RNG, a random generator")
    assert "(numpy.random.Generator): each worker gets a copy" in warned[1]
    assert "by_lambda.<locals>.<lambda> uses rng" in warned[2]
    assert "make the generator in the task, or give each task a seed" in warned[2]
    # at the line of the call that sent it
    assert warned[3].startswith(f"{at}38: RuntimeWarning: the task's function Generator.normal")
    assert "is a method of a random generator of the script (numpy.random" in warned[3]
    assert warned[4].startswith(f"{at}40: RuntimeWarning: the task's function random.gauss")


SCRIPT_WITH_SHARED_MEMORY = """\
import concurrent.futures
import multiprocessing
import sys
from multiprocessing import shared_memory

from distex_zmq import Pool


def read(name, i):
    block = shared_memory.SharedMemory(name=name)
    try:
        return block.buf[i]
    finally:
        block.close()


def make(size):
    block = shared_memory.SharedMemory(create=True, size=size)
    block.buf[0] = 7
    block.close()  # left for the client: tracked, it goes at the client's exit
    return block.name


if __name__ == "__main__":
    if sys.argv[1] == "control":
        spawn = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(2, spawn, max_tasks_per_child=2)
    else:
        pool = Pool(2, max_tasks_per_child=2)
    with pool:
        block = shared_memory.SharedMemory(create=True, size=16)
        block.buf[:16] = bytes(range(16))
        # workers replaced every two tasks, and so exit while the block lives
        print(*[pool.submit(read, block.name, i).result() for i in range(8)])
        made = pool.submit(make, 4).result()
    print(bytes(block.buf[:3]))  # all the workers gone, the block is there
    block.close()
    block.unlink()
    left = shared_memory.SharedMemory(name=made)
    print(left.buf[0])
    left.close()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", [CONTROL_WITH_MAX_TASKS, "local"])
def test_shared_memory_of_the_client_outlives_the_workers(tmp_path, executor):
    # each worker had a resource tracker of its own, which unlinked the
    # client's block that a task had attached to when that worker exited:
    # the next tasks and the client's unlink raised FileNotFoundError
    result = run_in(tmp_path, SCRIPT_WITH_SHARED_MEMORY, executor)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 1 2 3 4 5 6 7\nb'\\x00\\x01\\x02'\n7\n", result.stdout
    # the block a task made and left is the client's tracker's to clean up
    assert "leaked shared_memory objects" in result.stderr, result.stderr
    assert "FileNotFoundError" not in result.stderr


SCRIPT_WITH_A_POOL_IN_A_SPAWNED_PROCESS = """\
import concurrent.futures
import dataclasses
import multiprocessing
import sys

from distex_zmq import Pool


@dataclasses.dataclass
class Point:
    x: int

    def scaled(self, k):
        return Point(self.x * k)


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, point):
        return point.scaled(self.k)


def square(x):
    return x * x


def use_a_pool(kind):
    if kind == "control":
        pool = concurrent.futures.ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    else:
        pool = Pool(1)
    with pool:
        points = list(pool.map(Scale(3), [Point(1), Point(2)]))
        return list(pool.map(square, range(4))), [p.x for p in points], type(points[0]).__name__


if __name__ == "__main__":
    spawn = multiprocessing.get_context(sys.argv[2])
    with concurrent.futures.ProcessPoolExecutor(1, spawn) as outer:
        print(*outer.submit(use_a_pool, sys.argv[1]).result())
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["spawn", "forkserver"])
@pytest.mark.parametrize("executor", ["control", "local"])
def test_a_pool_in_a_process_that_multiprocessing_spawned(tmp_path, executor, context):
    # there the script runs as __mp_main__, and its functions and classes
    # went by that name to the pool's workers, which could not load them
    result = run_in(
        tmp_path, SCRIPT_WITH_A_POOL_IN_A_SPAWNED_PROCESS, executor, context, timeout=100
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[0, 1, 4, 9] [3, 6] Point\n"


def test_the_clusters_secret_does_not_reach_tasks(monkeypatch):
    # a client or a spawner started with DISTEX_ZMQ_SECRET set passed it on
    # to every worker: any task, and any process it started, could read the
    # secret, with which anyone runs any code on every spawner of the cluster
    monkeypatch.setenv("DISTEX_ZMQ_SECRET", "the cluster's secret, 32 bytes long")
    with Pool(1) as pool:
        assert pool.run(client_tasks.env_var, "DISTEX_ZMQ_SECRET") is None
        assert pool.run(client_tasks.child_env, "DISTEX_ZMQ_SECRET") == [None]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["control", "local"])
def test_sync_functions_over_async_code_as_with_a_process_pool(executor):
    # asyncio.run, a loop of its own or the thread's current loop in a sync
    # task: no event loop runs in the task's thread, though one runs the worker
    assert run_script("sync_over_async.py", executor).endswith("OK\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("executor", ["control", "local"])
def test_scipy_differential_evolution_with_workers_pool_map(executor):
    # workers=pool.map, as scipy's documentation passes a multiprocessing
    # pool (the control): the cost function and its args= (a dataclass and
    # an object of the script) go by value, the seeded results are those of
    # the serial run, an error of the cost function arrives as its own type
    # with a traceback through the script's function, the pool runs on after
    # it, and the workers are gone once the script has exited
    pytest.importorskip("scipy.optimize")
    out = run_script("scipy_workers.py", executor, timeout=110)
    assert out.endswith("OK\n")
    workers = [int(pid) for pid in out.splitlines()[0].split()[1:]]
    assert len(workers) == 2
    assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), timeout=10), workers


@pytest.mark.timeout(120)
@pytest.mark.parametrize("executor", ["control", "local"])
def test_emcee_and_deap_with_the_pool(executor):
    # emcee's pool=pool and DEAP's toolbox.register("map", pool.map), with
    # ProcessPoolExecutor as the control: the seeded runs give the serial
    # results, an error of the log-probability function keeps its type, and
    # the classes of creator.create, made in the initializer too, let a task
    # make an individual
    pytest.importorskip("emcee")
    pytest.importorskip("deap")
    assert run_script("samplers.py", executor, timeout=110).endswith("OK\n")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("executor", ["control", "local"])
def test_a_task_that_starts_a_process_pool_of_its_own(executor):
    # a task of the script maps another of its functions on a
    # ProcessPoolExecutor or a multiprocessing.Pool (fork, spawn,
    # forkserver), which pickle it by name, __main__.square: the worker's
    # __main__ holds the script's functions, as a worker of
    # ProcessPoolExecutor's does, and spawned children run the script's file
    assert run_script("nested_pools.py", executor, timeout=80).endswith("OK\n")


# dask and joblib on the pool, from a script


@pytest.mark.timeout(150)
@pytest.mark.parametrize("executor", ["control", "local", "cloudpickle", "dill", "spawner"])
def test_script_functions_in_task_data_go_to_each_worker_once(tmp_path, executor):
    # a function of the script in dask's tasks, joblib's batches and partial
    # arguments comes to each worker once, with the globals it uses: a dict
    # that its tasks fill keeps growing in each worker, as in a worker of
    # ProcessPoolExecutor (the control); a global rebound in the client
    # later is not seen; a worker that replaced a lost one, or that dropped
    # a function, is sent it again; one that does not unpickle in the worker
    # fails the tasks that use it, with its name and the cause
    if executor != "spawner":
        assert run_script("script_refs.py", executor, timeout=140).endswith("OK\n")
        return
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        assert run_script("script_refs.py", f"spawner:{spawner.port}", timeout=140).endswith("OK\n")
    finally:
        spawner.stop()


@pytest.mark.timeout(90)
def test_a_function_larger_than_a_worker_keeps_loads_once_per_worker():
    # a partial of a script function, holding more than the bytes of
    # functions a worker keeps: the script function goes by id ahead of it,
    # and neither may push the other out, or both go again with every task
    assert run_script("large_partial.py", timeout=80).endswith("OK\n")


@pytest.mark.timeout(150)
def test_dask_and_joblib_with_script_functions_use_every_worker():
    # 4 dask tasks meet at a barrier that opens only when all 4 run at once:
    # dask must size itself from the pool, not from the client's 2 CPUs
    assert run_script("clients_script.py", "4", timeout=140).endswith("OK\n")


# the joblib backend


@pytest.fixture
def joblib_pool(shared_pool):
    import distex_zmq.joblib  # noqa: F401

    with joblib.parallel_config(backend="distex_zmq", pool=shared_pool):
        yield shared_pool


def test_joblib_parallel_results_in_order(joblib_pool):
    out = joblib.Parallel(n_jobs=-1)(joblib.delayed(client_tasks.square)(i) for i in range(300))
    assert out == [i * i for i in range(300)]


def test_joblib_n_jobs(joblib_pool):
    assert joblib.effective_n_jobs(-1) == joblib_pool.total_workers() == 2
    assert joblib.effective_n_jobs(None) == 2
    assert joblib.effective_n_jobs(-2) == 2  # 1 would run the calls in this process
    assert joblib.effective_n_jobs(5) == 5
    assert joblib.effective_n_jobs(1) == 1
    # the workers of the pool run the calls, not this process
    pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(client_tasks.pid)(i) for i in range(20))
    assert os.getpid() not in pids


def test_joblib_memmap_arguments_arrive_as_plain_read_only_arrays(joblib_pool, tmp_path):
    # joblib's cache hands back large arrays as memmaps; deep in a batch,
    # the pool sends each as a plain array, out of band (test_serialization)
    memory = joblib.Memory(tmp_path, mmap_mode="r", verbose=0)
    arange = memory.cache(client_tasks.arange)
    arange(125_000)
    mm = arange(125_000)  # from the cache
    assert type(mm).__name__ == "memmap" and not mm.flags.writeable
    out = joblib.Parallel(n_jobs=-1)(
        joblib.delayed(client_tasks.array_kind)(mm, i) for i in range(6)
    )
    assert out == [("ndarray", False, float(mm[i:].sum())) for i in range(6)]


def test_joblib_runs_on_a_pool_of_one_worker(make_pool):
    # joblib runs n_jobs=1 in the caller's process: -1 on a pool of one
    # worker (or of two while one is replaced) must still mean the pool
    import distex_zmq.joblib  # noqa: F401

    pool = make_pool(1)
    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(client_tasks.pid)(i) for i in range(6))
        assert set(pids) == set(pool.run_on_all(client_tasks.pid))
        pids = joblib.Parallel()(joblib.delayed(client_tasks.pid)(i) for i in range(6))
        assert os.getpid() not in pids
        # an explicit n_jobs=1 is joblib's own: no parallelism at all
        assert joblib.Parallel(n_jobs=1)([joblib.delayed(client_tasks.pid)(0)]) == [os.getpid()]


@pytest.mark.timeout(60)
def test_joblib_parallel_naming_the_backend_runs_on_the_configs_pool(joblib_pool):
    # joblib makes Parallel(backend="distex_zmq")'s backend without the
    # parallel_config's pool=: it failed with "pass it as parallel_config(...,
    # pool=pool)", which the caller had done (loky's runs as its config's)
    parallel = joblib.Parallel(n_jobs=2, backend="distex_zmq")
    pids = parallel(joblib.delayed(client_tasks.pid)(i) for i in range(6))
    assert os.getpid() not in pids


def test_joblib_generator_unordered(joblib_pool):
    out = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(
        joblib.delayed(client_tasks.square)(i) for i in range(50)
    )
    assert sorted(out) == [i * i for i in range(50)]


def outer_calls(n: int) -> list:
    """Calls that take long enough for most to be dispatched by the
    completion callbacks of the first ones, while the loop of the test runs."""
    return [joblib.delayed(client_tasks.slow_square)(i, 0.05) for i in range(n)]


@pytest.mark.timeout(90)
def test_joblib_parallel_in_the_loop_over_another_ones_generator(joblib_pool):
    # parallel_config has one backend for both calls: the inner call's end
    # must not end the thread of callbacks that dispatches the outer call's
    # next batches (the outer call then hung); joblib's timeout turns such
    # a hang into an error
    outer = joblib.Parallel(
        n_jobs=2, return_as="generator", batch_size=1, pre_dispatch=2, timeout=30
    )
    out = []
    for result in outer(outer_calls(30)):
        inner = joblib.Parallel(n_jobs=2, timeout=30)(
            joblib.delayed(client_tasks.square)(j) for j in range(3)
        )
        out.append((result, inner))
    assert out == [(i * i, [0, 1, 4]) for i in range(30)]


def callback_threads() -> list[str]:
    """The threads of the joblib backends' completion callbacks."""
    return [t.name for t in threading.enumerate() if t.name.startswith("distex_zmq-joblib")]


@pytest.mark.timeout(90)
def test_joblib_calls_after_an_abandoned_generator_leave_nothing_behind(joblib_pool):
    # a return_as="generator" output neither read to its end nor closed
    # (nor garbage) keeps its call running on parallel_config's backend:
    # each later call runs on a backend of its own, on the same pool, and
    # its thread of callbacks and the backend itself end with the call
    import gc
    import weakref

    shared, _ = joblib.parallel.get_active_backend()
    abandoned = joblib.Parallel(n_jobs=2, return_as="generator", batch_size=1)(outer_calls(10))
    assert next(abandoned) == 0
    own_backends: weakref.WeakSet = weakref.WeakSet()
    for _ in range(3):
        parallel = joblib.Parallel(n_jobs=2)
        assert parallel(outer_calls(4)) == [0, 1, 4, 9]
        assert parallel._backend is not shared
        own_backends.add(parallel._backend)
        assert len(callback_threads()) == 1  # the abandoned call's
    del parallel
    gc.collect()
    assert len(own_backends) == 0
    assert joblib_pool.total_workers() == 2
    with pytest.warns(UserWarning, match="tasks"):  # joblib's
        abandoned.close()
    assert callback_threads() == []
    # the next call runs on parallel_config's backend again
    parallel = joblib.Parallel(n_jobs=2)
    assert parallel(outer_calls(4)) == [0, 1, 4, 9]
    assert parallel._backend is shared
    assert callback_threads() == []


@pytest.mark.timeout(90)
def test_joblib_error_of_an_inner_parallel_leaves_the_outer_one_running(joblib_pool):
    # the inner call's error cancels its own batches, not the outer call's
    outer = joblib.Parallel(
        n_jobs=2, return_as="generator", batch_size=1, pre_dispatch=2, timeout=30
    )
    out = []
    for result in outer(outer_calls(20)):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=2, timeout=30)(
                joblib.delayed(client_tasks.fail_on)(j, 0) for j in range(4)
            )
        out.append(result)
    assert out == [i * i for i in range(20)]


def test_joblib_error_keeps_its_type(joblib_pool):
    with pytest.raises(KeyError) as info:
        joblib.Parallel(n_jobs=-1)(joblib.delayed(client_tasks.fail_on)(i, 7) for i in range(20))
    assert info.value.args == (7,)


def test_joblib_error_cancels_batches_not_started(pool, tmp_path):
    import distex_zmq.joblib  # noqa: F401

    calls = [joblib.delayed(client_tasks.fail_on)(0, 0)]
    calls += [joblib.delayed(client_tasks.mark_and_sleep)(str(tmp_path), i, 0.2) for i in range(40)]
    with joblib.parallel_config(backend="distex_zmq", pool=pool), pytest.raises(KeyError):
        joblib.Parallel(n_jobs=-1, pre_dispatch="all", batch_size=1)(calls)
    pool.shutdown()  # waits for what runs
    assert len(os.listdir(tmp_path)) < 40


@pytest.mark.timeout(90)
def test_joblib_batch_that_kills_its_worker_fails_its_call_at_once(pool, tmp_path):
    # joblib runs each batch once, and loky fails the call at the first
    # death of a worker; the backend ran the batch again max_retries times
    # (the pool's, 2 by default), each time on a worker started afresh, and
    # the call failed seconds later
    import distex_zmq.joblib  # noqa: F401
    from distex_zmq.errors import WorkerLostError

    def runs(folder: Path) -> tuple[int, str]:
        folder.mkdir()
        calls = [joblib.delayed(client_tasks.mark_then_exit)(str(folder))]
        with pytest.raises(WorkerLostError) as info:
            joblib.Parallel(n_jobs=2, backend="distex_zmq")(calls)
        assert "(a joblib batch of 1 call of mark_then_exit) killed its worker" in str(info.value)
        return len(os.listdir(folder)), str(info.value)

    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        ran, message = runs(tmp_path / "default")
        assert ran == 1
        # the error says how to have the batch run again
        assert (
            "is not run again (parallel_config's max_retries=0: joblib runs each batch "
            'once; parallel_config(backend="distex_zmq", max_retries=n) runs such a task'
        ) in message
    with joblib.parallel_config(backend="distex_zmq", pool=pool, max_retries=1):
        ran, message = runs(tmp_path / "retried")
        assert ran == 2
        assert (
            "each of the last 2 times it ran (parallel_config's max_retries=1): the last" in message
        )
        # the backend runs the next call
        assert joblib.Parallel(n_jobs=2)(outer_calls(4)) == [0, 1, 4, 9]
    with pytest.raises(ValueError, match="max_retries"):
        joblib.parallel_config(backend="distex_zmq", pool=pool, max_retries=-1)


@pytest.mark.timeout(90)
def test_joblib_batches_running_when_their_call_fails_are_not_run_again(pool, tmp_path):
    # a batch that a worker ran when its call failed was run again when it
    # killed that worker, up to max_retries times, though joblib had given
    # up on the call: the workers kept dying for nobody
    import distex_zmq.joblib  # noqa: F401

    runs, go = tmp_path / "runs", tmp_path / "go"
    runs.mkdir()
    calls = [
        joblib.delayed(client_tasks.fail_once_marked)(str(runs)),
        joblib.delayed(client_tasks.mark_then_exit)(str(runs), str(go)),
    ]
    with joblib.parallel_config(backend="distex_zmq", pool=pool, max_retries=2):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=2, batch_size=1)(calls)
        go.touch()  # the batch that runs kills its worker now
        # the backend runs the next call
        assert joblib.Parallel(n_jobs=2)(outer_calls(4)) == [0, 1, 4, 9]
    pool.shutdown()  # waits for what runs
    assert len(os.listdir(runs)) == 1


@pytest.mark.timeout(90)
def test_joblib_errors_of_the_pool_name_the_function_of_the_batch(make_pool):
    # the pool's own errors (a worker lost, a result that does not pickle)
    # named the task "_run_batch", the backend's, not the caller's function
    import distex_zmq.joblib  # noqa: F401
    from distex_zmq.errors import SerializationError, WorkerLostError

    pool = make_pool(2, max_retries=0)
    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        calls = [joblib.delayed(client_tasks.exit_on)(i, 4) for i in range(6)]
        with pytest.raises(WorkerLostError, match=r"\(a joblib batch of \d+ calls? of exit_on\)"):
            joblib.Parallel(n_jobs=2)(calls)
        with pytest.raises(SerializationError) as info:
            joblib.Parallel(n_jobs=2, batch_size=1)([joblib.delayed(client_tasks.a_lock)()])
        assert "(a joblib batch of 1 call of a_lock)" in str(info.value)
        assert "_run_batch" not in str(info.value)


@pytest.mark.timeout(90)
def test_joblib_call_that_does_not_pickle_fails_its_parallel(pool):
    # the batches after the first ones are dispatched by completion
    # callbacks, where the pickling error went unseen and the call waited
    # for ever; joblib's timeout turns such a hang into an error
    import distex_zmq.joblib  # noqa: F401

    calls = outer_calls(20)
    calls[15] = joblib.delayed(client_tasks.square)(threading.Lock())
    with joblib.parallel_config(backend="distex_zmq", pool=pool):
        with pytest.raises(TypeError, match="pickle") as info:
            joblib.Parallel(n_jobs=2, batch_size=1, pre_dispatch=2, timeout=30)(calls)
        if sys.version_info >= (3, 11):  # notes
            assert "no pickle takes some objects" in str(info.value.__notes__)
        # the backend runs the next call
        assert joblib.Parallel(n_jobs=2)(outer_calls(4)) == [0, 1, 4, 9]


class ParallelWithABrokenProgressBar(joblib.Parallel):
    """A ``Parallel`` whose progress report (``print_progress``, which joblib
    calls from the backend's completion callbacks, and which progress bars
    override) raises when ``at`` calls are done, and after it too when
    ``always``; when ``late``, once the call has stopped retrieving results."""

    def __init__(self, *args, at: int, always: bool = False, late: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.always, self.late = at, always, late

    def print_progress(self):
        done = self.n_completed_tasks
        if done == self.at or (self.always and done > self.at):
            while self.late and self._running:  # joblib's: the call retrieves results
                time.sleep(0.01)
            raise RuntimeError(f"the progress bar broke at {done}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("always", [False, True])
def test_joblib_error_of_a_completion_callback_fails_the_parallel_call(joblib_pool, always):
    # the error went unseen: the call returned as if nothing had happened,
    # or, with no callback left to dispatch the next batches, waited for
    # ever (joblib's timeout does not cover calls not yet dispatched)
    parallel = ParallelWithABrokenProgressBar(
        n_jobs=2, batch_size=1, pre_dispatch=2, timeout=30, at=3, always=always
    )
    with pytest.raises(RuntimeError, match="the progress bar broke at 3") as info:
        parallel(outer_calls(20))
    if sys.version_info >= (3, 11):  # notes
        assert "joblib's completion callback" in str(info.value.__notes__)
    # the backend runs the next call
    assert joblib.Parallel(n_jobs=2)(outer_calls(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(90)
def test_joblib_error_of_a_callback_after_its_call_is_logged(joblib_pool, caplog):
    # the call has all its results and no longer waits for the error,
    # which went unseen
    parallel = ParallelWithABrokenProgressBar(
        n_jobs=2, batch_size=1, pre_dispatch=2, at=6, late=True
    )
    assert parallel(outer_calls(6)) == [i * i for i in range(6)]
    [record] = [r for r in caplog.records if r.name == "distex_zmq.joblib"]
    assert record.levelname == "ERROR" and "does not raise" in record.getMessage()
    assert record.exc_info is not None and "broke at 6" in str(record.exc_info[1])


@pytest.mark.timeout(60)
def test_joblib_backend_dispatches_by_apply_async_as_joblib_before_1_5(shared_pool):
    # joblib 1.3 and 1.4 dispatch a batch with apply_async (1.5 with
    # submit), abstract there: the backend could not be made
    from distex_zmq.joblib import DistexZmqBackend

    backend = DistexZmqBackend(pool=shared_pool)
    assert backend.configure(n_jobs=2, parallel=joblib.Parallel(n_jobs=2)) == 2
    try:
        results: list = []
        done = threading.Event()

        def callback(out):
            results.append(backend.retrieve_result_callback(out))
            done.set()

        backend.apply_async(functools.partial(client_tasks.square, 7), callback=callback)
        assert done.wait(30)
        assert results == [49]
    finally:
        backend.terminate()


def test_joblib_parallel_backend_of_older_joblib(shared_pool):
    import distex_zmq.joblib  # noqa: F401

    with joblib.parallel_backend("distex_zmq", pool=shared_pool):
        out = joblib.Parallel()(joblib.delayed(client_tasks.pid)(i) for i in range(10))
    assert os.getpid() not in out


def test_joblib_backend_needs_a_pool():
    import distex_zmq.joblib  # noqa: F401

    with joblib.parallel_config(backend="distex_zmq"), pytest.raises(ValueError, match="pool="):
        joblib.Parallel(n_jobs=2)(joblib.delayed(client_tasks.square)(i) for i in range(2))


def test_scikit_learn_cross_val_score(joblib_pool):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    model = DecisionTreeClassifier(random_state=0)
    on_pool = cross_val_score(model, X, y, cv=5, n_jobs=-1)
    with joblib.parallel_config(backend="sequential"):
        here = cross_val_score(model, X, y, cv=5, n_jobs=1)
    assert list(on_pool) == list(here)


@pytest.mark.timeout(60)
def test_joblib_limits_the_workers_thread_pools_as_loky_does(joblib_pool):
    # loky limits BLAS and OpenMP in its workers to the cores divided by
    # n_jobs, or to parallel_config's inner_max_num_threads; the backend
    # left them at one thread per core (scikit-learn's OpenMP estimators ran
    # many times slower), and joblib refused inner_max_num_threads
    np = pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    from joblib.parallel import ParallelBackendBase

    if any(name in os.environ for name in ParallelBackendBase.MAX_NUM_THREADS_VARS):
        pytest.skip("the environment limits the thread pools itself, as loky lets it")
    values = np.ones(4)

    def threads() -> list[list[int]]:
        calls = (joblib.delayed(client_tasks.blas_threads)(values) for _ in range(4))
        return joblib.Parallel(n_jobs=2, batch_size=1)(calls)

    def outside() -> list[list[int]]:
        futures = [joblib_pool.submit(client_tasks.blas_threads, values) for _ in range(4)]
        return [f.result(timeout=30) for f in futures]

    before = outside()
    assert all(before), before  # numpy's BLAS at least
    share = max(joblib.cpu_count() // 2, 1)
    assert threads() == [[share]] * 4
    with joblib.parallel_config(
        backend="distex_zmq", pool=joblib_pool, inner_max_num_threads=share + 1
    ):
        assert threads() == [[share + 1]] * 4
    # the limits hold while a batch runs, not for the worker's other tasks
    assert outside() == before


# errors that say what to do


@pytest.mark.timeout(150)
def test_serialization_errors_name_the_task_and_what_to_do():
    lines = run_script("bad_pickles.py").splitlines()
    func, args, mapped, enum_ok, result, mapped_result, unloadable, *in_client = lines
    assert "could not unpickle the function of task 1 (name_of)" in func
    assert "worker pid" in func and "func_pickle=PickleType.pickle" in func
    assert "leave func_pickle at its default (PickleType.dill)" in func
    assert "could not unpickle the arguments of task 2 (str)" in args
    assert "leave data_pickle at its default (PickleType.auto)" in args
    assert "(name_of, input #0 of a map)" in mapped
    # a function using an enum of the script runs with the default settings
    assert enum_ok == "no error"
    assert "task 2 (lock) ran on worker pid" in result
    assert "its result of type lock could not be pickled" in result
    assert "(lock, input #0 of a map)" in mapped_result
    # an object of the script whose rebuild raises in the client fails its
    # input only: the other inputs of its chunk keep their results
    assert unloadable.startswith("[0, 1, 2, 3, 4] SerializationError: the result of task"), (
        unloadable
    )
    assert "(rebuilt_at_5, input #5 of a map) could not be unpickled in the client" in unloadable
    assert "ValueError: Rebuilt(5) does not rebuild here" in unloadable
    assert all(line.startswith("SerializationError") for line in lines[:6] if line != enum_ok)
    # in the client the error keeps its type; a note (Python 3.11+) names
    # what failed, with a hint for the settings in use
    client_args, client_map, client_func, client_plain = in_client
    assert client_args.startswith("TypeError: cannot pickle '_thread.lock' object")
    assert client_func.startswith("TypeError: cannot pickle 'generator' object")
    if sys.version_info >= (3, 11):
        assert "while pickling the arguments of name_of in the client" in client_args
        assert "while pickling input #1 of a map of name_of" in client_map
        assert "while pickling the function main.<locals>" in client_func
        # and what of the function does not pickle
        assert "<lambda> in the client: its closure variable 'held' (a generator)" in client_func
        assert "leave data_pickle at its default (PickleType.auto)" in client_plain


# the docs page


@pytest.mark.timeout(300)
def test_docs_examples_run(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    text = (ROOT / "docs" / "clients.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    assert len(blocks) == 5
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for number, block in enumerate(blocks):
        script = tmp_path / f"example{number}.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
