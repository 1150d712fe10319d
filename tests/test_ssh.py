"""Remote workers over SSH, on a real cluster of network namespaces (``tests.multihost``).

Every test ends with no agent or worker of a pool left on any host; the
cluster (namespaces, sshds) lives for the module and is torn down even when
a test fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from distex_zmq import HostConnectionError, Pool
from tests import tasks
from tests.helpers import child_pids, wait_until
from tests.multihost import HOSTS, REMOTE_PYTHON, ROOT, hostnames, unavailable

REASON = unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.timeout(120),
]


@pytest.fixture
def ssh_pool(ssh_home, make_pool):
    """``ssh_pool(hosts, num_workers=1, **options)``: a pool of the cluster's
    hosts (and ``num_workers`` local workers), shut down after the test."""

    def make(hosts, num_workers=1, **kwargs):
        kwargs.setdefault("remote_python", REMOTE_PYTHON)
        return make_pool(num_workers, hosts, **kwargs)

    return make


# computing across hosts


def test_mixed_pool_runs_on_every_host(ssh_home, ssh_pool):
    here = socket.gethostname()
    pool = ssh_pool(["ssh://dzq-a/2", "ssh://dzq-b/2", "ssh://root@dzq-c:22/1"])
    assert pool.total_workers() == 6
    assert hostnames(pool) == sorted([here, "dzq-a", "dzq-a", "dzq-b", "dzq-b", "dzq-c"])
    assert list(pool.map(tasks.square, range(2000))) == [x * x for x in range(2000)]
    # where each input ran: every host took a share
    where = set(pool.map(tasks.hostname_after, [0.01] * 60))
    assert {"dzq-a", "dzq-b", "dzq-c"} <= where
    assert pool.submit(tasks.add, 2, 3).result(timeout=30) == 5
    with pytest.raises(ValueError):
        pool.run(tasks.fail_on, 3)
    assert len(ssh_home.pool_processes()) == 3  # an agent and workers on each host


def test_async_api_on_remote_workers(ssh_home, ssh_pool):
    async def main():
        async with ssh_pool(["ssh://dzq-a/2"], num_workers=1) as pool:
            results = [r async for r in pool.map_async(tasks.square, range(500))]
            assert results == [x * x for x in range(500)]
            assert await pool.run_async(tasks.async_square, 3) == 9

    asyncio.run(main())


def test_direct_mode(ssh_home, ssh_pool):
    pool = ssh_pool(["ssh://dzq-a/1", "ssh://dzq-b/1"], ssh_tunnel=False)
    assert hostnames(pool) == sorted([socket.gethostname(), "dzq-a", "dzq-b"])
    assert list(pool.map(tasks.square, range(1000))) == [x * x for x in range(1000)]


def test_big_arguments_cross_the_tunnel(ssh_home, ssh_pool):
    blob = os.urandom(3 << 20)
    pool = ssh_pool(["ssh://dzq-a/1"], num_workers=None)  # no local workers
    assert hostnames(pool) == ["dzq-a"]
    assert pool.run_on_all(tasks.bytes_len, blob) == [len(blob)]
    echoed = list(pool.map(tasks.identity, [blob] * 4))
    assert all(e == blob for e in echoed)


# faults


def test_remote_worker_killed_mid_map(ssh_home, ssh_pool):
    pool = ssh_pool(["ssh://dzq-a/2"], num_workers=1)
    pool.run_on_all(int, 0)
    victims = ssh_home.workers("dzq-a")
    assert len(victims) == 2
    results = []
    for i, r in enumerate(pool.map(tasks.sleep_return, [(0.02, x) for x in range(150)], star=True)):
        results.append(r)
        if i == 20:
            os.kill(victims[0], signal.SIGKILL)
    assert results == list(range(150))
    # the dead worker was replaced on its host
    assert wait_until(lambda: len(ssh_home.workers("dzq-a")) == 2, timeout=10)
    assert hostnames(pool).count("dzq-a") == 2


def test_host_cut_off_mid_map(ssh_home, ssh_pool):
    pool = ssh_pool(
        ["ssh://dzq-a/2", "ssh://dzq-b/2"], num_workers=1, heartbeat_timeout=2, connect_timeout=2
    )
    try:  # the link must be up again before the pool shuts down
        assert hostnames(pool).count("dzq-b") == 2
        results = []
        where = []
        inputs = [(0.05, x) for x in range(120)]
        for i, (host, r) in enumerate(pool.map(tasks.host_and_value, inputs, star=True)):
            results.append(r)
            where.append(host)
            if i == 15:
                ssh_home.link("dzq-b", up=False)
        # nothing lost, nothing twice, in order
        assert results == list(range(120))
        assert "dzq-b" in where[:16]
        # the agent on the cut-off host stopped its workers by itself
        assert wait_until(lambda: "dzq-b" not in ssh_home.pool_processes(), timeout=15)
        # once the host is back, the pool reconnects to it
        ssh_home.link("dzq-b", up=True)
        deadline = time.monotonic() + 60
        while hostnames(pool).count("dzq-b") < 2:
            assert time.monotonic() < deadline, "the pool did not reconnect to dzq-b"
            time.sleep(0.5)
        assert list(pool.map(tasks.square, range(100))) == [x * x for x in range(100)]
    finally:
        ssh_home.link("dzq-b", up=True)


def _lost_records(caplog):
    return [r for r in caplog.records if re.match(r"host .* lost:", r.getMessage())]


def test_cut_host_is_lost_heartbeat_timeout_after_its_last_message(ssh_home, ssh_pool, caplog):
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    pool = ssh_pool(["ssh://dzq-b/1"], num_workers=1, heartbeat_timeout=3, connect_timeout=3)
    try:
        assert "dzq-b" in hostnames(pool)
        time.sleep(1)  # a few heartbeats
        cut = time.monotonic()
        ssh_home.link("dzq-b", up=False)
        assert wait_until(lambda: _lost_records(caplog), timeout=15)
        noticed = time.monotonic() - cut
    finally:
        ssh_home.link("dzq-b", up=True)
    message = _lost_records(caplog)[0].getMessage()
    silent = re.search(r"no heartbeat for ([\d.]+) s", message)
    assert silent, message
    # Due 3 s after the last message heard (a pong, at most a quarter of the
    # timeout before the cut); the margins only absorb scheduling delays on a
    # loaded machine. tests/test_heartbeat.py checks the deadline itself, with
    # the last message placed between two pings.
    assert float(silent.group(1)) < 3.5, message
    assert noticed < 3 + 1.0, message
    assert pool.run(tasks.square, 4) == 16


def test_cut_ssh_host_under_traffic_leaves_no_traceback(
    ssh_home, ssh_pool, monkeypatch, capfd, caplog
):
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    blob = os.urandom(2 << 20)
    pool = ssh_pool(["ssh://dzq-b/2"], num_workers=1, heartbeat_timeout=2, connect_timeout=2)
    try:
        assert hostnames(pool).count("dzq-b") == 2
        futures = [pool.submit(tasks.bytes_len, blob) for _ in range(40)]
        time.sleep(0.3)  # the tunnel carries arguments to dzq-b's workers now
        ssh_home.link("dzq-b", up=False)
        assert [f.result(timeout=60) for f in futures] == [len(blob)] * 40
        assert wait_until(lambda: _lost_records(caplog), timeout=15)
        time.sleep(1)  # the tunnel's threads end after the transport closes
    finally:
        ssh_home.link("dzq-b", up=True)
    assert not errors, [e.exc_value for e in errors]
    assert "Traceback" not in capfd.readouterr().err


CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    sys.path.insert(0, {root!r})
    from distex_zmq import Pool
    from tests import tasks
    pool = Pool(1, ["ssh://dzq-a/2", "ssh://dzq-b/1"], remote_python={python!r})
    print(sorted(pool.run_on_all(socket.gethostname)), flush=True)
    pool.map(tasks.sleep_return, [(5, 0)] * 20, star=True)
    """
)


def test_client_killed_leaves_nothing_on_the_hosts(ssh_home):
    script = CLIENT.format(root=str(ROOT), python=REMOTE_PYTHON)
    client = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        line = client.stdout.readline()
        assert "dzq-a" in line and "dzq-b" in line, line
        assert ssh_home.pool_processes().keys() == {"dzq-a", "dzq-b"}
        client.kill()
        client.wait(10)
        assert wait_until(lambda: not ssh_home.pool_processes(), timeout=10), (
            ssh_home.pool_processes()
        )
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
    # the client's local worker goes too (parent-death signal)
    assert wait_until(lambda: not child_pids(client.pid), timeout=10)


# refusals: each a clear error, nothing left running


def expect_refusal(ssh_pool, hosts, **kwargs) -> str:
    before = child_pids()
    pool = ssh_pool(hosts, **kwargs)
    try:
        with pytest.raises(HostConnectionError) as info:
            pool.run_on_all(int, 0)  # waits for the start-up, and raises its error
    finally:
        pool.shutdown()
    assert wait_until(lambda: child_pids() == before, timeout=10)
    return str(info.value)


def test_unknown_host_key_is_refused(ssh_home, monkeypatch, ssh_pool):
    home = ssh_home.other_home("trusts-only-a", trusted=("dzq-a",))
    monkeypatch.setenv("HOME", str(home))
    message = expect_refusal(ssh_pool, ["ssh://dzq-a/1", "ssh://dzq-b/1"])
    assert "dzq-b" in message and "not in" in message and "known_hosts" in message
    assert "ssh-keyscan" in message and "ssh_accept_new_hosts=True" in message
    assert "SHA256:" in message
    # trusting new hosts on request, and remembering them as ssh does
    with ssh_pool(["ssh://dzq-b/1"], ssh_accept_new_hosts=True) as pool:
        assert "dzq-b" in hostnames(pool)
    known = (home / ".ssh" / "known_hosts").read_text()
    assert ssh_home.host_keys["dzq-b"].split()[1] in known


def test_changed_host_key_is_refused(ssh_home, monkeypatch, ssh_pool):
    home = ssh_home.other_home("wrong-key-for-a", trusted=("dzq-b",))
    known = home / ".ssh" / "known_hosts"
    # dzq-a listed with dzq-b's key: what a man in the middle would look like
    known.write_text(f"{ssh_home.addresses['dzq-a']} {ssh_home.host_keys['dzq-b']}\n")
    monkeypatch.setenv("HOME", str(home))
    message = expect_refusal(ssh_pool, ["ssh://dzq-a/1"], ssh_accept_new_hosts=True)
    assert "does NOT match" in message and f"ssh-keygen -f '{known}' -R" in message


def test_bad_key_is_refused(ssh_home, monkeypatch, ssh_pool):
    home = ssh_home.other_home("stranger", trusted=HOSTS, own_key=True)
    monkeypatch.setenv("HOME", str(home))
    message = expect_refusal(ssh_pool, ["ssh://dzq-a/1"])
    assert "authentication as 'root' failed" in message and "authorized_keys" in message


def test_wrong_user_is_refused(ssh_home, ssh_pool):
    message = expect_refusal(ssh_pool, ["ssh://nosuchuser@dzq-a/1"])
    assert "authentication as 'nosuchuser' failed" in message


def test_missing_distex_zmq_is_reported(ssh_home, ssh_pool):
    # -S: no site-packages, so an interpreter without distex_zmq
    message = expect_refusal(ssh_pool, ["ssh://dzq-c/1"], remote_python=f"{sys.executable} -S")
    assert "dzq-c" in message and "distex_zmq is not installed" in message
    assert "No module named 'distex_zmq'" in message  # the remote's own words


def test_missing_interpreter_is_reported(ssh_home, ssh_pool):
    message = expect_refusal(ssh_pool, ["ssh://dzq-c/1"], remote_python="/no/such/python3")
    assert "exit status 127" in message and "not a command there" in message


def test_agent_of_another_control_version_is_refused(ssh_home, ssh_pool):
    # an "interpreter" that answers as an agent of control version 1 would
    hello = {"v": 1, "ev": "hello", "host": "dzq-c", "version": "0.0.1", "protocol": 2}
    fake_agent = f"echo {shlex.quote(json.dumps(hello))}; true"
    message = expect_refusal(ssh_pool, ["ssh://dzq-c/1"], remote_python=fake_agent)
    assert "ssh://dzq-c runs distex_zmq 0.0.1 (control protocol version 1), this client" in message
    assert "pip install distex_zmq==" in message


def test_closed_port_and_cut_off_host_fail_in_bounded_time(ssh_home, ssh_pool):
    message = expect_refusal(ssh_pool, ["ssh://dzq-a:2222/1"])
    assert "cannot connect" in message and "port 2222" in message
    ssh_home.link("dzq-c", up=False)
    try:
        message = expect_refusal(ssh_pool, ["ssh://dzq-c/1"], connect_timeout=1.5)
        # given longer, the kernel gives up on the address (no ARP answer):
        # the host is named as unreachable, not its port as closed
        longer = expect_refusal(ssh_pool, ["ssh://dzq-c/1"], connect_timeout=10)
    finally:
        ssh_home.link("dzq-c", up=True)
    assert "no answer within 1.5 s" in message
    assert "no route to" in longer or "no answer within 10 s" in longer, longer


def test_unknown_host_name_is_refused():
    # needs no cluster: the name cannot resolve
    before = child_pids()
    pool = Pool(1, ["ssh://no-such-host.invalid/1"], connect_timeout=5)
    with pytest.raises(HostConnectionError) as info:
        pool.run_on_all(int, 0)
    pool.shutdown()
    assert "cannot resolve the host name 'no-such-host.invalid'" in str(info.value)
    assert wait_until(lambda: child_pids() == before, timeout=10)
