"""Start-up failures end in bounded time and surface as themselves.

A pool whose start fails (a host that cannot be reached, a spawner port where
nothing listens, a bind that fails, an ipc path too long for a socket) raises
that error from every entry point, says so in its ``repr``, and leaves no
thread, process or directory behind; ``PoolClosedError`` comes only after the
user's own ``shutdown``. The long-``TMPDIR`` cases run the pool in a
subprocess with a hard timeout, so that a hang fails the test, not the suite.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import logging
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
import traceback
import types
import weakref
from pathlib import Path

import pytest
import zmq

from distex_zmq import Pool
from distex_zmq.errors import HostConnectionError, PoolClosedError, WorkerStartError
from distex_zmq.launch.local import start_path
from distex_zmq.runtime.ipc import UNBOUND_STALE_AFTER
from tests import tasks
from tests.conftest import ROOT
from tests.helpers import child_pids, wait_until, workers_run_sitecustomize

#: Seconds within which a refused port must fail: far below connect_timeout.
REFUSAL_BOUND = 10.0
CONNECT_TIMEOUT = 30.0


def _closed_port() -> int:
    """A TCP port on loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ipc_dirs(base: str, pid: int) -> list[str]:
    return glob.glob(os.path.join(base, f"distex_zmq-{pid}-*"))


# the failed pools: (hosts, num_workers, the text the error names)


def _unreachable_ssh() -> tuple[list[str], int | None, str]:
    return ["ssh://nosuchhost.invalid/2"], 1, "nosuchhost.invalid"


def _refused_spawner() -> tuple[list[str], int | None, str]:
    port = _closed_port()
    return [f"127.0.0.1:{port}/1"], None, f"127.0.0.1:{port}"


FAILURES = {"unreachable_ssh": _unreachable_ssh, "refused_spawner": _refused_spawner}


@pytest.fixture(params=sorted(FAILURES))
def failed_pool(request, make_pool):
    """A pool whose start failed (waited for), and the host its error names."""
    hosts, num_workers, where = FAILURES[request.param]()
    pool = make_pool(num_workers, hosts, connect_timeout=CONNECT_TIMEOUT)
    assert wait_until(lambda: "failed" in repr(pool), timeout=REFUSAL_BOUND), repr(pool)
    return pool, where


def _assert_start_error(error: BaseException, where: str) -> None:
    assert isinstance(error, HostConnectionError), repr(error)
    assert where in str(error)
    # raised once: with a copy of itself as its context, its traceback
    # would print the error twice ("During handling of the above exception")
    assert type(error.__context__) is not type(error), repr(error.__context__)


SYNC_CALLS = {
    "run": lambda p: p.run(abs, -3),
    "map": lambda p: list(p.map(abs, [1, 2])),
    "submit_result": lambda p: p.submit(abs, -3).result(timeout=30),
    "run_on_all": lambda p: p.run_on_all(abs, -3),
    "with": lambda p: p.__enter__(),
}


async def _map_async(p: Pool) -> list[int]:
    return [x async for x in p.map_async(abs, [1, 2])]


async def _async_with(p: Pool) -> None:
    async with p:
        pass


ASYNC_CALLS = {
    "run_async": lambda p: p.run_async(abs, -3),
    "map_async": _map_async,
    "run_on_all_async": lambda p: p.run_on_all_async(abs, -3),
    "async_with": _async_with,
}


def test_every_entry_point_raises_the_start_error(failed_pool):
    pool, where = failed_pool
    assert "failed" in repr(pool) and where in repr(pool)
    for call in SYNC_CALLS.values():
        with pytest.raises(HostConnectionError) as info:
            call(pool)
        _assert_start_error(info.value, where)
    for make_call in ASYNC_CALLS.values():
        with pytest.raises(HostConnectionError) as info:
            asyncio.run(make_call(pool))
        _assert_start_error(info.value, where)
    pool.shutdown()
    assert "shut down" in repr(pool)
    with pytest.raises(PoolClosedError):
        pool.run(abs, -3)


def test_a_start_failing_while_with_waits_raises_its_error_once(make_pool):
    # the failure comes while ``__enter__`` waits for the start (a port that
    # takes the connection and never answers: it fails at connect_timeout)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        pool = make_pool(None, [f"{where}/1"], connect_timeout=1)
        with pytest.raises(HostConnectionError) as info, pool:
            pass
    _assert_start_error(info.value, where)


class NotSSH:
    """A TCP server on loopback that is not sshd: it keeps each connection
    silent, closes it at once, or answers it with a line of HTTP; or
    ("penalty") it closes it as sshd does an address it refuses for now."""

    def __init__(self, mode: str):
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            if self.mode == "silent":
                self.held.append(conn)
                continue
            if self.mode == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            if self.mode == "penalty":  # OpenSSH's sshd.c, drop_connection()
                conn.sendall(b"Not allowed at this time\r\n")
            conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


LISTENING = "is sshd listening on port {port}?"


@pytest.mark.parametrize(
    "mode, says",
    [
        ("silent", ["no SSH greeting came from port {port} within 1 s", LISTENING]),
        ("close", ["no SSH greeting came from port {port} (the connection was closed)", LISTENING]),
        (
            "http",
            ["port {port} sent no SSH greeting, only 'HTTP/1.1 400 Bad Request'", LISTENING],
        ),
        # sshd of OpenSSH 9.8 and later refuses an address for a while after
        # failed logins (PerSourcePenalties): it did not read as sshd at all
        (
            "penalty",
            ["sshd refused the connection ('Not allowed at this time')", "PerSourcePenalties"],
        ),
    ],
)
def test_an_ssh_port_where_sshd_does_not_answer_is_named_as_such(make_pool, mode, says):
    # paramiko says "No existing session" when the greeting does not come in
    # time, which read as sshd hanging up during the login (MaxAuthTries)
    server = NotSSH(mode)
    try:
        pool = make_pool(None, [f"ssh://127.0.0.1:{server.port}/1"], connect_timeout=1)
        with pytest.raises(HostConnectionError) as info:
            pool.run(abs, -1)
    finally:
        server.close()
    message = str(info.value)
    assert all(part.format(port=server.port) in message for part in says), message
    assert "MaxAuthTries" not in message


UNTOLD = "none of its calls raised the error"


def _untold(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if UNTOLD in r.getMessage()]


def _run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as ``python script.py`` in ``tmp_path``."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_failure_no_call_raised_is_logged_at_shutdown_once(failed_pool, caplog):
    # the workers that were up may have run every task before a host was
    # found unreachable: the error, raised by no call, is logged at the
    # shutdown rather than lost
    pool, where = failed_pool
    with caplog.at_level(logging.WARNING, logger="distex_zmq"):
        pool.shutdown()
        pool.shutdown()
    [message] = _untold(caplog)
    assert where in message and "HostConnectionError" in message


@pytest.mark.timeout(120)
def test_a_start_that_fails_during_the_shutdown_leaves_no_unread_error(tmp_path):
    # a host still connecting when the tasks are done: the shutdown waits a
    # little for the start, which fails; asyncio logged the error of a
    # future made for that wait as "never retrieved", with its traceback
    proc = _run_script(
        tmp_path,
        """
            import logging, socket
            from distex_zmq import Pool

            if __name__ == "__main__":
                logging.basicConfig()
                with socket.socket() as silent:  # takes connections, says nothing
                    silent.bind(("127.0.0.1", 0))
                    silent.listen()
                    port = silent.getsockname()[1]
                    pool = Pool(1, [f"127.0.0.1:{port}/1"], connect_timeout=1)
                    print(pool.run(abs, -1))  # on the local worker
                    pool.shutdown()
            """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\n"
    # the pool says it, once, and nothing else does
    assert proc.stderr.count(UNTOLD) == 1 and "no spawner answered" in proc.stderr, proc.stderr
    assert "never retrieved" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_failure_a_call_raised_is_not_logged_again(failed_pool, caplog):
    pool, where = failed_pool
    with pytest.raises(HostConnectionError):
        pool.run(abs, -3)
    with caplog.at_level(logging.WARNING, logger="distex_zmq"):
        pool.shutdown()
    assert _untold(caplog) == []


@pytest.mark.timeout(120)
def test_a_script_whose_pool_failed_unseen_says_so_at_its_end(tmp_path):
    # run as ``python script.py``, no logging set up: the pool fails after
    # the script's last call of it, and the script ends without shutdown;
    # the pool's finalizer tells of the error on stderr
    proc = _run_script(
        tmp_path,
        """
            import time
            from distex_zmq import Pool

            if __name__ == "__main__":
                pool = Pool(1, ["ssh://nosuchhost.invalid/2"])
                deadline = time.monotonic() + 30
                while "failed" not in repr(pool) and time.monotonic() < deadline:
                    time.sleep(0.05)
                print(repr(pool))
            """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stdout
    assert UNTOLD in proc.stderr and "nosuchhost.invalid" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_with_block_raises_the_start_error_at_entry(kind):
    hosts, num_workers, where = FAILURES[kind]()
    entered = False
    t0 = time.monotonic()
    with (
        pytest.raises(HostConnectionError) as info,
        Pool(num_workers, hosts, connect_timeout=CONNECT_TIMEOUT),
    ):
        entered = True
    assert not entered
    assert time.monotonic() - t0 < REFUSAL_BOUND  # a bound on a hang
    _assert_start_error(info.value, where)


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_async_with_block_raises_the_start_error_at_entry(kind, caplog):
    hosts, num_workers, where = FAILURES[kind]()
    entered = False
    pool = Pool(num_workers, hosts, connect_timeout=CONNECT_TIMEOUT)

    async def main() -> None:
        nonlocal entered
        async with pool:
            entered = True

    t0 = time.monotonic()
    with pytest.raises(HostConnectionError) as info:
        asyncio.run(main())
    assert not entered
    assert time.monotonic() - t0 < REFUSAL_BOUND  # a bound on a hang
    _assert_start_error(info.value, where)
    # raised at the entry: the shutdown does not say that no call raised it
    with caplog.at_level(logging.WARNING, logger="distex_zmq"):
        pool.shutdown()
    assert _untold(caplog) == []


def test_refused_spawner_port_fails_at_once():
    hosts, _, where = _refused_spawner()
    t0 = time.monotonic()
    with (
        pytest.raises(HostConnectionError, match="nothing listens") as info,
        Pool(None, hosts, connect_timeout=CONNECT_TIMEOUT),
    ):
        pass
    # a bound on a hang (connect_timeout is 30 s), not a performance assertion
    assert time.monotonic() - t0 < REFUSAL_BOUND
    assert where in str(info.value)


@pytest.mark.timeout(120)
def test_a_dropped_pool_whose_start_failed_is_freed():
    # The error of a failed start holds the frames it was raised through,
    # which hold the pool. The pool's finalizer held its runtime, which holds
    # that error: such a pool, dropped, was never freed, nor its runtime,
    # broker and sockets; a program that retries a pool kept every one.
    pools: list[weakref.ref[Pool]] = []

    def attempt() -> None:
        pool = Pool(1, initializer=tasks.init_fail)
        pools.append(weakref.ref(pool))
        with pool:
            pass

    for _ in range(3):
        with pytest.raises(WorkerStartError, match="initializer exploded"):
            attempt()
    gc.collect()
    assert [ref() for ref in pools] == [None, None, None]


@pytest.mark.timeout(180)
def test_every_worker_whose_initializer_raises_fails_the_start_quietly(caplog):
    # the first worker's error ends the start; a second worker whose
    # initializer raised then, the start over, was taken for a replacement:
    # the pool logged an ERROR for it and SIGKILLed it (in about one start
    # of eight of Pool(2); here every worker's initializer raises at once)
    with caplog.at_level(logging.WARNING, logger="distex_zmq"):
        for _ in range(5):
            at = time.time() + 1.0
            with (
                pytest.raises(WorkerStartError, match="initializer exploded"),
                Pool(4, initializer=tasks.init_fail_at, initargs=(at,)),
            ):
                pass
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.timeout(120)
def test_the_start_error_keeps_no_frames_of_the_calls_it_was_raised_from(make_pool):
    # Every call raises the one error of the start; raised as it was, it
    # added each call's frames to its traceback and kept them, with their
    # locals (a task's arguments), for as long as the pool lived.
    pool = make_pool(1, initializer=tasks.init_fail)
    with pytest.raises(WorkerStartError):
        pool.run(tasks.square, 2)  # the start has failed
    lengths = []
    for _ in range(50):
        with pytest.raises(WorkerStartError, match="initializer exploded") as info:
            pool.submit(tasks.square, 2)
        lengths.append(len(traceback.extract_tb(info.value.__traceback__)))
    assert lengths == [lengths[0]] * 50
    with pytest.raises(WorkerStartError) as info:
        pool.__enter__()
    assert len(traceback.extract_tb(info.value.__traceback__)) <= lengths[0]


def test_futures_pending_when_the_start_fails_get_its_error(make_pool, caplog):
    # a port that accepts TCP but never answers: the start fails after
    # connect_timeout, while the task waits for a worker
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        pool = make_pool(None, [f"127.0.0.1:{port}/1"], connect_timeout=1.0)
        future = pool.submit(abs, -3)
        with pytest.raises(HostConnectionError, match=f"127.0.0.1:{port}"):
            future.result(timeout=30)
        assert "failed" in repr(pool)
        with caplog.at_level(logging.WARNING, logger="distex_zmq"):
            pool.shutdown()
        assert _untold(caplog) == []  # the task that waited got it


def test_a_bind_that_fails_ends_the_start(make_pool):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pool = make_pool(None, [f"127.0.0.1:{_closed_port()}/1"], localport=port)
        with pytest.raises(zmq.ZMQError, match=f"port {port} is taken: give Pool"):
            pool.__enter__()
        assert "failed" in repr(pool)
        with pytest.raises(zmq.ZMQError):
            pool.run(abs, -3)


def test_a_localhost_not_of_this_machine_is_named(make_pool):
    # 192.0.2.1: TEST-NET-1, an address no machine has
    pool = make_pool(None, [f"127.0.0.1:{_closed_port()}/1"], localhost="192.0.2.1")
    with pytest.raises(zmq.ZMQError, match="cannot listen for remote workers") as info:
        pool.__enter__()
    assert "localhost='192.0.2.1' is not an address of this machine" in str(info.value)


def _run_in_subprocess(tmpdir: str, script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": tmpdir, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def long_tmpdir(tmp_path):
    """A TMPDIR whose path is too long for a socket in a directory under it."""
    path = tmp_path / ("x" * 60) / ("y" * 60)
    path.mkdir(parents=True)
    return str(path)


def test_a_long_tmpdir_takes_a_short_private_directory(long_tmpdir):
    proc = _run_in_subprocess(
        long_tmpdir,
        """
        import glob, os, stat
        from distex_zmq import Pool
        with Pool(1) as p:
            assert p.run(abs, -3) == 3
            (d,) = glob.glob(f"/tmp/distex_zmq-{os.getpid()}-*")
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        print("ok", os.getpid())
        """,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    pid = int(proc.stdout.split()[-1])
    assert not _ipc_dirs("/tmp", pid), "the pool left its ipc directory"
    assert not os.listdir(long_tmpdir)


def test_a_long_tmpdir_without_a_short_fallback_raises_naming_the_limit(long_tmpdir):
    proc = _run_in_subprocess(
        long_tmpdir,
        """
        import threading
        from distex_zmq import Pool
        from distex_zmq.runtime import ipc
        ipc.FALLBACK_DIRS = ()  # only TMPDIR: too long
        try:
            Pool(1)
        except OSError as e:
            print("error:", e)
        assert threading.active_count() == 1, threading.enumerate()
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "error:" in proc.stdout and "107" in proc.stdout and long_tmpdir in proc.stdout
    assert not os.listdir(long_tmpdir)


def _can_mount_in_a_namespace() -> bool:
    """Whether ``unshare --mount`` may mount a tmpfs (root, or CAP_SYS_ADMIN)."""
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "mount", "-t", "tmpfs", "tmpfs", tempfile.gettempdir()],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.timeout(90)
@pytest.mark.skipif(not _can_mount_in_a_namespace(), reason="needs unshare --mount (root)")
@pytest.mark.parametrize("fallback", [True, False])
def test_a_full_temp_dir_is_passed_over_for_the_ipc_socket(tmp_path, fallback):
    # the temp directory a process looked up once (tempfile caches it) is
    # on a file system that filled since: the pool made its socket's
    # directory there and failed to start, where /tmp had room (and
    # ProcessPoolExecutor, which needs no socket, starts)
    full = tmp_path / "full"
    full.mkdir()
    script = textwrap.dedent(
        f"""
        import glob, os, sys, tempfile
        from distex_zmq import Pool
        from distex_zmq.runtime import ipc
        tempfile.tempdir = {str(full)!r}
        try:
            open(os.path.join(tempfile.tempdir, "probe"), "w")
        except OSError as e:
            print("full:", e.strerror)
        if not {fallback!r}:
            ipc.FALLBACK_DIRS = ()
        try:
            with Pool(1) as pool:
                assert pool.run(abs, -3) == 3
                print("ran in", *glob.glob(f"/tmp/distex_zmq-{{os.getpid()}}-*"))
        except OSError as e:
            print("error:", e)
        """
    )
    # a tmpfs with one inode, its root's: full from the start
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            f'mount -t tmpfs -o size=64k,nr_inodes=1 tmpfs "{full}" && exec "$@"',
            "sh",
            sys.executable,
            "-c",
            script,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "full: No space left on device" in proc.stdout, proc.stdout + proc.stderr
    if fallback:
        assert "ran in /tmp/distex_zmq-" in proc.stdout, proc.stdout + proc.stderr
    else:
        error = "error: [Errno 28] no directory for the pool's ipc socket could be made"
        assert f"{error} (in {full}: No space left on device" in proc.stdout, proc.stdout
        assert "Free space there, or set TMPDIR" in proc.stdout


@pytest.mark.timeout(90)
@pytest.mark.skipif(not _can_mount_in_a_namespace(), reason="needs unshare --mount (root)")
@pytest.mark.parametrize("shm", ["rw", "ro"])
def test_no_writable_temp_dir_but_dev_shm_for_the_ipc_socket(shm):
    # a container with a read-only root file system: tempfile finds no
    # directory to write in (TMPDIR missing; /tmp, /var/tmp and the working
    # directory read-only), and the pool raised tempfile's FileNotFoundError
    # before it tried /dev/shm
    script = textwrap.dedent(
        """
        import os
        from distex_zmq import Pool
        try:
            with Pool(1) as pool:
                print("ran", pool.run(abs, -3))
        except OSError as e:
            print("error:", e)
        """
    )
    binds = ["/tmp", "/var/tmp"] + (["/dev/shm"] if shm == "ro" else [])
    mounts = " && ".join(f"mount -o bind,ro {d} {d}" for d in binds)
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh"]
        + [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": "/nonexistent"},
        cwd="/proc",  # not writable either
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    if shm == "rw":
        assert proc.stdout == "ran 3\n", proc.stdout + proc.stderr
    else:
        assert proc.stdout.startswith(
            "error: [Errno 13] no directory for the pool's ipc socket could be made (in "
            "/tmp: not writable; in /var/tmp: not writable; in /dev/shm: not writable"
        ), proc.stdout + proc.stderr


def test_stale_ipc_dirs_in_the_fallback_directory_are_swept(tmp_path):
    # the pool runs with a TMPDIR of its own, so that /tmp is a fallback
    # directory whatever TMPDIR the suite runs with
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tempfile.mkdtemp(prefix=f"distex_zmq-{dead.pid}-", dir="/tmp")
    old = time.time() - 2 * UNBOUND_STALE_AFTER
    os.utime(stale, (old, old))  # no socket in it, and long ago
    try:
        proc = _run_in_subprocess(
            str(tmp_path),
            """
            from distex_zmq import Pool
            with Pool(1) as pool:
                assert pool.run(abs, -3) == 3
            print("ok")
            """,
        )
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


@pytest.mark.timeout(60)
def test_a_worker_that_never_says_hello_fails_the_start(tmp_path, monkeypatch):
    # a worker that hangs before its code runs (here in a sitecustomize on
    # the path it gets from the client) would keep the start waiting forever
    from distex_zmq.runtime import supervisor

    workers_run_sitecustomize(
        tmp_path,
        "import os, time\nif os.environ.get('DZQ_TEST_HANG_AT_START'):\n    time.sleep(600)\n",
        monkeypatch,
    )
    monkeypatch.setenv("DZQ_TEST_HANG_AT_START", "1")
    monkeypatch.setattr(supervisor, "HELLO_TIMEOUT", 2.0)
    before = child_pids()
    with (
        pytest.raises(WorkerStartError, match="did not connect to the pool within 2 s"),
        Pool(1) as pool,
    ):
        pool.run(abs, -3)
    assert wait_until(lambda: child_pids() <= before, timeout=10), "the worker was left"


def test_a_worker_starts_with_the_standard_library_first_but_the_clients_sitecustomize(
    tmp_path, monkeypatch
):
    # the standard library first, so that a script named argparse.py does not
    # stand in for the module the worker imports; but the directory of the
    # sitecustomize the client ran before it, where a Debian or Ubuntu Python
    # has one of its own that a worker ran instead
    stdlib = sysconfig.get_path("stdlib")
    dynload = os.path.join(stdlib, "lib-dynload")
    script, hooks, site = (str(tmp_path / name) for name in ("script", "hooks", "site"))
    paths = [script, hooks, stdlib, dynload, site]
    monkeypatch.delitem(sys.modules, "sitecustomize", raising=False)
    monkeypatch.delitem(sys.modules, "usercustomize", raising=False)
    assert start_path(paths) == [stdlib, dynload, script, hooks, site]
    hook = types.ModuleType("sitecustomize")
    hook.__file__ = os.path.join(hooks, "sitecustomize.py")
    monkeypatch.setitem(sys.modules, "sitecustomize", hook)
    assert start_path(paths) == [hooks, stdlib, dynload, script, site]
    hook.__file__ = os.path.join(stdlib, "sitecustomize.py")  # the Python's own
    assert start_path(paths) == [stdlib, dynload, script, hooks, site]


WORKER_PATH_AND_FLAGS = """
import importlib.util, sys, time
from distex_zmq import Pool

def probe():
    import importlib.util, sys
    return importlib.util.find_spec("only_in_cwd") is not None, sys.flags.dev_mode

if __name__ == "__main__":
    with Pool(1) as pool:
        print(importlib.util.find_spec("only_in_cwd") is not None, *pool.run(probe))
    with Pool(1, worker_loop="asyncio") as pool:
        pool.run(time.sleep, 0.3)  # a task longer than asyncio's slow callback
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "options, expected",
    [
        ([], "False False False"),
        (["-X", "dev", "-W", "error::DeprecationWarning"], "False False True"),
    ],
)
def test_workers_have_the_clients_path_and_interpreter_options(tmp_path, options, expected):
    # `python other/script.py` from a directory that holds a module: the
    # script cannot import it, nor can its workers (as with
    # ProcessPoolExecutor); the interpreter's options reach them too
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "only_in_cwd.py").write_text("X = 1\n")
    script = tmp_path / "other" / "script.py"
    script.parent.mkdir()
    script.write_text(WORKER_PATH_AND_FLAGS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, *options, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == expected
    # -X dev puts the worker's event loop in asyncio's debug mode, which
    # logged each sync task longer than 0.1 s (it runs in a callback of the
    # loop) as "Executing <Handle Worker._on_readable()> took 0.300 seconds"
    assert "Executing <" not in proc.stderr, proc.stderr


PACKAGE_MAIN = """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from distex_zmq import Pool

from .tasks import f


@dataclass
class Box:
    n: int


def bump(box):
    return Box(f(box.n))


def lazy(x):
    from .tasks import f  # relative to the package of the script

    return f(x)


def spawning(x):
    # spawn's child imports the script by its module's name, its relative
    # imports and all, not by its path
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as inner:
        return inner.submit(f, x).result()


def calls(executor):
    calls = [(bump, Box(1)), (lazy, 2), (spawning, 3)]
    results = [executor.submit(fn, x).result() for fn, x in calls]
    return list(executor.map(f, range(3))), *results


if __name__ == "__main__":
    with ProcessPoolExecutor(1) as control:
        print(*calls(control))
    with Pool(1) as pool:
        print(*calls(pool))
"""

FROM_CWD = """
from distex_zmq import Pool
from myproj.tasks import f

with Pool(1) as pool:
    print(list(pool.map(f, range(3))), pool.run(f, 1))
"""


@pytest.mark.timeout(100)
@pytest.mark.parametrize("how", ["-m", "-c", "stdin"])
def test_a_package_of_the_current_directory_under_m_c_and_stdin(tmp_path, how):
    # `python -m myproj.main` with relative imports, `python -c` and
    # `python - < script.py`: the workers import the package from the
    # directory the client runs in, as the client does
    package = tmp_path / "myproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("def f(x):\n    return x + 1\n")
    (package / "main.py").write_text(PACKAGE_MAIN)
    args, stdin = {"-m": (["-m", "myproj.main"], None), "-c": (["-c", FROM_CWD], None)}.get(
        how, (["-"], FROM_CWD)
    )
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr
    if how == "-m":
        # the control's line, then the pool's
        assert proc.stdout.splitlines() == ["[1, 2, 3] Box(n=2) 3 4"] * 2
    else:
        assert proc.stdout.strip() == "[1, 2, 3] 2"
