"""A remote worker's TCP connection to the pool dropped and connected again
while the worker lives (a reset, a NAT's timeout), on loopback: ``ss -K``
destroys the connection while a message is on its way, which is lost. The
task whose TASK or RESULT was lost runs again, and the worker stays; a
worker whose HELLO was lost joins; a worker that cannot connect again for
a while (an iptables rule on the test's port) stays if it comes back
within the pool's ``heartbeat_timeout``. No cluster needed; as root (``ss
-K`` and iptables need CAP_NET_ADMIN)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distex_zmq.broker import broker as broker_module
from distex_zmq.broker.losses import UNREACHABLE_GRACE

from distex_zmq import Pool
from tests import fault_tasks as ft
from tests.helpers import LoopbackSpawner, free_port, pid_alive, wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ss") is None,
        reason="cutting a TCP connection with `ss -K` needs root and iproute2's ss",
    ),
]

#: Bytes of a task's argument or result: more than loopback's socket buffers
#: hold, so that part of it is on its way while its receiver stands still.
LARGE = 64 * 1024 * 1024

WARNING = "dropped and came back, which lost the messages of 1 of its tasks"


def _queued(side: str, port: int) -> int:
    """The bytes queued in the TCP sockets whose ``side`` (``sport`` or
    ``dport``) is ``port`` on loopback (both queues, each socket)."""
    out = subprocess.run(
        ["ss", "-tnH", "dst", "127.0.0.1", side, "=", f":{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(line.split()[1]) + int(line.split()[2]) for line in out.splitlines())


def _cut(port: int) -> None:
    """Destroy the connections to the broker's ``port`` (their peers get a reset)."""
    out = subprocess.run(
        ["ss", "-K", "-tnH", "dst", "127.0.0.1", "dport", "=", f":{port}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip():
        pytest.skip(f"`ss -K` destroyed no socket (a kernel without INET_DIAG_DESTROY?): {out}")


@contextlib.contextmanager
def _iptables(*rule: str) -> Iterator[None]:
    """Insert ``rule`` (a chain of the filter table and what it matches: the
    test's own port only) while the block runs; skip without iptables."""
    if shutil.which("iptables") is None:
        pytest.skip("the test needs iptables (tests/run.sh installs it as root)")
    added = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"iptables could not add the rule {rule}: {added.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True, check=True)


def _matched(port: int) -> int:
    """The packets that the rules on loopback's output to ``port`` matched."""
    out = subprocess.run(
        ["iptables", "-v", "-x", "-n", "-L", "OUTPUT"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"dpt:{port} " in line)


def _lose_a_task_on_its_way(pool: Pool, port: int) -> None:
    """Cut the connection of ``pool``'s one worker, stopped, while a large
    task is on its way to it: the task runs again on the same worker, which
    lost nothing but a message (no worker lost, no try counted)."""
    pid = pool.status().workers[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        future = pool.submit(len, b"x" * LARGE)
        wait_until(lambda: _queued("sport", port) > 0, timeout=30)
        _cut(port)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert future.result(timeout=60) == LARGE
    status = pool.status()
    assert [w.pid for w in status.workers] == [pid], status
    assert status.totals.workers_lost == 0 and status.totals.retried == 0, status


def test_a_task_lost_on_its_way_to_a_worker_runs_again(tmp_path: Path, caplog: Any) -> None:
    # the worker stands still (SIGSTOP) while the broker sends a large
    # task: part of it waits in the sockets as the connection is cut, and
    # the worker never gets it; its SYNC after connecting again has the
    # broker's CHECK find it missing
    caplog.set_level(logging.INFO, logger="distex_zmq")
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None, localport=port) as pool:
            assert pool.run(abs, -1) == 1
            _lose_a_task_on_its_way(pool, port)
    finally:
        spawner.stop()
    assert WARNING in caplog.text, caplog.text


CLIENT = textwrap.dedent(
    """
    import pathlib, sys, time
    from distex_zmq import Pool

    def large(n, started):
        import pathlib, time
        pathlib.Path(started).touch()
        time.sleep(1.0)  # the test stops this client meanwhile
        return b"y" * n

    spawner, port, size = (int(arg) for arg in sys.argv[1:4])
    started = pathlib.Path(sys.argv[4])
    with Pool(None, [f"127.0.0.1:{spawner}/1"], secret=None, localport=port,
              heartbeat_timeout=120) as pool:
        pid = pool.status().workers[0].pid
        future = pool.submit(large, size, str(started))
        while not started.exists():  # the task runs: stopped now, the client
            time.sleep(0.01)         # cannot take its result
        print("submitted", flush=True)
        assert len(future.result(timeout=60)) == size
        status = pool.status()
        assert [w.pid for w in status.workers] == [pid], status
        print("got it", flush=True)
    """
)


def test_a_result_lost_on_its_way_to_the_pool_runs_again(tmp_path: Path) -> None:
    # the client stands still (SIGSTOP) while the worker sends a large
    # result: part of it waits in the sockets as the connection is cut, and
    # the pool never gets it
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    client = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(spawner.port),
            str(port),
            str(LARGE),
            str(tmp_path / "started"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == "submitted\n", client.communicate(timeout=30)
        os.kill(client.pid, signal.SIGSTOP)
        try:
            # the result on its way fills the sockets' buffers (megabytes)
            assert wait_until(lambda: _queued("dport", port) > 1 << 20, timeout=30)
            _cut(port)
        finally:
            os.kill(client.pid, signal.SIGCONT)
        out, err = client.communicate(timeout=90)
        assert client.returncode == 0 and out == "got it\n", err
        assert WARNING in err, err
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        spawner.stop()


def test_a_worker_whose_hello_was_lost_joins_the_pool(tmp_path: Path, caplog: Any) -> None:
    # the worker's HELLO, its first message once ZeroMQ's handshake is done,
    # is dropped on its way, then its connection is cut: the broker never
    # read it. Messages to the pool's TCP port are encrypted (CURVE), each
    # in a MESSAGE command whose name is plain: an iptables rule on the
    # broker's port only drops the packets that hold one. Connected again,
    # the worker says hello again rather than SYNC (which the broker
    # ignores from a worker it does not know), and joins; the broker checks
    # its tasks (none), which ends the worker's wait for a CHECK
    caplog.set_level(logging.INFO, logger="distex_zmq")
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    rule = ("OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port))
    rule += ("-m", "string", "--algo", "bm", "--hex-string", "|07|MESSAGE", "-j", "DROP")
    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["pool"] = Pool(
                None, [f"127.0.0.1:{spawner.port}/1"], secret=None, localport=port
            )
        except BaseException as e:  # noqa: BLE001 - the test reports it
            started["error"] = e

    starter = threading.Thread(target=start)
    try:
        with _iptables(*rule):
            starter.start()
            assert wait_until(lambda: _matched(port) > 0, timeout=30), "no HELLO was dropped"
            _cut(port)
        starter.join(timeout=60)
        assert not starter.is_alive() and "error" not in started, started
        pool = started["pool"]
        assert pool.run(abs, -1) == 1
        status = pool.status()
        assert len(status.workers) == 1, status
        assert status.totals.workers_lost == 0 and status.totals.replacements == 0, status
        assert "dropped and came back: checking its tasks" in caplog.text, caplog.text
        assert WARNING not in caplog.text, caplog.text
    finally:
        starter.join(timeout=60)
        if "pool" in started:
            started["pool"].shutdown()
        spawner.stop()


def test_a_worker_that_heard_nothing_yet_says_hello_again(tmp_path: Path, caplog: Any) -> None:
    # as in the first test, but no message reached the worker before its
    # first task was lost: it says hello again, which the broker, that had
    # admitted it, takes as SYNC (no second record; the task runs again)
    caplog.set_level(logging.INFO, logger="distex_zmq")
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None, localport=port) as pool:
            _lose_a_task_on_its_way(pool, port)
    finally:
        spawner.stop()
    assert "dropped and came back: checking its tasks" in caplog.text, caplog.text
    assert WARNING in caplog.text, caplog.text
    assert "dropped a message" not in caplog.text, caplog.text


def _refuse_connections(port: int) -> contextlib.AbstractContextManager[None]:
    """New TCP connections to ``port`` on loopback are refused (a reset
    answers their SYN) while the block runs; established ones pass."""
    syn = ("OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "--syn")
    return _iptables(*syn, "-j", "REJECT", "--reject-with", "tcp-reset")


def test_a_remote_worker_that_connects_again_within_its_grace_is_kept(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the worker's connection is cut while it runs a task, and it cannot
    # connect again for longer than a local worker's grace: the broker's
    # probe finds it cut off, and waits for it as long as the pool lets a
    # connection be silent (heartbeat_timeout) before it gives up on it
    monkeypatch.setattr(broker_module, "PROBE_INTERVAL", 0.2)
    caplog.set_level(logging.INFO, logger="distex_zmq")
    journal = tmp_path / "journal"
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None, localport=port) as pool:
            pid = pool.run(ft.pid)
            future = pool.submit(ft.journal_and_sleep, str(journal), 4.0)
            assert wait_until(journal.exists, timeout=30)
            with _refuse_connections(port):
                _cut(port)
                assert wait_until(lambda: "could not send to" in caplog.text, timeout=30)
                time.sleep(3 * UNREACHABLE_GRACE)  # cut off longer than a local worker may be
            assert future.result(timeout=60) == pid
            # the worker's SYNC follows its result: it reads of the drop
            # when its loop runs again, after the task
            assert wait_until(lambda: "can be reached again" in caplog.text, timeout=30), (
                caplog.text
            )
            status = pool.status()
            assert [w.pid for w in status.workers] == [pid], status
            assert status.totals.workers_lost == 0 and status.totals.replacements == 0, status
        assert journal.read_text() == f"{pid}\n"  # it ran once
    finally:
        spawner.stop()


def test_a_remote_worker_cut_off_past_its_grace_is_replaced(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same, but the worker stays cut off until the broker gives up on
    # it: it is killed and replaced, and its task runs on the replacement
    monkeypatch.setattr(broker_module, "PROBE_INTERVAL", 0.2)
    caplog.set_level(logging.INFO, logger="distex_zmq")
    journal = tmp_path / "journal"
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    port = free_port()
    hosts = [f"127.0.0.1:{spawner.port}/1"]
    try:
        with Pool(None, hosts, secret=None, localport=port, heartbeat_timeout=3) as pool:
            pid = pool.run(ft.pid)
            future = pool.submit(ft.journal_and_sleep, str(journal), 2.0)
            assert wait_until(journal.exists, timeout=30)
            with _refuse_connections(port):
                _cut(port)
                assert wait_until(lambda: " was lost (" in caplog.text, timeout=30), caplog.text
            other = future.result(timeout=60)
            assert other != pid
            assert journal.read_text() == f"{pid}\n{other}\n"  # it ran again, elsewhere
            assert wait_until(lambda: not pid_alive(pid), timeout=30)  # killed
            status = pool.status()
            ready = [w.pid for w in status.workers if w.state == "ready"]
            assert ready == [other], status
            assert status.totals.workers_lost == 1, status
    finally:
        spawner.stop()
