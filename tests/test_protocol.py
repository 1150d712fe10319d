"""The wire protocol: envelope checks, version mismatch, and real peers.

The end-to-end tests talk to a real worker process through a ROUTER socket
of their own (a fake broker), and to a real pool's broker through a DEALER
socket of their own (a fake worker). The broker's endpoint is the one the
pool's local workers were told on their command line (``--connect``). The
broker's dispatch decisions are tested on a ``Broker`` built alone, on a loop
of the test's own, with fake workers only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import dill
import pytest
import zmq
from distex_zmq.broker import Broker, Task, WorkerRecord

from distex_zmq import DistexError, Pool, PoolClosedError, ProtocolError
from distex_zmq.script_rebuild import script_ref
from distex_zmq.serialization import dumps, loads
from distex_zmq.version import __version__
from distex_zmq.wire import frames as p
from tests import tasks
from tests.helpers import broker_endpoint, free_port

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent


def envelope(
    kind: bytes, count: int = 0, version: int = p.VERSION, magic: bytes = p.MAGIC, body: bytes = b""
) -> bytes:
    return p.HEAD.pack(magic, version, kind, count) + body


# the envelope


def test_check_accepts_a_good_envelope():
    kind, count, buf = p.check(envelope(p.TASK, 3))
    assert (kind, count) == (p.TASK, 3)
    assert bytes(buf) == envelope(p.TASK, 3)


@pytest.mark.parametrize("other", [0, p.VERSION + 1, 999])
def test_version_mismatch_is_a_clear_protocol_error(other):
    with pytest.raises(ProtocolError) as info:
        p.check(envelope(p.HELLO, version=other))
    text = str(info.value)
    assert "protocol version mismatch" in text
    assert f"version {other}" in text and f"this side {p.VERSION}" in text
    assert "install the same distex_zmq version" in text
    assert isinstance(info.value, DistexError)


@pytest.mark.parametrize(
    "frame, text",
    [
        (b"", "too short"),
        (b"DZMQ", "too short"),
        (envelope(p.HELLO, magic=b"HTTP"), "not a distex_zmq message"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a distex_zmq message"),
    ],
)
def test_foreign_messages_are_refused(frame, text):
    with pytest.raises(ProtocolError, match=text):
        p.check(frame)


def test_truncated_entries_are_detected():
    frame = envelope(p.TASK, 2) + b"\x00" * p.TASK_ENTRY.size  # says 2, holds 1
    _, count, buf = p.check(frame)
    with pytest.raises(ProtocolError, match="truncated"):
        p.body(buf, count, p.TASK_ENTRY)


def test_reader_detects_missing_frames_and_bodies():
    frame = envelope(p.RESULT, 1) + p.RESULT_ENTRY.pack(1, p.STATUS_OK, 0, p.IN_FRAME, 0, 0)
    _, count, buf = p.check(frame)
    reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), [frame])
    with pytest.raises(ProtocolError, match="fewer frames"):
        reader.data(p.IN_FRAME, 0)
    reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), [frame])
    with pytest.raises(ProtocolError, match="body past its end"):
        reader.inline(10)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff"])
def test_malformed_json_body(body):
    _, _, buf = p.check(envelope(p.HELLO, body=body))
    with pytest.raises(ProtocolError, match="malformed body"):
        p.json_body(buf)


def test_writer_and_reader_round_trip_inline_and_framed_bodies():
    small = b"s" * 100
    large = b"L" * (p.INLINE_MAX + 1)
    extra = memoryview(b"B" * 50)
    writer = p.Writer(p.RESULT)
    for task_id, (data, buffers) in enumerate([(small, []), (large, [extra]), (b"", [])]):
        size = writer.body(data, buffers)
        writer.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_OK, 0, size, len(buffers), 0))
    frames = writer.frames_out()
    assert len(frames) == 3  # the envelope, the large pickle, the buffer
    kind, count, buf = p.check(frames[0])
    assert (kind, count) == (p.RESULT, 3)
    reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), frames)
    got = []
    for task_id, status, _elapsed, size, nbuffers, _mark in p.result_entries(buf, count):
        data, buffers = reader.data(size, nbuffers)
        got.append((task_id, status, bytes(data), [bytes(b) for b in buffers]))
    assert got == [(0, 0, small, []), (1, 0, large, [bytes(extra)]), (2, 0, b"", [])]


def test_control_and_hello_messages():
    (frame,) = p.hello({"pid": 1, "credits": 2})
    kind, count, buf = p.check(frame)
    assert (kind, count) == (p.HELLO, 0)
    assert p.json_body(buf) == {"pid": 1, "credits": 2}
    (frame,) = p.control(p.REFUSE, b"go away")
    kind, _, buf = p.check(frame)
    assert kind == p.REFUSE and p.text_body(buf) == "go away"


# a real worker against a fake broker


class FakeBroker:
    """A ROUTER socket of the test's, and a real worker process connected to
    it. ``tcp``: over TCP, as a remote worker (one that connects again after
    a drop, where a local one exits), else over ipc."""

    def __init__(self, tmp_path: Path, credits: int = 2, tcp: bool = False):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}" if tcp else f"ipc://{tmp_path}/fake-broker"
        self.sock.bind(self.endpoint)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distex_zmq.worker",
                "--connect",
                self.endpoint,
                "--identity",
                b"fake-1".hex(),
                "--credits",
                str(credits),
                "--parent-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    def recv(self, timeout: float = 15) -> tuple[bytes, list[zmq.Frame]]:
        assert self.sock.poll(int(timeout * 1000)), "no message from the worker"
        identity, *frames = self.sock.recv_multipart(copy=False)
        return identity.bytes, frames

    def send(self, identity: bytes, frames: list) -> None:
        self.sock.send_multipart([identity, *frames])

    def cut(self) -> None:
        """Drop the worker's connection: the socket closes, with what was on
        its way, and a new one is bound at the same endpoint, as a broker
        whose network path broke and came back."""
        self.sock.close()
        deadline = time.monotonic() + 10
        while True:
            self.sock = self.ctx.socket(zmq.ROUTER)
            self.sock.setsockopt(zmq.LINGER, 0)
            try:
                self.sock.bind(self.endpoint)
                return
            except zmq.ZMQError:  # the old one's port is let go by ZeroMQ's thread
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> tuple[int, str]:
        if self.sock.closed:
            return self.proc.returncode, ""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        stderr = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        self.proc.stdout.close()
        self.sock.close()
        self.ctx.term()
        return code, stderr


def task_message(
    task_id: int,
    func,
    args: tuple,
    *,
    send_func: bool = True,
    version: int = p.VERSION,
    flags: int = 0,
    func_id: int = 1,
) -> list:
    func_pickle = dill.dumps(func, protocol=5) if send_func else b""
    data, buffers = dumps(args)
    writer = p.Writer(p.TASK)
    flags |= p.FLAG_STAR
    if send_func:
        flags |= p.FLAG_FUNC
        writer.inline.append(func_pickle)
    size = writer.body(data, buffers)
    writer.entries.append(
        p.TASK_ENTRY.pack(task_id, func_id, flags, len(func_pickle), size, len(buffers), 0)
    )
    frames = writer.frames_out()
    if version != p.VERSION:
        frames[0] = p.HEAD.pack(p.MAGIC, version, p.TASK, 1) + frames[0][p.HEAD.size :]
    return frames


def read_results(frames: list) -> list[tuple[int, int, object]]:
    kind, count, buf = p.check(frames[0])
    assert kind == p.RESULT
    reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), frames)
    out = []
    for task_id, status, _elapsed, size, nbuffers, _mark in p.result_entries(buf, count):
        data, buffers = reader.data(size, nbuffers)
        out.append((task_id, status, loads(data, buffers)))
    return out


@pytest.fixture
def fake_broker(tmp_path):
    broker = FakeBroker(tmp_path, credits=3)
    yield broker
    if broker.proc.poll() is None:
        broker.proc.kill()
    broker.close()


@pytest.mark.timeout(60)
def test_a_task_whose_function_was_lost_in_a_drop_waits_for_the_check(tmp_path):
    # A remote worker's connection drops with a message on its way that
    # carried a function's pickle; the next task of that function comes by
    # id. Until the broker's CHECK, the worker drops such a task unanswered
    # (out of step, not broken): it answers it MISSING, and runs it when the
    # broker sends it again with its function.
    broker = FakeBroker(tmp_path, credits=2, tcp=True)
    try:
        identity, frames = broker.recv()
        assert p.check(frames[0])[0] == p.HELLO
        broker.send(identity, task_message(1, tasks.square, (3,)))
        assert read_results(broker.recv()[1]) == [(1, p.STATUS_OK, 9)]
        broker.cut()
        # the worker connects again and asks which of its tasks were lost
        identity, frames = broker.recv()
        assert p.check(frames[0])[0] == p.SYNC
        # task 2's function (id 2) was never received here
        broker.send(identity, task_message(2, tasks.add, (2, 6), send_func=False, func_id=2))
        broker.send(identity, p.task_ids(p.CHECK, 1, [2]))
        identity, frames = broker.recv()
        kind, count, buf = p.check(frames[0])
        assert kind == p.MISSING, "the task was answered before the CHECK"
        assert p.read_task_ids(buf, count) == (1, [2])
        # from the CHECK on, both sides count functions afresh: sent again
        broker.send(identity, task_message(2, tasks.add, (2, 6), func_id=2))
        assert read_results(broker.recv()[1]) == [(2, p.STATUS_OK, 8)]
        broker.send(identity, p.control(p.STOP))
    finally:
        code, stderr = broker.close()  # kills a worker that did not stop
    assert code == 0, stderr
    assert "does not hold" not in stderr, stderr


def test_worker_says_hello_with_its_version_and_credits(fake_broker):
    identity, frames = fake_broker.recv()
    assert identity == b"fake-1"
    kind, count, buf = p.check(frames[0])
    assert (kind, count) == (p.HELLO, 0)
    info = p.json_body(buf)
    assert info["pid"] == fake_broker.proc.pid
    assert info["credits"] == 3
    assert info["version"] == __version__
    assert info["python"] == sys.version.split()[0]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


def test_worker_runs_a_task_sent_by_the_protocol(fake_broker):
    identity, _ = fake_broker.recv()
    fake_broker.send(identity, task_message(42, tasks.square, (7,)))
    _, frames = fake_broker.recv()
    assert read_results(frames) == [(42, p.STATUS_OK, 49)]
    # the function is cached by id: the next task refers to it without sending it
    fake_broker.send(identity, task_message(43, tasks.square, (8,), send_func=False))
    _, frames = fake_broker.recv()
    assert read_results(frames) == [(43, p.STATUS_OK, 64)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


class _ByRef:
    """Pickles as ``script_ref(ref_id, name)``, as the client names a
    function of the script in task data."""

    def __init__(self, ref_id: int, name: str):
        self.ref_id, self.name = ref_id, name

    def __reduce__(self):
        return script_ref, (self.ref_id, self.name)


def ref_entry(writer: p.Writer, ref_id: int, value: object = None, held: int = 10) -> None:
    """Add a ``FLAG_REF`` entry: with ``value``'s pickle, or a use of ``ref_id``."""
    if value is None:
        writer.entries.append(p.TASK_ENTRY.pack(0, ref_id, p.FLAG_REF, 0, 0, 0, 0))
        return
    size = writer.body(pickle.dumps(value, protocol=5), [])
    flags = p.FLAG_REF | p.FLAG_FUNC
    writer.entries.append(p.TASK_ENTRY.pack(0, ref_id, flags, 0, size, 0, held))


def call_message(task_id: int, refs: list, arg: object, send_func: bool) -> list:
    """A TASK message: ``refs`` (``(ref_id, value or None)``) then the task
    ``apply(arg, 6)``."""
    writer = p.Writer(p.TASK)
    for ref_id, value in refs:
        ref_entry(writer, ref_id, value)
    flags = p.FLAG_STAR
    func_pickle = b""
    if send_func:
        flags |= p.FLAG_FUNC
        func_pickle = dill.dumps(tasks.apply, protocol=5)
        writer.inline.append(func_pickle)
    data, buffers = dumps((arg, 6))
    size = writer.body(data, buffers)
    writer.entries.append(
        p.TASK_ENTRY.pack(task_id, 1, flags, len(func_pickle), size, len(buffers), 0)
    )
    return writer.frames_out()


def test_worker_keeps_what_a_ref_entry_brings_and_finds_it_by_id(fake_broker):
    identity, _ = fake_broker.recv()
    # the first task brings the function's pickle; the next names its id only
    fake_broker.send(identity, call_message(42, [(7, tasks.square)], _ByRef(7, "sq"), True))
    _, frames = fake_broker.recv()
    assert read_results(frames) == [(42, p.STATUS_OK, 36)]
    fake_broker.send(identity, call_message(43, [(7, None)], _ByRef(7, "sq"), False))
    _, frames = fake_broker.recv()
    assert read_results(frames) == [(43, p.STATUS_OK, 36)]
    # an id the worker does not hold fails that task, named, and no other
    fake_broker.send(identity, call_message(44, [(99, None)], _ByRef(99, "gone"), False))
    _, frames = fake_broker.recv()
    [(task_id, status, error)] = read_results(frames)
    assert (task_id, status) == (44, p.STATUS_ERROR)
    assert "could not unpickle the arguments of task 44" in str(error)
    assert "function gone of the script by id 99, which this worker does not hold" in str(error)
    fake_broker.send(identity, call_message(45, [(7, None)], _ByRef(7, "sq"), False))
    _, frames = fake_broker.recv()
    assert read_results(frames) == [(45, p.STATUS_OK, 36)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


def test_worker_counts_the_function_of_a_task_it_gives_back_as_the_broker_does(fake_broker):
    # a grouped task given back unrun, after a ref entry: the broker counted
    # its function as used after the ref, so the worker must too, or the two
    # drop different ones when the cache is full
    identity, _ = fake_broker.recv()
    func_pickle = dill.dumps(tasks.sleep_square, protocol=5)
    writer = p.Writer(p.TASK)
    grouped = p.FLAG_STAR | p.FLAG_GROUPED
    for task_id, flags in [(1, grouped | p.FLAG_FUNC), (2, grouped)]:
        if task_id == 2:
            ref_entry(writer, 7, tasks.square, held=10)
        if flags & p.FLAG_FUNC:
            writer.inline.append(func_pickle)
        size = writer.body(*dumps((1,)))
        func_len = len(func_pickle) if flags & p.FLAG_FUNC else 0
        writer.entries.append(p.TASK_ENTRY.pack(task_id, 1, flags, func_len, size, 0, 0))
    fake_broker.send(identity, writer.frames_out())
    got: list = []
    while len(got) < 2:
        _, count, buf = p.check(fake_broker.recv()[1][0])
        # task 2 goes back after task 1 ends, or while it runs long (after a
        # STATUS_LONG of task 1): counted alike either way
        entries = p.result_entries(buf, count)
        got += [(task_id, status) for task_id, status, *_ in entries if status != p.STATUS_LONG]
    assert sorted(got) == [(1, p.STATUS_OK), (2, p.STATUS_RETURNED)]
    # the broker holds [ref 7, function 1], oldest first: one that fills the
    # cache but for function 1's bytes pushes out ref 7 alone
    writer = p.Writer(p.TASK)
    ref_entry(writer, 8, tasks.square, held=p.FUNCTION_CACHE_BYTES - len(func_pickle))
    size = writer.body(*dumps((5,)))
    writer.entries.append(p.TASK_ENTRY.pack(3, 1, p.FLAG_STAR, 0, size, 0, 0))
    fake_broker.send(identity, writer.frames_out())
    assert read_results(fake_broker.recv()[1]) == [(3, p.STATUS_OK, 25)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


def test_worker_gives_back_a_message_held_behind_a_long_task_and_keeps_its_function(
    fake_broker,
):
    # a TASK that comes while a task runs long is given back unrun at once
    # (STATUS_LONG, then STATUS_RETURNED), and the function it carried is
    # held afterwards, as the broker counts it sent
    identity, _ = fake_broker.recv()
    fake_broker.send(identity, task_message(1, tasks.sleep_return, (0.5, "slow")))
    fake_broker.send(identity, task_message(2, tasks.square, (3,)))
    _, count, buf = p.check(fake_broker.recv()[1][0])
    got = [(task_id, status) for task_id, status, *_ in p.result_entries(buf, count)]
    assert got == [(1, p.STATUS_LONG), (2, p.STATUS_RETURNED)]
    assert read_results(fake_broker.recv()[1]) == [(1, p.STATUS_OK, "slow")]
    fake_broker.send(identity, task_message(3, tasks.square, (4,), send_func=False))
    assert read_results(fake_broker.recv()[1]) == [(3, p.STATUS_OK, 16)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


def test_worker_drops_a_message_of_another_version_and_keeps_working(fake_broker):
    identity, _ = fake_broker.recv()
    fake_broker.send(identity, task_message(1, tasks.square, (3,), version=p.VERSION + 1))
    fake_broker.send(identity, task_message(2, tasks.square, (4,)))
    _, frames = fake_broker.recv()
    # only the task of the right version ran
    assert read_results(frames) == [(2, p.STATUS_OK, 16)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0
    assert "protocol version mismatch" in stderr
    assert f"version {p.VERSION + 1}" in stderr


def test_worker_exits_when_refused(fake_broker):
    identity, _ = fake_broker.recv()
    fake_broker.send(identity, p.control(p.REFUSE, b"you are not welcome"))
    code, stderr = fake_broker.close()
    assert code == 2
    assert "refused by the broker: you are not welcome" in stderr


# a fake worker against a real broker


def fake_worker(pool: Pool, identity: bytes) -> tuple[zmq.Context, zmq.Socket]:
    endpoint = broker_endpoint(pool)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return ctx, sock


def hello_body() -> bytes:
    return json.dumps(
        {"pid": os.getpid(), "host": "fake", "credits": 1, "version": "0.0", "python": "3"}
    ).encode()


def test_broker_refuses_a_worker_of_another_version(pool):
    ctx, sock = fake_worker(pool, b"stranger-1")
    try:
        sock.send(envelope(p.HELLO, version=p.VERSION + 1, body=hello_body()))
        assert sock.poll(10_000), "the broker did not answer a hello of another version"
        (frame,) = sock.recv_multipart()
        kind, _, buf = p.check(frame)
        assert kind == p.REFUSE
        reason = p.text_body(buf)
        assert "protocol version mismatch" in reason
        assert f"version {p.VERSION + 1}" in reason
    finally:
        sock.close()
        ctx.term()
    # the pool is not disturbed
    assert pool.run_on_all(tasks.square, 3) == [9, 9]
    assert len(set(pool.run_on_all(tasks.pid))) == 2


def test_broker_refuses_a_worker_it_did_not_start(pool):
    ctx, sock = fake_worker(pool, b"stranger-2")
    try:
        sock.send_multipart(p.control(p.HELLO, hello_body()))
        assert sock.poll(10_000), "the broker did not answer an unknown worker"
        (frame,) = sock.recv_multipart()
        kind, _, buf = p.check(frame)
        assert kind == p.REFUSE
        assert "unknown worker" in p.text_body(buf)
    finally:
        sock.close()
        ctx.term()
    assert pool.run_on_all(tasks.square, 4) == [16, 16]
    assert len(pool.run_on_all(tasks.pid)) == 2  # the stranger got no task


def test_broker_ignores_garbage(pool):
    ctx, sock = fake_worker(pool, b"stranger-3")
    try:
        sock.send(b"GET / HTTP/1.1\r\n\r\n")
        sock.send_multipart([b"DZMQ", b"x"])
        sock.send(pickle.dumps("not a message"))
    finally:
        sock.close()
        ctx.term()
    assert list(pool.map(tasks.square, range(10))) == [i * i for i in range(10)]


def _task_entries(frames: list) -> list[tuple[int, int, int]]:
    """``(task id, function id, flags)`` of each task in a TASK message."""
    kind, count, buf = p.check(frames[0])
    assert kind == p.TASK
    return [(task_id, func_id, flags) for task_id, func_id, flags, *_ in p.task_entries(buf, count)]


def _answer(sock: zmq.Socket, task_id: int, value: object) -> None:
    writer = p.Writer(p.RESULT)
    data, buffers = dumps(value)
    size = writer.body(data, buffers)
    writer.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_OK, 5, size, len(buffers), 0))
    sock.send_multipart(writer.frames_out())


# a real broker, on a loop of the test's own, with fake workers


class Hooks:
    """The pool's part, as a broker built alone needs it: no initializers;
    it notes the workers made ready and what the broker gives up on."""

    def __init__(self) -> None:
        self.ready: list[bytes] = []
        self.troubles: list[str] = []

    def on_hello(self, rec: WorkerRecord) -> Task | None:
        return None

    def on_ready(self, rec: WorkerRecord) -> None:
        self.ready.append(rec.identity)

    def on_init_failed(self, rec: WorkerRecord, status: int, value: object) -> None:
        self.troubles.append(f"initializer of {rec.identity!r} failed")

    def on_unreachable(self, rec: WorkerRecord) -> None:
        self.troubles.append(f"{rec.identity!r} unreachable")

    def on_log(self, rec: WorkerRecord, body: bytes) -> None:
        pass

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        self.troubles.append(f"{rec.identity!r} timed out")


class Results:
    """A result sink: task id -> (status, value) as the broker delivers it."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, object]] = {}

    def deliver(self, task: Task, status: int, value: object) -> None:
        self.got[task.id] = (status, value)

    def flush(self, urgent: bool = False) -> None:
        pass


class LoneBroker:
    """A ``Broker`` bound to an ipc endpoint, its loop run by the test thread
    (``spin``), and fake workers: DEALER sockets that say hello."""

    def __init__(self, tmp_path: Path):
        self.loop = asyncio.new_event_loop()
        self.ctx = zmq.Context()
        self.hooks = Hooks()
        self.sink = Results()
        self.broker = Broker(self.loop, self.ctx, 0, None, self.hooks)
        self.endpoint = self.broker.bind(f"ipc://{tmp_path}/broker")
        self.socks: dict[bytes, zmq.Socket] = {}
        self.ids = itertools.count(1)
        #: the id of the latest task made
        self.ids_given = 0

    def spin(self, until, timeout: float = 10) -> None:
        """Run the broker's loop until ``until()`` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out"
            self.loop.run_until_complete(asyncio.sleep(0.005))

    def worker(self, identity: bytes, credits: int) -> zmq.Socket:
        """A fake worker, admitted, connected and ready."""
        self.broker.expect(identity)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(self.endpoint)
        self.socks[identity] = sock
        body = {**json.loads(hello_body()), "version": __version__, "credits": credits}
        sock.send_multipart(p.hello(body))
        self.spin(lambda: identity in self.hooks.ready)
        return sock

    def submit(self) -> int:
        """Submit a task (the fake workers never unpickle it); return its id."""
        self.broker.submit([self._task()])
        return self.ids_given

    def _task(self) -> Task:
        task = Task(next(self.ids), 1, b"f", p.FLAG_STAR, b"args", [], self.sink, name="f")
        self.ids_given = task.id
        return task

    def chunk_sent(self, func_pickle: bytes = b"f") -> Task:
        """A chunk task, submitted and taken by a fake worker."""
        chunk = Task(next(self.ids), 1, func_pickle, p.FLAG_CHUNK, b"args", [], self.sink, name="f")
        self.broker.submit([chunk])
        assert self.received()[1] == chunk.id
        return chunk

    def know_the_function_as_quick(self) -> None:
        """As if a task of the function had run for 10 µs: a worker that runs
        one of a function that never ran gets no second task."""
        self.broker._dispatcher.note_run_time(self._task(), 10)

    def received(self) -> tuple[bytes, int, int]:
        """``(worker, task id, flags)`` of the next task a fake worker gets."""
        identity, frames = self.received_frames()
        [(task_id, _, flags)] = _task_entries(frames)
        return identity, task_id, flags

    def received_frames(self) -> tuple[bytes, list]:
        """``(worker, frames)`` of the next message a fake worker gets."""
        got: list[tuple[bytes, list]] = []

        def arrived() -> bool:
            for identity, sock in self.socks.items():
                if sock.poll(0):
                    got.append((identity, sock.recv_multipart()))
                    return True
            return False

        self.spin(arrived)
        return got[0]

    def answer(self, identity: bytes, task_id: int, value: object) -> None:
        _answer(self.socks[identity], task_id, value)
        self.spin(lambda: task_id in self.sink.got)

    def close(self) -> None:
        self.broker.close(lambda task: PoolClosedError(f"{task} cancelled"))
        for sock in self.socks.values():
            sock.close()
        self.ctx.term()
        self.loop.close()


@pytest.fixture
def lone_broker(tmp_path):
    broker = LoneBroker(tmp_path)
    yield broker
    broker.close()


def test_broker_marks_the_pools_only_task_lone(lone_broker):
    # a task is lone when nothing else is queued or running in the pool: its
    # worker may wait for its next task right after it; beside others, never
    b = lone_broker
    b.worker(b"fake-a", credits=1)
    b.worker(b"fake-b", credits=2)
    b.know_the_function_as_quick()
    alone = b.submit()
    holder, task_id, flags = b.received()
    assert task_id == alone
    assert flags & p.FLAG_LONE, "the pool's only task was not marked"
    beside = [b.submit(), b.submit()]  # the two other credits
    answers = []
    for _ in beside:
        worker, task_id, flags = b.received()
        assert not flags & p.FLAG_LONE, "a task beside others was marked lone"
        answers.append((worker, task_id))
    assert sorted(task_id for _, task_id in answers) == beside
    b.answer(holder, alone, 25)
    for worker, task_id in answers:
        b.answer(worker, task_id, task_id)
    # all answered: the next task is the only one again
    again = b.submit()
    _, task_id, flags = b.received()
    assert (task_id, bool(flags & p.FLAG_LONE)) == (again, True)
    status, (data, buffers, _) = b.sink.got[alone]
    assert (status, loads(data, buffers)) == (p.STATUS_OK, 25)
    assert b.hooks.troubles == []


def _answer_later(sock: zmq.Socket, value: object, delay: float) -> threading.Thread:
    """A thread that takes the next task a fake worker gets and answers it
    with ``value`` ``delay`` seconds later (the socket is the thread's
    until it ends)."""

    def answer() -> None:
        frames = sock.recv_multipart()
        [(task_id, _, _)] = _task_entries(frames)
        time.sleep(delay)
        _answer(sock, task_id, value)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_broker_polls_for_the_result_of_the_pools_only_task(lone_broker, monkeypatch):
    # the pool's only task is answered in the callback that sent it, before
    # the loop sleeps: the poll spares the pool loop the wake-up of its
    # thread (here it may last until the answer comes, 50 ms later, when
    # the loop's turn is long over)
    b = lone_broker
    sock = b.worker(b"fake-a", credits=1)
    b.know_the_function_as_quick()
    monkeypatch.setattr(b.broker._lone_poll, "seconds", 60.0)
    answering = _answer_later(sock, 49, 0.05)
    alone = b.submit()
    b.loop.run_until_complete(asyncio.sleep(0))  # one turn: the wake-up of the submit
    answering.join(10)
    assert not answering.is_alive()
    status, (data, buffers, _) = b.sink.got[alone]
    assert (status, loads(data, buffers)) == (p.STATUS_OK, 49)
    assert b.hooks.troubles == []


def test_a_submit_from_another_thread_ends_the_brokers_poll(lone_broker, monkeypatch):
    # while the broker polls for the result of the pool's only task, a task
    # submitted from another thread goes to the idle worker at once: the
    # wake-up ends the poll, which would otherwise last a minute here
    b = lone_broker
    b.worker(b"fake-a", credits=1)
    b.worker(b"fake-b", credits=1)
    b.know_the_function_as_quick()
    monkeypatch.setattr(b.broker._lone_poll, "seconds", 60.0)

    def submit_while_it_polls() -> None:
        deadline = time.monotonic() + 10
        while not b.broker._dispatcher.lone_sent and time.monotonic() < deadline:
            time.sleep(0.001)  # the lone task is sent: the poll begins
        time.sleep(0.05)
        b.submit()

    alone = b.submit()
    later = threading.Thread(target=submit_while_it_polls)
    later.start()
    try:
        got = [b.received(), b.received()]
    finally:
        later.join(10)
    sent = {task_id: (identity, flags) for identity, task_id, flags in got}
    assert sorted(sent) == [alone, b.ids_given]
    assert sent[alone][1] & p.FLAG_LONE
    assert {identity for identity, _ in sent.values()} == {b"fake-a", b"fake-b"}
    assert b.hooks.troubles == []


def test_a_chunk_handed_back_before_it_answered_any_input_answers_in_pieces(lone_broker):
    # A chunk whose worker hands back all its inputs (the chunk's budget ran
    # out before its first input started) runs again with the first part of
    # them, from input 0. Its answer went to the map as the chunk's whole
    # answer when it came before any part's: the map yielded those results
    # for the whole chunk, took the parts' answers for pieces of nothing,
    # and waited for ever (or, unordered, lost the inputs of the parts).
    b = lone_broker
    sock = b.worker(b"fake-a", credits=1)
    chunk = b.chunk_sent()
    sock.send_multipart(
        _chunk_pieces(chunk, (p.STATUS_HANDED_BACK, 0, (0, 1)), (p.STATUS_HANDED_BACK, 2, (2, 3)))
    )
    answered = {}
    for _ in range(2):  # the chunk with inputs 0-1, and a part with 2-3
        _, task_id, _ = b.received()
        b.answer(b"fake-a", task_id, ["result"])
        status, value = b.sink.got[task_id]
        answered[task_id] = value[3] if len(value) > 3 else None
    assert answered.pop(chunk.id) == 0, "the chunk's answer is not a piece at input 0"
    assert list(answered.values()) == [2]
    assert b.hooks.troubles == []


def _chunk_pieces(chunk: Task, *pieces: tuple[int, int, object]) -> list[bytes]:
    """A RESULT message of ``(status, mark, value)`` entries for ``chunk``."""
    writer = p.Writer(p.RESULT)
    for status, mark, value in pieces:
        data, buffers = dumps(value)
        size = writer.body(data, buffers)
        writer.entries.append(p.RESULT_ENTRY.pack(chunk.id, status, 0, size, len(buffers), mark))
    return writer.frames_out()


def _final_answer(b: LoneBroker, sock: zmq.Socket, chunk: Task, value: object) -> tuple:
    """Answer ``chunk`` (which answered in pieces before); ``(status, value)``
    as delivered."""
    _answer(sock, chunk.id, value)
    b.spin(lambda: b.sink.got[chunk.id][0] != p.STATUS_PARTIAL)
    return b.sink.got[chunk.id]


def _chunk_beside_a_free_worker(b: LoneBroker) -> tuple[zmq.Socket, Task]:
    """A chunk taken by fake worker ``fake-a`` (two credits), and its socket;
    ``fake-b`` (one credit) is free for the parts it hands back."""
    b.know_the_function_as_quick()  # else its worker gets no second task anyway
    sock = b.worker(b"fake-a", credits=2)
    chunk = b.chunk_sent()
    b.worker(b"fake-b", credits=1)
    return sock, chunk


def test_a_split_chunk_runs_on_while_its_parts_go_to_another_worker(lone_broker):
    # A chunk past its budget whose input runs long hands back the inputs it
    # has not started and runs on (STATUS_SPLIT): they go to the other
    # worker, not behind the chunk to the free credit of its own; the chunk's
    # payload is the input it runs (were it to run again elsewhere), and its
    # answer comes at that input's place
    b = lone_broker
    sock, chunk = _chunk_beside_a_free_worker(b)
    sock.send_multipart(
        _chunk_pieces(
            chunk,
            (p.STATUS_PARTIAL, 2, [0, 1]),  # inputs 0-1 answered
            (p.STATUS_SPLIT, 2, (2,)),  # it runs input 2 on
            (p.STATUS_HANDED_BACK, 3, (3, 4)),
            (p.STATUS_HANDED_BACK, 5, (5,)),
        )
    )
    parts = {}
    for _ in range(2):
        identity, task_id, _ = b.received()
        assert identity == b"fake-b", "a part went behind the chunk that still runs"
        b.answer(identity, task_id, ["part"])
        parts[task_id] = b.sink.got[task_id][1][3]
    assert sorted(parts.values()) == [3, 5]
    assert (chunk.data, chunk.skip) == (dumps((2,))[0], 0)
    status, value = _final_answer(b, sock, chunk, ["input 2"])
    assert (status, value[3], loads(value[0], value[1])) == (p.STATUS_OK, 2, ["input 2"])
    assert b.hooks.troubles == [] and b.broker.drops.dropped == 0


def test_a_chunk_split_before_its_first_input_hands_back_parts_that_say_where_they_start(
    lone_broker,
):
    # The watch thread splits a chunk past its budget before the main
    # thread has taken its first input (the thread lost its core between
    # the two, say): the chunk keeps no input and every input goes back in
    # parts, the first of them from input 0. That part's answer must still
    # name where it starts: as a plain answer, it was taken for the whole
    # chunk's, so that an ordered map yielded its inputs for the chunk and
    # dropped the other parts' (an unordered map lost them), or waited for
    # ever (seen within a minute of maps of chunks of 100 while py-spy
    # paused the workers for samples)
    b = lone_broker
    sock, chunk = _chunk_beside_a_free_worker(b)
    sock.send_multipart(
        _chunk_pieces(
            chunk,
            (p.STATUS_SPLIT, 0, ()),  # it runs none of its inputs
            (p.STATUS_HANDED_BACK, 0, (0, 1)),
            (p.STATUS_HANDED_BACK, 2, (2, 3)),
        )
    )
    starts = []
    for _ in range(2):
        identity, task_id, _ = b.received()
        b.answer(identity, task_id, ["part"])
        status, value = b.sink.got[task_id]
        assert len(value) == 4, "a part's answer does not say where it starts"
        starts.append(value[3])
    assert sorted(starts) == [0, 2]
    # the chunk's own answer, empty, is a piece at input 0 as well
    b.answer(b"fake-a", chunk.id, [])
    status, value = b.sink.got[chunk.id]
    assert (status, value[3], loads(value[0], value[1])) == (p.STATUS_OK, 0, [])
    assert b.hooks.troubles == [] and b.broker.drops.dropped == 0


def test_a_part_from_a_chunks_first_input_queues_behind_the_parts_before_it(lone_broker):
    # Parts handed back go ahead of new tasks and behind the parts handed
    # back before them, so that a map's results come about in order. The
    # part from a chunk's first input (a chunk split before it took one) is
    # a part like the others: it went to the head of the queue instead,
    # ahead of the part another chunk had handed back before it.
    b = lone_broker
    b.know_the_function_as_quick()
    sock_a = b.worker(b"fake-a", credits=1)
    chunk_a = b.chunk_sent()
    sock_b = b.worker(b"fake-b", credits=1)
    chunk_b = b.chunk_sent()
    b.submit()  # a new task: no credit is free for it
    sock_b.send_multipart(
        _chunk_pieces(chunk_b, (p.STATUS_SPLIT, 0, (0,)), (p.STATUS_HANDED_BACK, 1, (1,)))
    )
    b.spin(lambda: b.broker._dispatcher.queued == 2)
    sock_a.send_multipart(
        _chunk_pieces(
            chunk_a,
            (p.STATUS_SPLIT, 0, ()),
            (p.STATUS_HANDED_BACK, 0, (0,)),
            (p.STATUS_HANDED_BACK, 1, (1,)),
        )
    )
    b.spin(lambda: b.broker._dispatcher.queued == 4)
    sent = []
    for identity, chunk, value in [(b"fake-b", chunk_b, [0]), (b"fake-a", chunk_a, [])]:
        b.answer(identity, chunk.id, value)  # its credit is free for the queue's head
        _, task_id, _ = b.received()
        part = b.broker._ledger.active[task_id]
        sent.append((part.chunk.id, part.first))
    assert sent == [(chunk_b.id, 1), (chunk_a.id, 0)]
    assert b.hooks.troubles == [] and b.broker.drops.dropped == 0


def test_a_split_at_an_input_answered_ends_its_message(lone_broker):
    # a split must start at the chunk's first input not answered; one that
    # does not is a malformed message, whose parts are not taken either (as
    # the chunk's own hand-back, they would replace the inputs it runs)
    b = lone_broker
    sock = b.worker(b"fake-a", credits=1)
    chunk = b.chunk_sent()
    sock.send_multipart(
        _chunk_pieces(
            chunk,
            (p.STATUS_PARTIAL, 2, [0, 1]),
            (p.STATUS_SPLIT, 1, (1, 2)),
            (p.STATUS_HANDED_BACK, 3, (3,)),
        )
    )
    b.spin(lambda: b.broker.drops.dropped == 1)
    assert (chunk.data, chunk.skip, chunk.first) == (b"args", 2, 2)
    status, value = _final_answer(b, sock, chunk, [2, 3])
    assert (status, value[3]) == (p.STATUS_OK, 2)


def test_a_part_handed_back_after_its_chunk_finished_carries_the_function(lone_broker):
    # A chunk hands back inputs; it runs the first part itself and finishes
    # (which frees its payload and function pickle), and a part of it, run
    # past its budget, hands back inputs in turn. The new part carries the
    # function's pickle of the part that handed it back: a worker that does
    # not hold the function (one started since) needs it, where the finished
    # chunk's empty one fails the part with "could not unpickle the function
    # ... EOFError: Ran out of input".
    b = lone_broker
    sock = b.worker(b"fake-a", credits=1)
    chunk = b.chunk_sent(b"the function")
    sock.send_multipart(
        _chunk_pieces(chunk, (p.STATUS_HANDED_BACK, 0, (0, 1)), (p.STATUS_HANDED_BACK, 2, (2, 3)))
    )
    assert b.received()[1] == chunk.id  # with inputs 0-1
    b.answer(b"fake-a", chunk.id, [0, 1])
    assert chunk.func_pickle == b""  # finished
    _, part_id, _ = b.received()  # the part of inputs 2-3
    part = Task(part_id, 1, b"", p.FLAG_CHUNK, b"", [], b.sink)  # its id, for the message
    sock.send_multipart(
        _chunk_pieces(part, (p.STATUS_HANDED_BACK, 0, (2,)), (p.STATUS_HANDED_BACK, 1, (3,)))
    )
    assert b.received()[1] == part_id  # with input 2, at the head of the queue
    b.worker(b"fake-new", credits=1)  # holds no function
    identity, frames = b.received_frames()
    assert identity == b"fake-new"
    kind, count, buf = p.check(frames[0])
    reader = p.Reader(buf, p.body(buf, count, p.TASK_ENTRY), frames)
    [(_, func_id, flags, func_len, *_)] = p.task_entries(buf, count)
    assert func_id == 1 and flags & p.FLAG_FUNC
    assert bytes(reader.inline(func_len)) == b"the function"


def test_broker_sends_a_script_functions_pickle_to_each_worker_until_it_drops_it(
    lone_broker,
):
    # a task's ScriptRef goes with its pickle to a worker that does not hold
    # it, by id to one that does; the broker counts what each worker holds
    # as the worker does, so one that dropped it gets it again
    b = lone_broker
    small = p.ScriptRef(1001, b"small", [], 10)
    half = p.FUNCTION_CACHE_BYTES // 2 + 1
    large = [p.ScriptRef(1002 + i, b"large", [], half) for i in range(2)]

    def send(refs: tuple, answer: bool = True) -> tuple[bytes, list[tuple[int, int, bool]]]:
        """The worker that got a task with ``refs``, and ``(task id, function
        id, pickle sent)`` of its entries; the task is answered if ``answer``."""
        task = b._task()
        task.refs = refs
        b.broker.submit([task])
        got: list[tuple[bytes, list]] = []

        def arrived() -> bool:
            for identity, sock in b.socks.items():
                if sock.poll(0):
                    got.append((identity, sock.recv_multipart()))
                    return True
            return False

        b.spin(arrived)
        identity, frames = got[0]
        entries = _task_entries(frames)
        assert all(flags & p.FLAG_REF for task_id, _, flags in entries if task_id == 0)
        if answer:
            b.answer(identity, task.id, None)
        return identity, [(t, f, bool(flags & p.FLAG_FUNC)) for t, f, flags in entries]

    b.worker(b"fake-a", credits=1)
    task_id = b.ids_given + 1
    assert send((small,)) == (b"fake-a", [(0, 1001, True), (task_id, 1, True)])
    assert send((small,)) == (b"fake-a", [(0, 1001, False), (task_id + 1, 1, False)])
    # two that hold more than a worker keeps, between them: each pushes out
    # the least recently used until the rest fits, which go again
    assert send((large[0],))[1][0] == (0, 1002, True)
    assert send((large[1],))[1][0] == (0, 1003, True)  # small and large[0] go
    assert send((large[0], small))[1] == [
        (0, 1002, True),
        (0, 1001, True),
        (b.ids_given, 1, False),
    ]
    assert send((small, large[0]))[1] == [
        (0, 1001, False),
        (0, 1002, False),
        (b.ids_given, 1, False),
    ]
    # a worker that joins later gets the pickle with its first task
    b.worker(b"fake-b", credits=1)
    busy = send((), answer=False)[0]
    idle = send((small,))
    assert idle[0] != busy
    assert idle[1][0] == (0, 1001, idle[0] == b"fake-b")
    assert b.hooks.troubles == []


def test_worker_takes_a_task_that_comes_while_it_polls_after_a_lone_one(fake_broker):
    identity, _ = fake_broker.recv()
    for task_id in range(1, 6):  # each sent as soon as the last result is in
        frames = task_message(
            task_id, tasks.square, (task_id,), send_func=task_id == 1, flags=p.FLAG_LONE
        )
        fake_broker.send(identity, frames)
        _, result = fake_broker.recv()
        assert read_results(result) == [(task_id, p.STATUS_OK, task_id**2)]
    fake_broker.send(identity, p.control(p.STOP))
    code, stderr = fake_broker.close()
    assert code == 0, stderr


def test_a_failing_barrier_callback_spares_the_others_and_its_caller(caplog):
    # a barrier fires inside the handling of a result: a callback that
    # raises is logged, and the result's handling and later barriers go on
    from types import SimpleNamespace

    from distex_zmq.broker.ledger import Ledger

    ledger = Ledger()
    task = SimpleNamespace(id=1, func_pickle=b"f", data=b"d", buffers=[])
    ledger.add(task)
    fired = []

    def fail() -> None:
        raise RuntimeError("callback bug")

    ledger.when_finished(fail)
    ledger.when_finished(lambda: fired.append("second"))
    ledger.finish(task)  # raises nothing
    assert fired == ["second"]
    assert "callback bug" in caplog.text


def test_a_hello_said_again_that_admits_its_worker_is_answered_with_a_check(lone_broker):
    # the worker's first hello was lost with its connection: the one it says
    # again admits it, and a CHECK of no task ends its wait for one (it
    # drops a task whose function it lacks, as out of step, until a CHECK
    # comes); a first hello gets none
    b = lone_broker
    b.broker.expect(b"fake-b")
    sock = b.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"fake-b")
    sock.connect(b.endpoint)
    b.socks[b"fake-b"] = sock
    body = {**json.loads(hello_body()), "version": __version__, "credits": 1}
    sock.send_multipart(p.hello({**body, "again": True}))
    b.spin(lambda: b"fake-b" in b.hooks.ready and bool(sock.poll(0)))
    kind, count, buf = p.check(sock.recv_multipart()[0])
    assert kind == p.CHECK
    assert p.read_task_ids(buf, count) == (1, [])
    first = b.worker(b"fake-c", credits=1)
    b.spin(lambda: b"fake-c" in b.hooks.ready)
    assert not first.poll(100)
    assert b.hooks.troubles == []


def test_a_worker_connected_again_under_its_identity_gets_its_messages_there(lone_broker):
    # A remote worker's new connection takes over its identity
    # (ROUTER_HANDOVER) while the broker's side has not yet seen the old
    # one die: without it, ZeroMQ would keep routing to the dead
    # connection and drop the new one, and the worker's SYNC would never
    # be answered
    b = lone_broker
    old = b.worker(b"fake-a", credits=1)
    new = b.ctx.socket(zmq.DEALER)
    new.setsockopt(zmq.LINGER, 0)
    new.setsockopt(zmq.ROUTING_ID, b"fake-a")
    new.connect(b.endpoint)
    b.socks[b"fake-a"] = new
    try:
        new.send_multipart(p.control(p.SYNC))
        b.spin(lambda: bool(new.poll(0)))
        kind, count, buf = p.check(new.recv_multipart()[0])
        assert kind == p.CHECK
        assert p.read_task_ids(buf, count) == (1, [])
        held = b.submit()
        assert b.received()[1] == held
        assert not old.poll(100), "a message went to the old connection"
        assert b.hooks.troubles == []
    finally:
        old.close()


def test_a_second_hello_of_a_worker_checks_its_tasks(lone_broker):
    # a worker whose connection dropped before it heard from the pool says
    # hello again (the first may have been lost): the broker, that had
    # admitted it, keeps its record and asks which of its tasks it holds,
    # as after SYNC; a second hello from another process is dropped
    b = lone_broker
    sock = b.worker(b"fake-a", credits=1)
    held = b.submit()
    assert b.received()[1] == held
    body = {**json.loads(hello_body()), "version": __version__, "credits": 1}
    sock.send_multipart(p.hello(body))
    b.spin(lambda: bool(sock.poll(0)))
    kind, count, buf = p.check(sock.recv_multipart()[0])
    assert kind == p.CHECK
    assert p.read_task_ids(buf, count) == (1, [held])
    assert list(b.broker.registry.workers) == [b"fake-a"]
    sock.send_multipart(p.hello({**body, "pid": body["pid"] + 1}))
    b.spin(lambda: b.broker.drops.dropped == 1)
    assert not sock.poll(100)
    assert b.broker.registry.get(b"fake-a").pid == body["pid"]
    b.answer(b"fake-a", held, 7)
    assert b.hooks.troubles == []
