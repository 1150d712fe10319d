"""The control protocol (``wire/control.py``): encoding, validation and version
of the messages between a pool and its spawners and SSH agents, and a real
agent process that speaks it on its stdin and stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import zmq

from distex_zmq import ProtocolError
from distex_zmq.version import __version__
from distex_zmq.wire import control as c
from distex_zmq.wire import frames
from tests.helpers import LoopbackSpawner, free_port

pytestmark = pytest.mark.timeout(30)

KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
KEYS = {"server": KEY, "public": KEY, "secret": KEY}
WORKER = {"credits": 3, "func_pickle": 1, "data_pickle": 0, "loop": 2, "log_level": 30}
OPEN = c.Open(
    protocol=frames.VERSION,
    endpoint="tcp://10.0.0.1:5555",
    keys=KEYS,
    worker=WORKER,
    workers=4,
    heartbeat=5.0,
)
HELLO = c.Hello(host="h", version="1.0", protocol=frames.VERSION, python="3.11.7", pid=42)

COMMANDS = [OPEN, c.Keys(KEYS), c.Spawn(b"ssh-h-1"), c.Kill(b"\x00\xff"), c.Ping(), c.Stop(2.5)]
EVENTS = [
    HELLO,
    c.Opened(host="h", version="1.0", protocol=2, python="3.12.1", pid=7),
    c.Refused("no room"),
    c.Refused("no room", b"w-1"),
    c.Exit(b"w-1", 1234, -9, "Traceback ...\nMemoryError"),
    c.Exit(b"w-1", 1234, None, ""),  # its exit status unknown
    c.Output(b"w-1", 1234, "out", ["a line", "ünïcode"]),
    c.Output(b"w-1", 1234, "err", [], 7),
    c.Output(b"w-1", 1234, "err", ["\r 50%|#####     |"], partial=True),
    c.Pong(),
    c.Stopped(),
]


def line(**message: Any) -> bytes:
    return json.dumps({"v": c.VERSION, **message}).encode() + b"\n"


def frames_of(**message: Any) -> list[bytes]:
    return [c.HEAD, json.dumps(message).encode()]


# round trips


@pytest.mark.parametrize("message", COMMANDS + EVENTS, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_on_both_channels(message):
    reads = c.POOL_READS if isinstance(message, c.Event) else None
    for side in [reads] if reads else [c.SPAWNER_READS, c.AGENT_READS]:
        if message.KIND not in side.kinds:
            continue
        assert c.decode(c.encode(message), side) == message
        assert c.decode_line(c.encode_line(message), side) == message


def test_the_wire_shape():
    head, body = c.encode(c.Spawn(b"\x01\xab"))
    assert head == b"DZSP" + c.VERSION.to_bytes(2, "big")
    assert json.loads(body) == {"op": "spawn", "id": "01ab"}
    encoded = c.encode_line(c.Exit(b"w", 5, 1, "t"))
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    event = {"v": c.VERSION, "ev": "exit", "id": "77", "pid": 5, "rc": 1, "tail": "t"}
    assert json.loads(encoded) == event
    assert "id" not in json.loads(c.encode_line(c.Refused("why")))


@pytest.mark.parametrize("char", ["x", "é", "\x01", "\U0001f600"])
def test_an_exit_keeps_the_end_of_a_long_stderr_and_fits_in_a_message(char):
    tail = "first line\n" + char * 100_000 + "\nthe last line"
    exit_ = c.Exit(b"w", 1, 3, tail)
    assert len(exit_.tail) == c.MAX_TAIL and exit_.tail.endswith("\nthe last line")
    assert sum(map(len, c.encode(exit_))) < c.MAX_MESSAGE
    assert len(c.encode_line(exit_)) < c.MAX_MESSAGE
    assert c.decode(c.encode(exit_), c.POOL_READS) == exit_


def test_open_gives_the_workers_options_from_checked_numbers():
    args = c.decode(c.encode(OPEN), c.SPAWNER_READS).worker_args()  # type: ignore[attr-defined]
    assert args == [
        "--credits=3",
        "--func-pickle=1",
        "--data-pickle=0",
        "--loop=2",
        "--log-level=30",
    ]


def test_hello_and_opened_are_both_a_hello():
    opened = c.decode(c.encode(EVENTS[1]), c.POOL_READS)
    assert isinstance(opened, c.Opened) and isinstance(opened, c.Hello)
    assert not isinstance(c.decode_line(c.encode_line(HELLO), c.POOL_READS), c.Opened)


# what each side accepts


@pytest.mark.parametrize(
    "reads, message",
    [
        (c.SPAWNER_READS, c.Keys(KEYS)),  # the keys come with open
        (c.AGENT_READS, OPEN),  # an agent is opened by its command line
        (c.AGENT_READS, c.Pong()),  # an event is not a command
        (c.POOL_READS, c.Ping()),
    ],
)
def test_a_kind_the_side_does_not_read_is_refused(reads, message):
    with pytest.raises(ProtocolError, match="unknown|without"):
        c.decode(c.encode(message), reads)
    with pytest.raises(ProtocolError, match="unknown|without"):
        c.decode_line(c.encode_line(message), reads)


BAD_COMMANDS = [
    ({"op": "spawn"}, "'id' must be a str"),
    ({"op": "spawn", "id": "abc"}, "'id' must be 1 to 64 bytes in hex"),
    ({"op": "spawn", "id": "zz"}, "in hex"),
    ({"op": "spawn", "id": "00" * 65}, "in hex"),
    ({"op": "kill", "id": 12}, "'id' must be a str"),
    ({"op": "stop"}, "'grace' must be a float"),
    ({"op": "stop", "grace": True}, "'grace' must be a float"),
    ({"op": "stop", "grace": 1e9}, "out of range"),
    ({"op": "keys", "keys": {"server": KEY, "public": KEY}}, "keys.secret must be"),
    ({"op": "keys", "keys": {**KEYS, "public": "short"}}, "keys.public must be"),
    ({"op": "keys"}, "'keys' must be a dict"),
    ({"op": ["spawn"]}, "unknown op"),
    ({"op": "rm -rf /"}, "unknown op"),
    ({"id": "00"}, "a message without 'op'"),
]


@pytest.mark.parametrize("message, text", BAD_COMMANDS)
def test_an_agent_refuses_a_malformed_command_with_the_reason(message, text):
    with pytest.raises(ProtocolError, match=text.replace("(", r"\(")):
        c.decode_line(line(**message), c.AGENT_READS)


def _open(**changes: Any) -> dict[str, Any]:
    return {**OPEN.body(), **changes}


@pytest.mark.parametrize(
    "message, text",
    [
        (_open(workers=0), "'workers' = 0 is out of range"),
        (_open(workers=c.MAX_WORKERS_PER_POOL + 1), "out of range"),
        (_open(workers=2.0), "'workers' must be a int"),
        (_open(heartbeat=0.1), "'heartbeat' = 0.1 is out of range"),
        (_open(endpoint="tcp://x;rm -rf /:1"), "bad broker endpoint"),
        (_open(endpoint="ipc:///tmp/x"), "bad broker endpoint"),
        (_open(worker={**WORKER, "credits": 0}), "'credits' = 0 is out of range"),
        (_open(worker={**WORKER, "loop": "uvloop"}), "'loop' must be a int"),
        (_open(worker=None), "'worker' must be a dict"),
        (_open(keys={}), "keys.server must be"),
        (_open(protocol="2"), "'protocol' must be a int"),
    ],
)
def test_a_spawner_refuses_a_malformed_open_with_the_reason(message, text):
    with pytest.raises(ProtocolError, match=text):
        c.decode(frames_of(**message), c.SPAWNER_READS)


@pytest.mark.parametrize(
    "event, text",
    [
        ({"ev": "exit", "id": "01", "pid": 1, "rc": "1", "tail": ""}, "'rc' must be a int"),
        ({"ev": "exit", "id": "01", "pid": 1, "rc": 999, "tail": ""}, "out of range"),
        ({"ev": "exit", "pid": 1, "rc": 1, "tail": ""}, "'id' must be a str"),
        ({"ev": "refused", "reason": 5}, "'reason' must be a str"),
        ({"ev": "hello", "host": "h", "version": "1", "protocol": 2, "pid": 1}, "'python'"),
    ],
)
def test_a_pool_checks_the_events_it_reads(event, text):
    with pytest.raises(ProtocolError, match=text):
        c.decode_line(line(**event), c.POOL_READS)
    with pytest.raises(ProtocolError, match=text):
        c.decode(frames_of(**event), c.POOL_READS)


@pytest.mark.parametrize(
    "data, text",
    [
        (b"not json\n", "malformed JSON"),
        (b"\xff\xfe\n", "malformed JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"motd": "welcome"}\n', "not a control message"),
    ],
)
def test_lines_that_are_no_message(data, text):
    with pytest.raises(ProtocolError, match=text) as info:
        c.decode_line(data, c.POOL_READS)
    assert not isinstance(info.value, c.VersionError)


@pytest.mark.parametrize(
    "frames_, text",
    [
        ([c.HEAD], "expected 2 frames, got 1"),
        ([c.HEAD, b"{}", b"{}"], "expected 2 frames, got 3"),
        ([b"HTTP", b"{}"], "not a distex_zmq control message"),
        ([c.HEAD, b"{"], "malformed JSON"),
        ([c.HEAD, b'"open"'], "must be a JSON object"),
    ],
)
def test_frames_that_are_no_message(frames_, text):
    with pytest.raises(ProtocolError, match=text):
        c.decode(frames_, c.SPAWNER_READS)


# the version


@pytest.mark.parametrize("other", [1, c.VERSION + 1, "none"])
def test_another_version_is_a_clear_version_error_on_both_channels(other):
    body: dict[str, Any] = {"ev": "hello", **HELLO.body()}
    if other != "none":
        body["v"] = other
    with pytest.raises(c.VersionError) as info:
        c.decode_line(json.dumps(body).encode(), c.POOL_READS)
    text = str(info.value)
    assert f"control protocol version {other}, this side {c.VERSION}" in text
    assert "install the same distex_zmq version on both" in text
    if other != "none":
        head = b"DZSP" + int(other).to_bytes(2, "big")
        with pytest.raises(c.VersionError, match=f"version {other}, this side"):
            c.decode([head, c.encode(HELLO)[1]], c.POOL_READS)


# a real agent


class AgentProcess:
    """``python -m distex_zmq.agent`` with pipes for its commands and events."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distex_zmq.agent", "--connect", "tcp://127.0.0.1:9", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def event(self) -> c.Message:
        assert self.proc.stdout is not None
        return c.decode_line(self.proc.stdout.readline(), c.POOL_READS)

    def finish(self) -> tuple[int, str]:
        try:
            _, stderr = self.proc.communicate(timeout=15)
        finally:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, stderr.decode()


def test_agent_says_hello_refuses_bad_commands_and_stops_when_told():
    agent = AgentProcess()
    try:
        hello = agent.event()
        assert isinstance(hello, c.Hello) and not isinstance(hello, c.Opened)
        assert (hello.version, hello.protocol, hello.pid) == (
            __version__,
            frames.VERSION,
            agent.proc.pid,
        )
        agent.send(c.encode_line(c.Keys(KEYS)))
        agent.send(b'{"v": %d, "op": "spawn", "id": "xyz"}\n' % c.VERSION)
        assert agent.event() == c.Refused("'id' must be 1 to 64 bytes in hex")
        agent.send(b'{"v": 1, "op": "ping"}\n')
        refused = agent.event()
        assert isinstance(refused, c.Refused) and "control protocol version 1" in refused.reason
        agent.send(b"garbage\n")
        assert isinstance(agent.event(), c.Refused)
        agent.send(c.encode_line(c.Ping()))
        assert agent.event() == c.Pong()
        agent.send(c.encode_line(c.Stop(1.0)))
        assert agent.event() == c.Stopped()
    finally:
        returncode, stderr = agent.finish()
    assert returncode == 0
    assert stderr.count("distex_zmq agent: refused") == 3
    assert "'id' must be 1 to 64 bytes in hex" in stderr


def test_a_spawn_before_the_keys_is_refused_saying_what_may_have_eaten_them():
    # the keys come first; if a spawn comes without them, something on the
    # host read them from the agent's stdin: its worker could not reach the broker
    agent = AgentProcess()
    try:
        assert isinstance(agent.event(), c.Hello)
        agent.send(c.encode_line(c.Spawn(b"\x01")))
        refused = agent.event()
        assert isinstance(refused, c.Refused) and refused.identity == b"\x01", refused
        assert "the workers' keys did not come before this spawn" in refused.reason
        assert "~/.bashrc" in refused.reason
        agent.send(c.encode_line(c.Stop(1.0)))
        assert agent.event() == c.Stopped()
    finally:
        returncode, _ = agent.finish()
    assert returncode == 0


def test_an_agent_that_stood_still_stays_with_its_pool():
    # its host's VM paused, or the agent stopped: the time it stood still is
    # no silence of the pool's, which it then hears again
    agent = AgentProcess("--heartbeat-timeout", "2")
    try:
        assert isinstance(agent.event(), c.Hello)
        agent.send(c.encode_line(c.Ping()))
        assert agent.event() == c.Pong()
        agent.proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # past its heartbeat timeout
        agent.proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
        agent.send(c.encode_line(c.Ping()))
        assert agent.event() == c.Pong()
        agent.send(c.encode_line(c.Stop(1.0)))
        assert agent.event() == c.Stopped()
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        returncode, stderr = agent.finish()
    assert returncode == 0, stderr
    assert "no word from the pool" not in stderr


def rebuilt(events: list[c.Output]) -> list[str]:
    """The lines ``events`` carry, each partial one joined to its rest."""
    lines: list[str] = []
    going_on = False
    for event in events:
        for i, line in enumerate(event.lines):
            if i == 0 and going_on:
                lines[-1] += line
            else:
                lines.append(line)
        going_on = event.partial
    return lines


@pytest.mark.parametrize("char", ["a", "\x00", "\u20ac"])
def test_output_events_batch_lines_and_split_long_ones_under_the_limit(char):
    lines = [char * 10_000, "", "short", *([char * 50] * 500)]
    events = c.output_events(b"w-1", 7, "err", lines, dropped=3)
    for event in events:
        assert len(c.encode_line(event)) < c.MAX_MESSAGE
        assert c.decode(c.encode(event), c.POOL_READS) == event
    assert events[0].dropped == 3 and not any(e.dropped for e in events[1:])
    # the long line goes in pieces: each but its last ends a partial event
    assert [e.lines[-1] for e in events[:4]] == [char * (c.MAX_OUTPUT - 1)] * 4
    assert [e.partial for e in events] == [True] * 4 + [False] * (len(events) - 4)
    assert events[4].lines[:2] == [char * (10_000 - 4 * (c.MAX_OUTPUT - 1)), ""]
    assert rebuilt(events) == lines


def test_output_events_of_a_partial_line():
    [event] = c.output_events(b"w-1", 7, "out", ["done", "\r 50%"], partial=True)
    assert event.lines == ["done", "\r 50%"] and event.partial
    events = c.output_events(b"w-1", 7, "out", ["x" * 5000], partial=True)
    assert all(e.partial for e in events) and rebuilt(events) == ["x" * 5000]


def test_output_over_the_limit_or_of_another_stream_is_refused():
    too_long = {"ev": "output", "id": "77", "pid": 1, "stream": "out", "lines": ["a" * 3000]}
    with pytest.raises(ProtocolError, match="more than"):
        c.decode_line(line(**too_long), c.POOL_READS)
    with pytest.raises(ProtocolError, match="stream"):
        c.decode_line(line(**{**too_long, "lines": [], "stream": "in"}), c.POOL_READS)


def _status_peer(reply: list[bytes]) -> tuple[Any, Any, int, threading.Thread]:
    """A ROUTER on loopback that answers one status command with ``reply``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")

    def answer() -> None:
        if sock.poll(10_000):
            peer, *command = sock.recv_multipart()
            assert c.decode(command, c.SPAWNER_READS) == c.Status()
            sock.send_multipart([peer, *reply])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return ctx, sock, port, thread


@pytest.mark.parametrize("size", ["fits", "too large"])
def test_status_reads_a_reply_only_up_to_its_bound(size):
    from distex_zmq.spawner import status

    pools = [{"id": "ab" * 6, "capacity": 2, "workers": [{"pid": 1, "age": 1.0}]}]
    if size == "too large":  # a peer that is no spawner, or an endless list of workers
        pools = pools * (status.MAX_REPLY // 50)
    reply = c.StatusReply("h", "1.0", 7, 1.5, 8, pools)
    ctx, sock, port, thread = _status_peer(c.encode(reply))
    try:
        if size == "fits":
            assert status.query("127.0.0.1", port, None, timeout=10) == reply
        else:
            assert len(c.encode(reply)[1]) > status.MAX_REPLY
            with pytest.raises(status.StatusError, match="or sent one over 4 MiB"):
                status.query("127.0.0.1", port, None, timeout=10)
        thread.join(10)
        assert not thread.is_alive()
    finally:
        sock.close()
        ctx.term()


def _status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "distex_zmq.spawner", "status", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_status_fails_at_once_where_nothing_listens(tmp_path):
    # ZeroMQ retried in silence: the command waited its whole --timeout
    port = free_port()
    nobody = _status_cli(f"127.0.0.1:{port}", "--timeout", "600")
    assert nobody.returncode == 1, nobody.stderr
    assert f"cannot connect to 127.0.0.1:{port}: nothing listens on" in nobody.stderr
    # a spawner that is up answers as before
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        live = _status_cli(f"127.0.0.1:{spawner.port}", "--timeout", "20")
    finally:
        spawner.stop()
    assert live.returncode == 0, live.stderr
    assert "0 pool(s), 0 of at most" in live.stdout, live.stdout


def test_status_refuses_a_timeout_that_is_no_wait():
    for timeout in ("-1", "0", "nan"):
        result = subprocess.run(
            [sys.executable, "-m", "distex_zmq.spawner", "status", "--timeout", timeout],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 2, result.stderr
        assert "--timeout must be more than 0 seconds" in result.stderr


def test_every_source_of_the_secret_gives_the_same_keys(tmp_path, monkeypatch):
    from distex_zmq.security import SECRET_ENV, ClusterKeys, load_secret

    path = tmp_path / "secret"
    path.write_text("correct horse battery staple 42\n")
    from_file = load_secret(secret_file=str(path))
    assert from_file == b"correct horse battery staple 42"
    assert load_secret(path.read_text()) == from_file  # secret=open(f).read()
    assert load_secret(path.read_bytes()) == from_file
    monkeypatch.setenv(SECRET_ENV, path.read_text())
    assert load_secret() == from_file
    assert ClusterKeys.from_secret(load_secret() or b"") == ClusterKeys.from_secret(from_file)
    with pytest.raises(ValueError, match="empty"):
        load_secret(" \n")
