"""Packaging: what the installed distribution provides, from outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import distex_zmq

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE: str = ""


@pytest.fixture(scope="module", autouse=True)
def _outside():
    """An empty directory in the temp dir, outside the repository: the working
    directory of the interpreters started here, so that neither the repository
    nor stray ``broker``/``worker`` directories in /tmp are on their sys.path."""
    global OUTSIDE
    OUTSIDE = tempfile.mkdtemp(prefix="distex_zmq_test_outside_")
    yield
    shutil.rmtree(OUTSIDE, ignore_errors=True)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python code in a fresh interpreter, from outside the repository."""
    assert OUTSIDE and not OUTSIDE.startswith(str(ROOT))
    assert os.listdir(OUTSIDE) == []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [sys.executable, *(("-c", code) if code else ()), *args],
        cwd=OUTSIDE,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_subpackages_import_after_install():
    proc = run_python(
        "import distex_zmq.broker, distex_zmq.worker, distex_zmq.worker.worker\n"
        "from distex_zmq.broker import Broker, Task, Registry\n"
        "from distex_zmq.worker.worker import Worker\n"
        "print(distex_zmq.broker.__name__, distex_zmq.worker.__name__)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["distex_zmq.broker", "distex_zmq.worker"]


@pytest.mark.parametrize("name", ["broker", "worker"])
def test_no_top_level_broker_or_worker(name):
    proc = run_python(
        f"import importlib.util, sys\nprint(importlib.util.find_spec({name!r}))\nimport {name}\n"
    )
    assert proc.returncode != 0, f"'import {name}' worked at top level: {proc.stdout}"
    assert proc.stdout.strip() == "None"
    assert "ModuleNotFoundError" in proc.stderr
    assert f"No module named '{name}'" in proc.stderr


def test_subpackages_come_from_the_broker_and_worker_dirs():
    proc = run_python(
        "import distex_zmq.broker as b, distex_zmq.worker as w\n"
        "print(b.__file__); print(w.__file__)"
    )
    assert proc.returncode == 0, proc.stderr
    broker_file, worker_file = (Path(p) for p in proc.stdout.split())
    assert broker_file.name == "__init__.py" and worker_file.name == "__init__.py"
    assert broker_file.parent.name == "broker"
    assert worker_file.parent.name == "worker"


@pytest.mark.parametrize(
    "use",
    [
        # PoolMap imports eventkit
        "from distex_zmq import PoolMap\n"
        "import eventkit as ev\n"
        "def mapped(pool, source):\n"
        "    return PoolMap(pool, abs, source=source)\n",
        # the program imports it, through the pool's finder
        "import eventkit as ev\ndef mapped(pool, source):\n    return source.poolmap(pool, abs)\n",
    ],
    ids=["PoolMap", "Event.poolmap"],
)
def test_eventkit_after_asyncio_run(use):
    # eventkit asks asyncio for the current loop as it is imported: there is
    # none once asyncio.run() has ended (nor on Python 3.14 before any loop
    # is set), so it is imported with one
    proc = run_python(
        "import asyncio\n"
        "from distex_zmq import Pool\n"
        "async def first():\n"
        "    async with Pool(1) as pool:\n"
        "        return await pool.run_async(abs, -3)\n"
        "print(asyncio.run(first()))\n"
        f"{use}"
        "async def second():\n"
        "    async with Pool(1) as pool:\n"
        "        return await mapped(pool, ev.Sequence([-1, -2, -3])).list()\n"
        "print(asyncio.run(second()))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["3", "[1, 2, 3]"]


def test_public_names():
    for name in distex_zmq.__all__:
        assert hasattr(distex_zmq, name), name
    for name in (
        "Pool",
        "PoolMap",
        "HostSpec",
        "PickleType",
        "LoopType",
        "RemoteException",
        "DistexError",
        "PoolClosedError",
        "WorkerStartError",
        "WorkerLostError",
        "SerializationError",
        "ProtocolError",
    ):
        assert name in distex_zmq.__all__
    for name in (
        "PoolClosedError",
        "WorkerStartError",
        "WorkerLostError",
        "SerializationError",
        "ProtocolError",
        "RemoteException",
    ):
        assert issubclass(getattr(distex_zmq, name), distex_zmq.DistexError)
    assert issubclass(distex_zmq.PoolClosedError, RuntimeError)


def test_a_worker_imports_neither_the_pool_nor_ssh_nor_eventkit():
    # they took most of a worker's start-up; the pool's names load on first use
    code = (
        "import sys, runpy; sys.argv = ['worker', '--check']\n"
        "try:\n    runpy.run_module('distex_zmq.worker', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('distex_zmq.pool', 'paramiko', 'eventkit', 'numpy')"
        " if m in sys.modules))\n"
        "import distex_zmq\n"
        "PoolMap = distex_zmq.PoolMap  # imports eventkit, with a loop if none is set\n"
        "import eventkit\n"
        "print(PoolMap.__module__, hasattr(eventkit.Event, 'poolmap'))"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["[]", "distex_zmq.poolmap True"]


def test_a_local_pool_imports_neither_paramiko_nor_eventkit():
    # each took longer to import than the rest of the pool (eventkit imports
    # numpy); eventkit's Event.poolmap is there once the program imports it
    code = (
        "import asyncio, sys\n"
        "from distex_zmq import Pool\n"
        "with Pool(1) as pool:\n"
        "    print(pool.run(abs, -3))\n"
        "    print(sorted(m for m in ('paramiko', 'eventkit', 'numpy') if m in sys.modules))\n"
        "    import eventkit as ev\n"
        "    async def main():\n"
        "        return await ev.Sequence([-1, -2]).poolmap(pool, abs).list()\n"
        "    print(asyncio.run(main()))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["3", "[]", "[1, 2]"]


def test_a_local_pool_imports_what_it_does_not_use_only_when_used():
    # dill, cloudpickle, the remote launchers with their control messages
    # are imported by neither the client nor a worker until something needs
    # them: dill for a function that standard pickle cannot send; nor is
    # importlib.abc (it imports importlib.resources), unless the interpreter
    # had it already; the status classes not before a pool starts (not at
    # its teardown either: see Runtime)
    lazy = (
        "dill",
        "cloudpickle",
        "distex_zmq.launch.remote",
        "distex_zmq.launch.spawner",
        "distex_zmq.wire.control",
    )
    code = (
        "import sys\n"
        "had_abc = 'importlib.abc' in sys.modules\n"
        "from distex_zmq import Pool\n"
        "print(had_abc or 'importlib.abc' not in sys.modules)\n"
        "print('distex_zmq.status' in sys.modules)\n"
        f"lazy = {lazy!r}\n"
        "probe = f'[m for m in {lazy!r} if m in __import__(\"sys\").modules]'\n"
        "def loaded():\n"
        "    return [m for m in lazy if m in sys.modules]\n"
        "print(loaded())\n"
        "with Pool(1) as pool:\n"
        "    print(pool.run(abs, -3), loaded(), pool.run(eval, probe))\n"
        "    print(pool.run(lambda x: x + 1, 1), 'dill' in loaded(),"
        " 'dill' in pool.run(eval, probe))\n"
        "    print(pool.status().state)\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True", "False", "[]", "3 [] []", "2 True True", "ready"]


def test_event_poolmap_when_eventkit_is_imported_first():
    # (with a loop set first, without which eventkit 1.0.3 fails to import
    # on Python 3.14, before distex_zmq could help)
    code = (
        "import asyncio\n"
        "asyncio.set_event_loop(asyncio.new_event_loop())\n"
        "import eventkit\n"
        "print(hasattr(eventkit.Event, 'poolmap'))\n"
        "from distex_zmq import Pool\n"
        "print(hasattr(eventkit.Event, 'poolmap'))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_eventkit_imports_even_if_poolmap_cannot_be_attached():
    # the program imported eventkit: a failure of ours must not fail that import
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "from distex_zmq import Pool\n"
        "sys.modules['distex_zmq.poolmap'] = None  # its import now fails\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import eventkit\n"
        "print(eventkit.Event.__name__, hasattr(eventkit.Event, 'poolmap'))\n"
        "print([str(w.message) for w in caught if 'poolmap' in str(w.message)])\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "Event False"
    assert "could not give eventkit's Event its poolmap method" in second


def test_version_matches_the_installed_metadata():
    from importlib.metadata import version

    assert distex_zmq.__version__ == version("distex_zmq")


def test_worker_check_prints_the_version_and_exits_0():
    proc = run_python("", "-m", "distex_zmq.worker", "--check")
    assert proc.returncode == 0, proc.stderr
    assert distex_zmq.__version__ in proc.stdout
    assert "distex_zmq" in proc.stdout


def test_worker_console_script_check():
    script = shutil.which("distex-zmq-worker", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the distex-zmq-worker script is not installed next to this python")
    proc = subprocess.run(
        [script, "--check"], cwd=OUTSIDE, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert distex_zmq.__version__ in proc.stdout


def test_worker_without_arguments_is_a_usage_error():
    proc = run_python("", "-m", "distex_zmq.worker")
    assert proc.returncode == 2
    assert "--connect" in proc.stderr and "--identity" in proc.stderr


def test_pool_works_from_outside_the_repository(tmp_path):
    # a script of a user: its own module of task functions, in its own directory
    (tmp_path / "usertasks.py").write_text("def f(x):\n    return x * x\n")
    (tmp_path / "main.py").write_text(
        "from distex_zmq import Pool\n"
        "import usertasks\n"
        "if __name__ == '__main__':\n"
        "    with Pool(2) as pool:\n"
        "        print(list(pool.map(usertasks.f, range(10))))\n"
        "        print(pool.submit(usertasks.f, 3).result())\n"
        "        print(pool.run(lambda x: x + 1, 1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str([x * x for x in range(10)]), "9", "2"]


def test_a_checkout_maps_only_broker_and_worker_into_the_package():
    """Python started in the repository's root imports the checkout's
    ``distex_zmq``: its ``broker`` and ``worker`` come from the top-level
    directories, and nothing else there (``tests``, ``distex_zmq`` itself)
    becomes a subpackage."""
    root = Path(__file__).resolve().parent.parent
    code = (
        "import importlib.util, distex_zmq, distex_zmq.broker, distex_zmq.worker.worker\n"
        "print(distex_zmq.__path__, distex_zmq.broker.__file__)\n"
        "for name in ('distex_zmq.tests', 'distex_zmq.distex_zmq', 'distex_zmq.benchmarks'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    path, broker_file = proc.stdout.rsplit(" ", 1)
    assert path == str([str(root / "distex_zmq")])
    assert Path(broker_file.strip()) == root / "broker" / "__init__.py"


def test_no_module_imports_another_modules_private_names():
    """Modules talk through their public names: ``from x import _y`` only
    within one module's own package-private helpers is a reach-in."""
    import ast

    root = Path(__file__).resolve().parent.parent
    reach_ins = []
    for folder in ("distex_zmq", "broker", "worker"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = node.module or ""
                ours = node.level > 0 or module.split(".")[0] == "distex_zmq"
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if ours and (private or any(p.startswith("_") for p in module.split("."))):
                        reach_ins.append(
                            f"{path.relative_to(root)}:{node.lineno} {module}.{alias.name}"
                        )
    # the package imports its checkout finder first, by design
    allowed = {"distex_zmq/__init__.py:5 distex_zmq._source_layout"}
    assert [r for r in reach_ins if r not in allowed] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--block", "0"], "--block must be at least 1"),
        (["--bound", "-1"], "--bound at least 2"),
        (["--remote-python", "foo"], "--remote-python takes HOST=CMD, not 'foo'"),
        (["--hosts", "tcp://mini/2"], "unknown scheme 'tcp://'"),
    ],
)
def test_the_demo_says_what_is_wrong_with_its_arguments(args, message):
    proc = run_python("", "-m", "distex_zmq", *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_service_of_the_compose_cluster_runs_under_an_init():
    # as PID 1 of its container, a spawner would leave the orphans of tasks
    # unreaped (zombies) and the client would ignore docker stop's SIGTERM
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services and all(service.get("init") is True for service in services.values())
