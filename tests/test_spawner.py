"""Spawner hosts and CurveZMQ security, on the multi-host cluster (``tests.multihost``).

``dzq-a`` and ``dzq-b`` run ``python -m distex_zmq.spawner`` with the
cluster's secret (restarted by the fixture if a test killed one); ``dzq-c``
is reached over SSH. Every test ends with no worker of any pool left on any
host.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from distex_zmq import HostConnectionError, Pool, WorkerLostError
from distex_zmq.security import ClusterKeys, KeyPair, make_client
from distex_zmq.wire import control as sp
from tests import tasks
from tests.helpers import LoopbackSpawner, child_pids, command_line, wait_until
from tests.multihost import REMOTE_PYTHON, ROOT, Capture, hostnames, unavailable

REASON = unavailable()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.timeout(180),
]
SECRET = "correct horse battery staple 42"
SPAWNER_HOSTS = ("dzq-a", "dzq-b")


@pytest.fixture(scope="module")
def secret_file(cluster):
    path = cluster.dir / "cluster.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def spawners(cluster, secret_file):
    procs = {}
    try:
        for host in SPAWNER_HOSTS:
            procs[host] = cluster.start_spawner(
                host, "--secret-file", str(secret_file), "--max-workers", "8"
            )
        yield procs
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def hosts(ssh_home, spawners, secret_file, monkeypatch):
    """The cluster with a spawner on dzq-a and dzq-b, their secret in the environment."""
    for host, proc in list(spawners.items()):
        if proc.poll() is not None:  # a test killed it: a new one
            spawners[host] = ssh_home.start_spawner(
                host, "--secret-file", str(secret_file), "--max-workers", "8"
            )
    monkeypatch.setenv("DISTEX_ZMQ_SECRET", SECRET)
    yield ssh_home


#: a CURVE key as Z85 text (``wire/control.py``): 40 characters of its alphabet
Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def curve_keys_in(cmd: str) -> list[str]:
    """The arguments of command line ``cmd`` (and values of its ``--name=value``
    options) that may be CURVE keys: 40 Z85 characters that are neither hex
    (worker identities) nor the path of a file."""
    found = []
    for arg in cmd.split():
        word = arg.partition("=")[2] if arg.startswith("--") and "=" in arg else arg
        if not Z85_KEY.fullmatch(word) or os.path.exists(word):
            continue
        try:
            bytes.fromhex(word)
        except ValueError:
            found.append(word)
    return found


def at(cluster, host, count, port=None):
    """A spawner host spec by address: the names resolve only inside the namespaces."""
    return f"{cluster.addresses[host]}{f':{port}' if port else ''}/{count}"


# working


def test_mixed_pool_of_local_spawner_and_ssh_hosts(hosts):
    here = socket.gethostname()
    with Pool(
        1,
        [at(hosts, "dzq-a", 2), at(hosts, "dzq-b", 1, 8899), "ssh://dzq-c/1"],
        remote_python=REMOTE_PYTHON,
    ) as pool:
        assert hostnames(pool) == sorted([here, "dzq-a", "dzq-a", "dzq-b", "dzq-c"])
        assert list(pool.map(tasks.square, range(2000))) == [x * x for x in range(2000)]
        where = set(pool.map(tasks.hostname_after, [0.01] * 60))
        assert {"dzq-a", "dzq-b", "dzq-c"} <= where
        with pytest.raises(ValueError):
            pool.run(tasks.fail_on, 3)
        # the workers' keys reached them on stdin, not on their command lines:
        # no process on the pool's hosts, nor any child of the client, shows
        # a CURVE key or the cluster secret
        pool_hosts = (*SPAWNER_HOSTS, "dzq-c")
        commands = [cmd for host in pool_hosts for cmd in hosts.processes(host).values()]
        commands += [" ".join(command_line(pid)) for pid in child_pids()]
        assert any("distex_zmq.worker" in cmd for cmd in commands)
        key = KeyPair.random().secret.decode()
        assert curve_keys_in(f"python -m w --key {key}") == curve_keys_in(f"w --key={key}") == [key]
        for cmd in commands:
            assert not curve_keys_in(cmd) and SECRET not in cmd, cmd


def test_secret_from_a_file(hosts, secret_file, monkeypatch, make_pool):
    monkeypatch.delenv("DISTEX_ZMQ_SECRET")
    pool = make_pool(None, [at(hosts, "dzq-a", 1)], secret_file=str(secret_file))
    assert hostnames(pool) == ["dzq-a"]


def test_spawner_workers_killed_are_replaced(hosts, make_pool):
    pool = make_pool(None, [at(hosts, "dzq-a", 2)])
    pool.run_on_all(int, 0)
    victims = hosts.workers("dzq-a")
    assert len(victims) == 2
    results = []
    inputs = [(0.02, x) for x in range(150)]
    for i, r in enumerate(pool.map(tasks.sleep_return, inputs, star=True)):
        results.append(r)
        if i == 20:
            os.kill(victims[0], signal.SIGKILL)
        if i == 60:
            os.kill(victims[1], signal.SIGKILL)
    assert results == list(range(150))
    assert wait_until(lambda: len(hosts.workers("dzq-a")) == 2, timeout=10)
    assert hostnames(pool) == ["dzq-a", "dzq-a"]
    assert not set(victims) & set(hosts.workers("dzq-a"))


def test_worker_with_a_long_stderr_dies_and_its_host_stays(hosts, caplog, make_pool):
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    pool = make_pool(None, [at(hosts, "dzq-a", 1)], max_retries=0)
    # 20 lines of 900 characters: more than a control message may carry
    noise = "".join(f"{i:02d}" + "é" * 900 + "\n" for i in range(20))
    with pytest.raises(WorkerLostError) as info:
        pool.run(tasks.stderr_then_exit, noise, 3)
    assert "exit code 3" in str(info.value) and "19éé" in str(info.value)
    assert wait_until(lambda: hostnames(pool) == ["dzq-a"], timeout=10)  # replaced
    assert not [r for r in caplog.records if re.match(r"host .* lost:", r.getMessage())]


def test_spawner_killed_mid_map(hosts, spawners, make_pool):
    pool = make_pool(1, [at(hosts, "dzq-a", 2), at(hosts, "dzq-b", 2)], heartbeat_timeout=3)
    assert hostnames(pool).count("dzq-b") == 2
    doomed = hosts.workers("dzq-b")
    results = []
    inputs = [(0.03, x) for x in range(150)]
    for i, r in enumerate(pool.map(tasks.sleep_return, inputs, star=True)):
        results.append(r)
        if i == 20:
            spawners["dzq-b"].kill()
    assert results == list(range(150))
    # its workers did not outlive it
    assert wait_until(lambda: not hosts.workers("dzq-b"), timeout=10)
    assert not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in doomed)
    assert "dzq-b" not in hostnames(pool)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _data_connection(host, pid):
    """The local and the broker's port of the TCP connection of worker
    ``pid`` on ``host`` to its pool."""
    for _ in range(100):
        out = subprocess.run(
            ["ip", "netns", "exec", host, "ss", "-tnpH", "state", "established"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                local, peer = line.split()[2:4]
                return local.rsplit(":", 1)[1], peer.rsplit(":", 1)[1]
        time.sleep(0.1)
    raise LookupError(f"no connection of worker pid {pid} on {host}: {out}")


class Blackhole:
    """Drop every packet of one TCP connection on ``host``, both ways, with
    no reset: what a NAT that forgot the connection, or a firewall that
    drops it, does. New connections pass (iptables, its exact ports)."""

    def __init__(self, host, local_port, remote_port):
        self._iptables = ["ip", "netns", "exec", host, "iptables"]
        self._rules = [
            ["OUTPUT", "-p", "tcp", "--sport", local_port, "--dport", remote_port, "-j", "DROP"],
            ["INPUT", "-p", "tcp", "--sport", remote_port, "--dport", local_port, "-j", "DROP"],
        ]
        for rule in self._rules:
            subprocess.run([*self._iptables, "-I", *rule], check=True, capture_output=True)

    def close(self):
        for rule in self._rules:
            subprocess.run([*self._iptables, "-D", *rule], capture_output=True)


def test_a_connection_that_dies_silently_is_closed_and_its_task_runs(hosts, caplog, make_pool):
    # the worker's connection to the pool drops every packet while idle,
    # with no reset: the worker, which only receives, would never notice,
    # and the task sent into it would wait for TCP to give up (some
    # fifteen minutes); heartbeats close it on both sides, the worker
    # connects again with a new connection, and its task runs again
    caplog.set_level(logging.INFO, logger="distex_zmq")
    pool = make_pool(None, [at(hosts, "dzq-a", 1)], heartbeat_timeout=3)
    assert pool.run(abs, -1) == 1
    pid = pool.status().workers[0].pid
    blackhole = Blackhole("dzq-a", *_data_connection("dzq-a", pid))
    try:
        time.sleep(1)  # idle with it dead
        assert pool.submit(abs, -2).result(timeout=60) == 2
    finally:
        blackhole.close()
    status = pool.status()
    assert [w.pid for w in status.workers] == [pid], status  # the same worker
    assert status.totals.workers_lost == 0 and status.totals.retried == 0, status
    assert "dropped and came back" in caplog.text, caplog.text


def test_a_network_down_for_less_than_the_heartbeat_timeout_loses_no_spawner_host(
    hosts, caplog, make_pool
):
    # the spawner stopped a silent pool's workers after half of
    # heartbeat_timeout: a link down for 4.5 s of the default 10 lost the
    # host, its workers and what they had run, where an SSH host rode it out
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    pool = make_pool(None, [at(hosts, "dzq-a", 2)])
    pids = set(pool.run_on_all(tasks.pid))
    before = hosts.spawner_log("dzq-a")
    try:
        hosts.link("dzq-a", up=False)
        time.sleep(4.5)
    finally:
        hosts.link("dzq-a", up=True)
    assert list(pool.map(tasks.square, range(50))) == [x * x for x in range(50)]
    assert set(pool.run_on_all(tasks.pid)) == pids
    assert pool.status().totals.workers_lost == 0, caplog.text
    assert "silent for" not in hosts.spawner_log("dzq-a")[len(before) :]


def test_large_transfers_on_a_slow_link_outlast_the_heartbeat_timeout(hosts, caplog, make_pool):
    # an argument and a result that take longer than heartbeat_timeout to
    # cross the link each: the connection is healthy, and stays
    caplog.set_level(logging.INFO, logger="distex_zmq")
    size = 32 * 1024 * 1024
    # both directions of dzq-a's link: its end in the root namespace, and eth0 in it
    links = [["tc"], ["ip", "netns", "exec", "dzq-a", "tc"]]
    devs = ["dzq-a-h", "eth0"]
    pool = make_pool(None, [at(hosts, "dzq-a", 1)], heartbeat_timeout=1)
    assert pool.run(abs, -1) == 1
    pid = pool.status().workers[0].pid
    try:
        for tc, dev in zip(links, devs, strict=True):
            rate = ["root", "tbf", "rate", "80mbit", "burst", "64kb", "latency", "1s"]
            subprocess.run(
                [*tc, "qdisc", "add", "dev", dev, *rate], check=True, capture_output=True
            )
        assert pool.run(len, b"x" * size) == size
        assert len(pool.run(bytes, size)) == size
    finally:
        for tc, dev in zip(links, devs, strict=True):
            subprocess.run([*tc, "qdisc", "del", "dev", dev, "root"], capture_output=True)
    status = pool.status()
    assert [w.pid for w in status.workers] == [pid], status
    assert "dropped and came back" not in caplog.text, caplog.text


def test_one_spawner_serves_several_pools(hosts):
    spec = at(hosts, "dzq-a", 2)
    with Pool(None, [spec]) as first, Pool(None, [spec]) as second:
        ones, twos = first.run_on_all(os.getpid), second.run_on_all(os.getpid)
        assert len(set(ones) | set(twos)) == 4  # each pool has workers of its own
        squares = first.map(tasks.square, range(300))
        assert list(second.map(tasks.square, range(300))) == list(squares)
    assert wait_until(lambda: not hosts.workers("dzq-a"), timeout=10)


def test_stopped_spawner_takes_its_workers_along(hosts, secret_file):
    spawner = hosts.start_spawner("dzq-c", "--secret-file", str(secret_file), port=18897)
    try:
        with Pool(1, [at(hosts, "dzq-c", 2, 18897)], heartbeat_timeout=3) as pool:
            assert hostnames(pool).count("dzq-c") == 2
            workers = hosts.workers("dzq-c")
            os.kill(workers[0], signal.SIGKILL)
            # reaped by the spawner (no zombie), and replaced
            assert wait_until(lambda: len(hosts.workers("dzq-c")) == 2, timeout=10)
            assert not _zombies_of(spawner.pid)
            spawner.terminate()
            spawner.wait(15)
            assert wait_until(lambda: not hosts.workers("dzq-c"), timeout=10)
            assert list(pool.map(tasks.square, range(50))) == [x * x for x in range(50)]
        log = hosts.spawner_log("dzq-c")
        assert "stopped: got SIGTERM" in log
        # timestamped, with the zone's offset
        assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ", log, re.M)
    finally:
        spawner.kill()


def _zombies_of(pid):
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                zombies.append(int(entry))
    return zombies


CLIENT = textwrap.dedent(
    """
    import socket, sys
    sys.path.insert(0, {root!r})
    from distex_zmq import Pool
    from tests import tasks
    pool = Pool(1, {hosts!r})  # the default heartbeat_timeout
    print(sorted(pool.run_on_all(socket.gethostname)), flush=True)
    pool.map(tasks.sleep_return, [(5, 0)] * 20, star=True)
    """
)


def test_client_killed_leaves_no_worker(hosts):
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT.format(root=str(ROOT), hosts=[at(hosts, "dzq-a", 2), at(hosts, "dzq-b", 1)]),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = client.stdout.readline()
        assert "dzq-a" in line and "dzq-b" in line, line
        assert hosts.workers("dzq-a") and hosts.workers("dzq-b")
        client.kill()
        client.wait(10)
        assert wait_until(lambda: not hosts.pool_processes(), timeout=10), hosts.pool_processes()
    finally:
        client.kill()
        client.wait()
        client.stdout.close()


# refusals


def refusal(hosts_, connect_timeout=5, **kwargs) -> str:
    before = child_pids()
    pool = Pool(1, hosts_, connect_timeout=connect_timeout, **kwargs)
    try:
        with pytest.raises(HostConnectionError) as info:
            pool.run_on_all(int, 0)
    finally:
        pool.shutdown()
    assert wait_until(lambda: child_pids() == before, timeout=10)
    return str(info.value)


def test_wrong_secret_is_refused(hosts):
    message = refusal([at(hosts, "dzq-a", 1)], secret="not the secret of this cluster")
    assert f"{hosts.addresses['dzq-a']}:8899" in message and "another shared secret" in message
    assert not hosts.workers("dzq-a")


def test_no_secret_against_a_secured_spawner(hosts, monkeypatch):
    monkeypatch.delenv("DISTEX_ZMQ_SECRET")
    message = refusal([at(hosts, "dzq-a", 1)])
    assert "requires the cluster's shared secret" in message and "DISTEX_ZMQ_SECRET" in message


def test_too_many_workers_are_refused(hosts):
    message = refusal([at(hosts, "dzq-a", 9)])
    assert "9 workers asked, 8 free" in message and "--max-workers 8" in message


def test_no_spawner_there(hosts):
    message = refusal([at(hosts, "dzq-c", 1)])  # dzq-c runs sshd, no spawner
    assert f"nothing listens on {hosts.addresses['dzq-c']}:8899" in message
    assert "no route" not in message


def test_spawner_host_out_of_reach(hosts):
    # dzq-c cut off, and forgotten (a host down that this one has not
    # talked to lately): no ARP answer, and the system gives up on its address
    hosts.link("dzq-c", up=False)
    subprocess.run(["ip", "neigh", "flush", "to", hosts.addresses["dzq-c"]], check=True)
    try:
        started = time.monotonic()
        message = refusal([at(hosts, "dzq-c", 1)], connect_timeout=60)
        took = time.monotonic() - started
    finally:
        hosts.link("dzq-c", up=True)
    # the host is named as out of reach, not its port as closed, and the
    # pool does not wait out its connect_timeout
    assert f"there is no route to {hosts.addresses['dzq-c']}" in message, message
    assert "nothing listens" not in message
    assert "is the host up" in message
    assert took < 30, took


def test_spawner_without_secret_stays_on_loopback():
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
    cmd = [sys.executable, "-m", "distex_zmq.spawner", "--host", "0.0.0.0", "--port", "18898"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "without a secret" in result.stderr and "--insecure" in result.stderr


def test_a_spawner_of_root_without_secret_warns_that_every_user_is_root(tmp_path):
    # on loopback without a secret, every user of the machine can run code
    # as the spawner's user: as root, that is root for all, which it said
    # nowhere
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        assert wait_until(lambda: "spawner (pid" in spawner.log.read_text(), timeout=30)
        log = spawner.log.read_text()
    finally:
        spawner.stop()
    warned = "running as root without a secret: every user of this machine" in log
    assert warned == (os.geteuid() == 0), log


# bad input from the network


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _junk(rng, n, oversized=False):
    """Random and almost-right multipart messages; or only too large ones."""
    if oversized:
        return [[sp.HEAD, rng.randbytes(sp.MAX_MESSAGE + 1)] for _ in range(n)]
    head = sp.HEAD
    choices = [
        lambda: [rng.randbytes(rng.randint(0, 64))],
        lambda: [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(2, 5))],
        lambda: [head, rng.randbytes(rng.randint(0, 200))],
        lambda: [b"DZSP\x00\x07", b'{"op": "open"}'],
        lambda: [head, b'{"op": "open", "workers": 100000, "heartbeat": 1}'],
        lambda: [head, b'{"op": "open", "protocol": 1, "workers": 1, "heartbeat": 1,'
                 b' "endpoint": "tcp://x;rm -rf /:1", "keys": {}, "worker": {}}'],
        lambda: [head, b'{"op": "spawn", "id": "00ff"}'],
        lambda: [head, b'{"op": "kill", "id": "zz"}'],
        lambda: [head, b'[1, 2, 3]'],
        lambda: [head, b'{"op": "' + rng.randbytes(8).hex().encode() + b'"}'],
    ]  # fmt: skip
    return [rng.choice(choices)() for _ in range(n)]


def _fuzz(endpoint, server_key, client_keys, messages):
    """Send ``messages`` from a CURVE client (or NULL, if no keys); read what comes back."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        if client_keys is not None:
            make_client(sock, server_key, client_keys)
        sock.connect(endpoint)
        replies = 0
        for i, frames in enumerate(messages):
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:  # not connected (refused, or dropped): the message is lost
                time.sleep(0.001)
            while sock.poll(0 if i % 100 else 10):
                sock.recv_multipart()
                replies += 1
        while sock.poll(500):
            sock.recv_multipart()
            replies += 1
        return replies
    finally:
        ctx.destroy(linger=0)


def _raw_tcp(address, port, rng, connections=50):
    for _ in range(connections):
        try:
            with socket.create_connection((address, port), timeout=2) as s:
                s.sendall(rng.randbytes(rng.randint(1, 4096)))
        except OSError:
            pass


def test_fuzz_spawner_and_broker(hosts, spawners):
    rng = random.Random(1234)
    keys = ClusterKeys.from_secret(SECRET.encode())
    spawner_pid = spawners["dzq-a"].pid
    address = hosts.addresses["dzq-a"]
    endpoint = f"tcp://{address}:8899"
    with Pool(1, [at(hosts, "dzq-a", 1)]) as pool:
        pool.run_on_all(int, 0)
        broker_port = int(hosts.worker_connect("dzq-a").rsplit(":", 1)[1])
        workers_before = set(hosts.workers("dzq-a"))
        rss_before = _rss_kib(spawner_pid)
        # the spawner: as a client that has the secret (the messages get through),
        # without keys, with made-up keys, and raw TCP
        answered = _fuzz(endpoint, keys.spawner.public, keys.client, _junk(rng, 7000))
        assert answered > 5000  # they arrived, and each was refused
        _fuzz(endpoint, keys.spawner.public, keys.client, _junk(rng, 500, oversized=True))
        _fuzz(endpoint, None, None, _junk(rng, 1000))
        _fuzz(endpoint, keys.spawner.public, KeyPair.random(), _junk(rng, 1000))
        _raw_tcp(address, 8899, rng)
        # the live pool's broker: unauthenticated and raw
        # The broker's public CURVE key (not a secret) reaches the workers on
        # their stdin only, and the pool has no public accessor for it: this
        # one read of the runtime lets a client with made-up keys get as far
        # as the broker's ZAP check, which must refuse it.
        broker_public = pool._runtime.worker_keys["server"].encode()
        _fuzz(f"tcp://127.0.0.1:{broker_port}", None, None, _junk(rng, 500))
        _fuzz(f"tcp://127.0.0.1:{broker_port}", broker_public, KeyPair.random(), _junk(rng, 500))
        _raw_tcp("127.0.0.1", broker_port, rng)
        # nothing was spawned, memory stayed bounded, both still work
        assert set(hosts.workers("dzq-a")) == workers_before
        assert _rss_kib(spawner_pid) - rss_before < 20_000
        assert list(pool.map(tasks.square, range(200))) == [x * x for x in range(200)]
    assert spawners["dzq-a"].poll() is None
    with Pool(None, [at(hosts, "dzq-a", 2)]) as pool:
        assert hostnames(pool) == ["dzq-a", "dzq-a"]
    log = hosts.spawner_log("dzq-a")
    assert "refused a request" in log and "refused a CURVE connection" in log


def test_no_plaintext_on_the_wire(hosts):
    # 50 different arguments of 14 kB (the same object twice would be pickled once)
    args = [b"MARKER-7f3a9c-" * 1000 + b"%d" % i for i in range(50)]
    with Capture("dzq-br0") as capture, Pool(None, [at(hosts, "dzq-a", 2)]) as pool:
        assert list(pool.map(tasks.bytes_len, args)) == [len(a) for a in args]
    # the arguments crossed the bridge (700 kB), but never readable
    assert len(capture.data) > sum(map(len, args))
    assert b"MARKER-7f3a9c-" not in capture.data
    assert b'"op"' not in capture.data and b"DZSP" not in capture.data


def test_insecure_spawner_talks_in_the_clear(hosts, monkeypatch):
    # the control of the test above: the same capture does see plaintext
    monkeypatch.delenv("DISTEX_ZMQ_SECRET")
    proc = hosts.start_spawner("dzq-c", "--insecure", "--host", "0.0.0.0", port=18899)
    try:
        with Capture("dzq-br0") as capture, Pool(None, [at(hosts, "dzq-c", 1, 18899)]) as pool:
            assert hostnames(pool) == ["dzq-c"]
        assert b'"op": "open"' in capture.data
        assert "INSECURE" in hosts.spawner_log("dzq-c")
    finally:
        proc.terminate()
        proc.wait(15)


# operating a spawner


def _spawner_cli(*args, env=None, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "distex_zmq.spawner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_version_and_help_with_defaults():
    from distex_zmq.version import __version__

    version = _spawner_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"distex_zmq {__version__}"
    help_ = _spawner_cli("--help").stdout
    options = re.split(r"\n  (?=-)", help_.split("options:", 1)[1].split("\n\n")[0])
    flags = {" ".join(o.split()).split(" ")[0]: " ".join(o.split()) for o in options if o.strip()}
    assert flags.keys() >= {"--host", "--port", "--secret-file", "--max-workers", "--insecure"}
    for flag, text in flags.items():
        assert flag in ("-h,", "--version") or "(default:" in text, text
    assert "TCP port to listen on (default: 8899)" in flags["--port"]
    assert "status [HOST[:PORT]]" in " ".join(help_.split())
    status_help = " ".join(_spawner_cli("status", "--help").stdout.split())
    assert "(default: 127.0.0.1:8899)" in status_help


def test_status_of_a_live_spawner(hosts, make_pool):
    pool = make_pool(None, [at(hosts, "dzq-a", 2)])
    pool.run_on_all(int, 0)
    workers = sorted(hosts.workers("dzq-a"))
    assert len(workers) == 2
    result = _spawner_cli("status", f"{hosts.addresses['dzq-a']}:8899")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"distex_zmq \S+ on dzq-a, pid \d+, up \d", out), out
    assert "1 pool(s), 2 of at most 8 workers running" in out
    assert re.search(r"pool [0-9a-f]{12}: 2 of 2 workers", out), out
    assert sorted(int(p) for p in re.findall(r"pid +(\d+) +up", out)) == workers
    # it changed nothing
    assert sorted(hosts.workers("dzq-a")) == workers
    assert list(pool.map(tasks.square, range(10))) == [x * x for x in range(10)]
    as_json = json.loads(_spawner_cli("status", hosts.addresses["dzq-a"], "--json").stdout)
    assert sorted(w["pid"] for w in as_json["pools"][0]["workers"]) == workers


def test_status_without_an_answer(hosts, secret_file):
    # dzq-c runs no spawner: its port refuses the connection, which fails at once
    nobody = _spawner_cli("status", f"{hosts.addresses['dzq-c']}:8899", "--timeout", "600")
    assert nobody.returncode != 0
    refused = f"cannot connect to {hosts.addresses['dzq-c']}:8899: nothing listens on"
    assert refused in nobody.stderr, nobody.stderr
    env = {**os.environ, "DISTEX_ZMQ_SECRET": "not the secret of this cluster"}
    wrong = _spawner_cli("status", hosts.addresses["dzq-a"], env=env)
    assert wrong.returncode != 0
    assert "did not accept the CURVE handshake" in wrong.stderr, wrong.stderr
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
    right = _spawner_cli("status", hosts.addresses["dzq-a"], "--secret-file", str(secret_file))
    assert right.returncode == 0, right.stderr


def test_worker_starts_and_exits_are_logged(hosts, make_pool):
    pool = make_pool(None, [at(hosts, "dzq-b", 1)])
    pool.run_on_all(int, 0)
    (victim,) = hosts.workers("dzq-b")
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: len(hosts.workers("dzq-b")) == 1 and victim not in hosts.workers("dzq-b")
    )
    log = hosts.spawner_log("dzq-b")
    started = re.search(rf"INFO (pool [0-9a-f]{{12}}): worker pid {victim} started", log)
    assert started, log
    ended = rf"INFO {started.group(1)}: worker pid {victim} ended after [\d.]+ s: killed by SIGKILL"
    assert wait_until(lambda: re.search(ended, hosts.spawner_log("dzq-b")))
    (replacement,) = hosts.workers("dzq-b")
    pool.shutdown()
    assert wait_until(
        lambda: re.search(
            rf"worker pid {replacement} ended after [\d.]+ s: exit code 0",
            hosts.spawner_log("dzq-b"),
        )
    ), hosts.spawner_log("dzq-b")
