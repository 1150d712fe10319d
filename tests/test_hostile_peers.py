"""Malformed and hostile messages: the parsers of ``wire/`` (any bytes give a
message or a ``ProtocolError``, nothing else), a live pool's broker and a
spawner process on loopback, each sent garbage by a plain ZeroMQ socket or
raw TCP, and still working afterwards."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distex_zmq import ProtocolError
from distex_zmq.wire import control as c
from distex_zmq.wire import frames as p
from tests import tasks
from tests.helpers import LoopbackSpawner, broker_endpoint, child_pids, free_port, wait_until

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

#: JSON nested deeper than the decoder goes (a RecursionError in ``json``),
#: small enough for a spawner to read (``control.MAX_MESSAGE``)
DEEP = b"[" * 10_000
#: how the decoder refuses ``DEEP``: up to Python 3.13 it gives up at its
#: recursion limit; 3.14's takes 10,000 levels, and finds no end
DEEP_ERROR = "nested too deep" if sys.version_info < (3, 14) else "Expecting value"
#: any JSON value, and objects with the fields of the messages among their keys
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    *p.LOG_FIELDS,
    "pid", "host", "credits", "python", "version", "op", "ev", "id", "workers",
    "heartbeat", "endpoint", "keys", "worker", "protocol", "grace", "rc", "tail",
]  # fmt: skip
json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values)


def json_bytes(value: Any) -> bytes:
    # Infinity and NaN as Python's json writes (and reads) them
    return json.dumps(value).encode()


bodies = (
    st.binary(max_size=300)
    | json_objects.map(json_bytes)
    | json_values.map(json_bytes)
    | st.just(DEEP)
    | st.just(b'{"pid": Infinity, "host": "h", "credits": 1}')
)


def envelope(kind: bytes, count: int = 0, body: bytes = b"") -> bytes:
    return p.HEAD.pack(p.MAGIC, p.VERSION, kind, count) + body


# the parsers of wire/: a message, or a ProtocolError


@FUZZ
@given(kind=st.sampled_from([p.HELLO, p.RESULT, p.LOG, p.TASK, b"\x00"]), body=bodies)
@example(kind=p.HELLO, body=DEEP)
@example(kind=p.HELLO, body=b'{"pid": Infinity, "host": "h", "credits": 1}')
@example(kind=p.HELLO, body=b'{"pid": 1, "host": "h", "credits": -Infinity}')
def test_a_broker_reads_any_hello_or_log_body_or_refuses_it(kind, body):
    buf = memoryview(envelope(kind, body=body))
    for read in (p.read_hello, p.json_body, p.text_body):
        try:
            read(buf)
        except ProtocolError:
            pass
    try:
        p.read_log(body)
    except ProtocolError:
        pass


def test_json_nested_too_deep_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=f"malformed body: {DEEP_ERROR}"):
        p.read_hello(memoryview(envelope(p.HELLO, body=DEEP)))
    with pytest.raises(ProtocolError, match=f"malformed log record: {DEEP_ERROR}"):
        p.read_log(DEEP)
    with pytest.raises(ProtocolError, match=f"malformed JSON: {DEEP_ERROR}"):
        c.decode([c.HEAD, DEEP], c.SPAWNER_READS)
    with pytest.raises(ProtocolError, match="malformed hello"):
        p.read_hello(memoryview(envelope(p.HELLO, body=b'{"pid": Infinity, "host": "h"}')))


@FUZZ
@given(
    head=st.binary(max_size=12) | st.just(envelope(p.RESULT)),
    count=st.integers(0, 0xFFFF),
    entries=st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 1, 5, 100, p.IN_FRAME, 2**32 - 2]),
            st.integers(0, 3),
            st.integers(0, 2**32 - 1),
        ),
        max_size=4,
    ),
    tail=st.binary(max_size=64),
    extra=st.integers(0, 3),
)
def test_a_result_message_reads_or_is_refused(head, count, entries, tail, extra):
    # entries and bodies as a broker walks them (``Delivery.on_results``):
    # an extent past the message or its frames is a ProtocolError
    raw = b"".join(p.RESULT_ENTRY.pack(*entry) for entry in entries)
    if len(head) == p.HEAD.size:
        head = head[:-2] + count.to_bytes(2, "big")
    frame0 = head + raw + tail
    message = [frame0, *[b"x" * 10] * extra]
    try:
        _, n, buf = p.check(frame0)
        reader = p.Reader(buf, p.body(buf, n, p.RESULT_ENTRY), message)
        for *_, size, nbuffers, _mark in p.result_entries(buf, n):
            reader.data(size, nbuffers)
    except ProtocolError:
        pass


@FUZZ
@given(
    head=st.just(c.HEAD) | st.binary(max_size=8),
    body=bodies,
    more=st.lists(st.binary(max_size=8), max_size=2),
    reads=st.sampled_from([c.SPAWNER_READS, c.AGENT_READS, c.POOL_READS, c.STATUS_READS]),
)
@example(head=c.HEAD, body=DEEP, more=[], reads=c.SPAWNER_READS)
@example(head=c.HEAD, body=b'{"op": "open", "workers": 1e9}', more=[], reads=c.SPAWNER_READS)
def test_a_control_message_reads_or_is_refused(head, body, more, reads):
    for decode in (
        lambda: c.decode([head, body, *more], reads),
        lambda: c.decode_line(body, reads),
    ):
        try:
            decode()
        except ProtocolError:
            pass


# a spawner process on loopback

SECRET = "correct horse battery staple 42"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def spawner_client(ctx: zmq.Context, port: int, keys: Any = None) -> zmq.Socket:
    """A DEALER to the spawner: with the secret's client keys (``keys``: a
    ``ClusterKeys``), with made-up ones, or plain."""
    from distex_zmq.security import make_client

    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        server, client = keys
        make_client(sock, server, client)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def ask(sock: zmq.Socket, frames: list[bytes], timeout: float = 10) -> c.Message:
    sock.send_multipart(frames)
    assert sock.poll(int(timeout * 1000)), f"the spawner did not answer {frames!r:.200}"
    return c.decode(sock.recv_multipart(), ANSWERS)


def still_serves(sock: zmq.Socket, timeout: float = 20) -> bool:
    """Whether the spawner answers a status request on ``sock``, after the
    answers to what was sent before it."""
    sock.send_multipart(c.encode(c.Status()))
    deadline = time.monotonic() + timeout
    while sock.poll(max(int((deadline - time.monotonic()) * 1000), 0)):
        if isinstance(c.decode(sock.recv_multipart(), ANSWERS), c.StatusReply):
            return True
    return False


#: what a spawner answers: a pool's events and a status reply
ANSWERS = c.Reads("ev", {**c.POOL_READS.kinds, **c.STATUS_READS.kinds})


def open_request(**fields: Any) -> list[bytes]:
    keys = {"server": "0" * 40, "public": "0" * 40, "secret": "0" * 40}
    worker = {"credits": 1, "func_pickle": 0, "data_pickle": 0, "loop": 0, "log_level": 30}
    body = {"op": "open", "protocol": p.VERSION, "endpoint": "tcp://127.0.0.1:1", "keys": keys}
    body |= {"worker": worker, "workers": 1, "heartbeat": 5.0, **fields}
    return [c.HEAD, json.dumps(body).encode()]


@pytest.fixture
def secured_spawner(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    spawner = LoopbackSpawner(tmp_path / "spawner.log", "--secret-file", str(secret))
    yield spawner
    spawner.stop()


def test_a_spawner_refuses_hostile_requests_and_connections_and_serves_a_pool_after(
    secured_spawner, make_pool
):
    from distex_zmq.security import ClusterKeys, KeyPair

    spawner, pid = secured_spawner, secured_spawner.proc.pid
    keys = ClusterKeys.from_secret(SECRET.encode())
    ctx = zmq.Context()
    try:
        holder = spawner_client(ctx, spawner.port, (keys.spawner.public, keys.client))
        assert isinstance(ask(holder, c.encode(c.Status())), c.StatusReply)
        fds = fd_count(pid)
        # a client that holds the secret: every bad request is refused, saying why
        refusals = {
            f"malformed JSON: {DEEP_ERROR}": [c.HEAD, DEEP],
            "'workers' = 1000000000 is out of range": open_request(workers=10**9),
            "'workers' = -1 is out of range": open_request(workers=-1),
            "'workers' must be a int": open_request(workers=1e9),
            "'heartbeat' = inf is out of range": open_request(heartbeat=float("inf")),
            "'spawn' before 'open'": c.encode(c.Spawn(b"\x01")),
            "expected 2 frames, got 1": [b""],
            "expected 2 frames, got 3": [c.HEAD, b"{}", b""],
            "a message must be a JSON object": [c.HEAD, b"[1, 2]"],
            "not a distex_zmq control message": [b"GET / HTTP/1.1", b"\r\n"],
            "protocol version": [b"DZSP\x00\x63", b'{"op": "ping"}'],
        }  # fmt: skip
        for text, frames in refusals.items():
            answer = ask(holder, frames)
            assert isinstance(answer, c.Refused) and text in answer.reason, (text, answer)
        for _ in range(200):  # the same, again and again
            for frames in refusals.values():
                holder.send_multipart(frames)
        assert still_serves(holder)
        # too large: ZeroMQ drops the connection
        big = spawner_client(ctx, spawner.port, (keys.spawner.public, keys.client))
        big.send_multipart([c.HEAD, b" " * c.MAX_MESSAGE])
        assert not big.poll(500)
        big.close()
        # no secret, another secret: no answer
        for other in (None, (keys.spawner.public, KeyPair.random())):
            stranger = spawner_client(ctx, spawner.port, other)
            stranger.send_multipart(c.encode(c.Status()))
            stranger.send_multipart(open_request())
            assert not stranger.poll(500)
            stranger.close()
        # 1000 raw TCP connections: junk, nothing, or half open, 100 at a time
        for _ in range(10):
            held = []
            for i in range(100):
                conn = socket.create_connection(("127.0.0.1", spawner.port), timeout=5)
                if i % 3 == 0:
                    conn.sendall(os.urandom(64))
                elif i % 3 == 1:
                    conn.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")  # a ZMTP greeting's start
                held.append(conn)
            for conn in held:
                conn.close()
        # the connections are gone from the spawner, and it still serves
        assert wait_until(lambda: fd_count(pid) <= fds + 2, timeout=20), (fds, fd_count(pid))
        assert still_serves(holder)
        holder.close()
    finally:
        ctx.destroy(linger=0)
    assert not child_pids(pid)  # nothing was started
    pool = make_pool(None, [f"127.0.0.1:{spawner.port}/2"], secret=SECRET)
    assert list(pool.map(tasks.square, range(50))) == [x * x for x in range(50)]
    pool.shutdown()
    log = spawner.read().decode()
    assert "Traceback" not in log and "internal error" not in log
    # a line per refusal, at most 5 per client; a few for the handshakes
    assert 1 <= log.count("refused a request") <= 5
    assert log.count("refused a connection in its handshake") <= 11
    assert spawner.proc.poll() is None


# a live pool's broker, sent garbage on its ipc endpoint


def hello_body(**fields: Any) -> bytes:
    info = {"pid": 1, "host": "fake", "credits": 1, "version": "0.0", "python": "3"}
    return json.dumps({**info, **fields}).encode()


GARBAGE = [
    [b""],
    [b"", b""],
    [b"DZMQ"],
    [envelope(p.HELLO)[:5]],
    [p.HEAD.pack(p.MAGIC, p.VERSION + 1, p.HELLO, 0) + hello_body()],
    [envelope(p.HELLO, body=b"{nonsense")],
    [envelope(p.HELLO, body=DEEP)],
    [envelope(p.HELLO, body=hello_body(credits=10**9))],
    [envelope(p.RESULT, 1, p.RESULT_ENTRY.pack(12345, p.STATUS_OK, 1, 5, 0, 0) + b"hello")],
    [envelope(p.RESULT, 1, p.RESULT_ENTRY.pack(1, p.STATUS_OK, 1, 0xFFFFFFF0, 0, 0))],
    [envelope(p.RESULT, 0xFFFF)],
    [envelope(p.LOG, body=b"{}")],
    [envelope(p.LOG, body=DEEP)],
    [envelope(b"Z")],
    [envelope(p.TASK)],
    [envelope(p.STOP)],
]


def dealer(ctx: zmq.Context, endpoint: str, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def test_a_pool_keeps_working_through_garbage_and_says_so_in_a_few_lines(pool, caplog):
    endpoint = broker_endpoint(pool)
    workers = {w.pid for w in pool.status().workers}
    caplog.set_level(logging.WARNING, "distex_zmq.broker")
    ctx = zmq.Context()
    try:
        for i in range(20):  # garbage of every kind, from 20 peers
            sock = dealer(ctx, endpoint, b"stranger-%d" % i)
            for message in GARBAGE:
                sock.send_multipart(message)
        # the broker reads its peers' connections in turn, not in the order
        # they came: the flood starts once a stranger's garbage was read
        assert wait_until(lambda: any("stranger-" in r.getMessage() for r in caplog.records))
        for i in range(300):  # a flood of hellos, each from a new peer
            dealer(ctx, endpoint, b"flood-%d" % i).send_multipart(p.hello(json.loads(hello_body())))
        # a map that runs through it all gets its results
        results = pool.map(tasks.square, range(200))
        assert list(results) == [x * x for x in range(200)]
    finally:
        ctx.destroy(linger=0)
    # no stranger was taken for a worker
    assert {w.pid for w in pool.status().workers} == workers
    assert len(pool.run_on_all(os.getpid)) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "distex_zmq.broker"]
    assert 1 <= len(lines) <= 15, lines
    # each names the peer and what was wrong with its first message
    said = r"\(its further messages are dropped without a line\)"
    stranger = (
        rf"dropped a message from stranger-\d+: not a distex_zmq message \(too short\) {said}"
    )
    flood = rf"dropped a message from flood-\d+: hello from a worker this pool did not start {said}"
    assert re.fullmatch(stranger, lines[0]), lines
    assert all(re.fullmatch(stranger, line) or re.fullmatch(flood, line) for line in lines), lines


def test_a_peer_that_never_reads_does_not_block_the_pool(pool):
    # each hello of a worker the pool did not start is answered by a refusal:
    # a peer that never reads fills its queue, and the broker must not wait on it
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, b"deaf")
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
        sock.connect(broker_endpoint(pool))
        for _ in range(20_000):
            sock.send_multipart(p.hello(json.loads(hello_body())))
        done: list[list[int]] = []
        thread = threading.Thread(
            target=lambda: done.append(list(pool.map(tasks.square, range(20)))), daemon=True
        )
        thread.start()
        thread.join(30)
        assert done == [[x * x for x in range(20)]], "the pool loop is blocked"
    finally:
        ctx.destroy(linger=0)


# a worker of the pool that sends a malformed result


def test_a_malformed_entry_keeps_what_came_before_it_and_the_workers_credits(tmp_path):
    from tests.test_protocol import LoneBroker, _task_entries

    broker = LoneBroker(tmp_path)

    def tasks_received(n: int) -> list[int]:
        ids: list[int] = []

        def arrived() -> bool:
            while sock.poll(0):
                ids.extend(task_id for task_id, _, _ in _task_entries(sock.recv_multipart()))
            return len(ids) >= n

        broker.spin(arrived)
        return ids

    try:
        broker.know_the_function_as_quick()
        sock = broker.worker(b"w", credits=2)
        first, second = broker.submit(), broker.submit()
        assert tasks_received(2) == [first, second]
        # the first entry is right, the second says its body runs past the end
        writer = p.Writer(p.RESULT)
        data = json.dumps(7).encode()
        size = writer.body(data, [])
        writer.entries.append(p.RESULT_ENTRY.pack(first, p.STATUS_OK, 5, size, 0, 0))
        writer.entries.append(p.RESULT_ENTRY.pack(second, p.STATUS_OK, 5, 1000, 0, 0))
        sock.send_multipart(writer.frames_out())
        broker.spin(lambda: first in broker.sink.got)
        assert broker.broker.drops.dropped == 1
        # the credit of the answered task is free: the next task goes to the worker
        third = broker.submit()
        assert tasks_received(1) == [third]
    finally:
        broker.close()


# a port of this machine held by another user


def _listen_as(uid: int, port: int) -> int:
    """A child process, forked and turned into ``uid``, that listens on
    127.0.0.1:``port`` (as another user's fake spawner would); its pid."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so no interpreter that uid must read
        try:
            os.setgid(uid)
            os.setuid(uid)
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.getuid() != 0, reason="needs root, to listen as another user")
def test_a_pool_without_a_secret_refuses_a_spawner_port_of_another_user(monkeypatch):
    # without the shared secret nothing authenticates the spawner: another
    # local user who listens on its port got the pool's tasks, and code of
    # theirs ran in the client as it unpickled their "results"
    from distex_zmq import HostConnectionError, Pool
    from distex_zmq.launch.port_owner import listener_uids

    monkeypatch.delenv("DISTEX_ZMQ_SECRET", raising=False)
    port = free_port()
    pid = _listen_as(65534, port)
    try:
        assert listener_uids("127.0.0.1", port) == {65534}
        with (
            pytest.raises(HostConnectionError, match=r"the port is held by the user .*uid 65534"),
            Pool(None, [f"127.0.0.1:{port}/1"], connect_timeout=5),
        ):
            pass
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_the_owner_of_a_listening_port_is_read_from_the_kernels_tables(tmp_path):
    # /proc/net/tcp{,6} write addresses in hex words of the host's order;
    # a wildcard listener takes loopback connections too
    tcp = tmp_path / "tcp"
    tcp.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:22B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
        "   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     7\n"
        "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     9\n"
    )
    tcp6 = tmp_path / "tcp6"
    tcp6.write_text(
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000001000000:22B3 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000  1001\n"
    )
    from distex_zmq.launch.port_owner import listener_uids

    tables = (str(tcp), str(tcp6))
    assert listener_uids("127.0.0.1", 0x22B3, tables) == {1000}
    assert listener_uids("::1", 0x22B3, tables) == {1001}
    assert listener_uids("127.0.0.1", 0x1F90, tables) == {7}  # the wildcard; not the connection
    assert listener_uids("127.0.0.1", 1, tables) == set()
    assert listener_uids("127.0.0.1", 1, (str(tmp_path / "none"),)) is None


def test_the_secret_keys_of_a_cluster_are_left_out_of_its_repr():
    # repr(pool._options) showed both key pairs' secret keys (a traceback's
    # locals, a debugger), where the secret itself was left out
    from distex_zmq.security import ClusterKeys

    keys = ClusterKeys.from_secret(b"a secret of 32 bytes, for a test")
    for pair in (keys.spawner, keys.client):
        assert pair.public.decode() in repr(keys)
        assert pair.secret.decode() not in repr(keys)


def test_the_keys_of_a_secret_are_derived_with_scrypt():
    # one BLAKE2b of the secret let a captured handshake test 29,000
    # guesses a second on one core (a helper found an 18-byte passphrase in
    # 0.45 s); scrypt makes each guess cost about 65 ms and 16 MiB
    import hashlib

    from distex_zmq.security import SCRYPT_COST, SCRYPT_SALT, ClusterKeys, KeyPair

    secret = b"summer2026-cluster"
    assert SCRYPT_COST["n"] >= 1 << 14 and SCRYPT_COST["r"] >= 8
    seeds = hashlib.scrypt(secret, salt=SCRYPT_SALT, maxmem=1 << 26, dklen=64, **SCRYPT_COST)
    keys = ClusterKeys.from_secret(secret)
    assert keys.spawner == KeyPair.from_seed(seeds[:32])
    assert keys.client == KeyPair.from_seed(seeds[32:])
    assert keys.spawner != keys.client
