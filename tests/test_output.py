"""Workers' output and log records reach the client, live and tagged, on
local, spawner and SSH workers (issue 18 §2).

Each test runs a client script (``tests/scripts/output_client.py``) as a
process of its own and reads its stdout and stderr line by line, as a user
in a terminal would see them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distex_zmq import ProtocolError
from distex_zmq.output import MAX_PENDING, OutputWriter, emit_log
from distex_zmq.wire import frames
from tests.contract.conftest import LoopbackSpawner
from tests.helpers import wait_until
from tests.multihost import REMOTE_PYTHON, unavailable

SCRIPT = Path(__file__).parent / "scripts" / "output_client.py"
ROOT = Path(__file__).parent.parent
#: Seconds a client may take to show a line.
DEADLINE = 60.0

pytestmark = pytest.mark.timeout(120)


class Client:
    """The client script running one scenario; its lines as they come."""

    def __init__(self, tmp_path: Path, scenario: str, **kwargs: Any):
        self.go = tmp_path / "go"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), scenario, json.dumps(kwargs), str(self.go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe: Any) -> None:
        for line in pipe:
            self._queue.put((name, line.rstrip("\n")))

    def expect(self, stream: str, pattern: str) -> re.Match[str]:
        """The first line of ``stream`` (``"out"`` or ``"err"``) that matches
        ``pattern``, as it arrives; fail after ``DEADLINE`` seconds."""
        regex = re.compile(pattern)
        for line in self.lines[stream]:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + DEADLINE
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.lines[name].append(line)
            if name == stream and (m := regex.search(line)):
                return m
        pytest.fail(f"no line {pattern!r} on {stream}; so far: {self.lines}")

    def finish(self) -> dict[str, list[str]]:
        """Let the task end; wait for the client to exit; all its lines."""
        self.go.touch()
        try:
            self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(10)
        while not self._queue.empty():
            name, line = self._queue.get()
            self.lines[name].append(line)
        return self.lines


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    """``client(scenario, **pool_kwargs)``: a running client script, ended after the test."""
    clients: list[Client] = []

    def start(scenario: str, **kwargs: Any) -> Client:
        clients.append(Client(tmp_path, scenario, **kwargs))
        return clients[-1]

    yield start
    for c in clients:
        c.finish()


PREFIXED = r"^\[(?P<host>[^\]:]+):(?P<pid>\d+)\] "


def check_live(c: Client) -> None:
    """The task's lines arrive tagged while it still runs, each on its stream."""
    out = c.expect("out", PREFIXED + "hello-out$")
    err = c.expect("err", PREFIXED + "hello-err$")
    assert not c.go.exists()  # the task is still waiting for it
    c.go.touch()
    result = c.expect("out", r"^RESULT (\S+) (\d+)$")
    assert out["host"] == err["host"] == result[1]
    assert out["pid"] == err["pid"] == result[2]
    lines = c.finish()
    assert not any("hello-out" in line for line in lines["err"])
    assert not any("hello-err" in line for line in lines["out"])


# local workers


def test_local_lines_arrive_live_and_tagged(client):
    check_live(client("live", num_workers=1))


@pytest.mark.parametrize(
    ("scenario", "line"),
    [("sigkill", "last words before SIGKILL"), ("exit_partial", "no newline before _exit")],
)
def test_last_line_before_death_is_not_lost(client, scenario, line):
    c = client(scenario, num_workers=1)
    c.expect("out", PREFIXED + re.escape(line) + "$")
    c.expect("out", "^LOST$")


def test_a_stdout_nobody_reads_does_not_stall_the_pool(tmp_path):
    """A client's stdout that blocks (a pipe nobody reads) holds up only the
    worker that writes to it, in its ``print``, as a terminal of its own
    would: the other worker runs a map meanwhile, and once the pipe is read
    every line comes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    kwargs = json.dumps({"num_workers": 2, "qsize": 1})
    args = [sys.executable, str(SCRIPT), "stalled", kwargs, "-"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        err: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [err.put(line) for line in proc.stderr])
        reader.start()
        # 20 MB of lines for a stdout that takes 64 KiB: the map still runs,
        # and the flood waits in its worker, not lost in the client
        assert err.get(timeout=DEADLINE).strip() == "ALIVE waiting"
        out = proc.stdout.read()  # now read: the flood goes on to its end
        assert proc.wait(DEADLINE) == 0
        reader.join(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.get_nowait().strip() == "SHUT DOWN"
    lines = out.splitlines()
    assert len(lines) == 200_000
    assert all(re.match(PREFIXED + "x{99}$", line) for line in lines)


def test_lines_that_cannot_wait_are_dropped_and_counted(monkeypatch):
    """Lines that cannot wait in their worker (from other hosts) wait in the
    client up to ``MAX_PENDING``; beyond it they are dropped, and a line in
    their place says how many."""
    read_end, write_end = os.pipe()
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    writer = OutputWriter()
    batch = ("y" * 99 + "\n") * 1000
    for _ in range(100):  # 10 MB, for a pipe that takes 64 KiB
        writer.put("out", batch, 1000)
    assert writer.full()
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_end, 1 << 16), b""))
    )
    reader.start()
    try:
        assert wait_until(lambda: writer.idle, timeout=DEADLINE)
        asyncio.run(writer.close())
    finally:
        stdout.close()
        reader.join(DEADLINE)
        os.close(read_end)
    written = dropped = 0
    for line in b"".join(chunks).decode().splitlines():
        if line == "y" * 99:
            written += 1
        else:
            m = re.fullmatch(
                r"\[distex_zmq: (\d+) lines of the workers' output dropped: "
                r"this process's stdout took them too slowly\]",
                line,
            )
            assert m, line
            dropped += int(m[1])
    # every batch that fitted in MAX_PENDING came whole
    assert written >= MAX_PENDING // len(batch) * 1000 and dropped > 0
    assert written + dropped == 100_000
    assert not writer.full()


def test_raw_output(client):
    c = client("live", num_workers=1, output="raw")
    c.expect("out", "^hello-out$")
    c.expect("err", "^hello-err$")


def test_no_output(client):
    c = client("live", num_workers=1, output="off")
    c.go.touch()
    c.expect("out", "^RESULT ")
    lines = c.finish()
    assert not any("hello" in line for line in lines["out"] + lines["err"])


def test_bad_output_option():
    from distex_zmq import Pool

    with pytest.raises(ValueError, match="output must be one of"):
        Pool(1, output="loud")
    with pytest.raises(ValueError, match="log_level"):
        Pool(1, log_level="verbose")


def check_logs(c: Client, level_shown: bool = False) -> None:
    log = r"^LOG user\.tasks (?P<level>\w+) (?P<host>\S+) (?P<pid>\d+) (?P<worker>\S+) "
    warning = c.expect("out", log + "a warning record 42$")
    error = c.expect("out", log + "an error record$")
    c.expect("out", "^ZeroDivisionError: division by zero$")  # its traceback
    result = c.expect("out", r"^RESULT (\S+) (\d+)$")
    assert warning["level"] == "WARNING" and error["level"] == "ERROR"
    assert warning["host"] == result[1] and warning["pid"] == result[2]
    assert warning["worker"] == error["worker"] != "None"
    lines = c.finish()
    assert any("an info record" in line for line in lines["out"]) == level_shown


def test_log_records_are_plain_checked_data(caplog):
    good = {
        "name": "user.x",
        "levelno": 30,
        "msg": "m",
        "pathname": "/a/b.py",
        "lineno": 3,
        "funcName": "f",
        "created": 1.5,
        "exc_text": None,
    }
    assert frames.read_log(json.dumps(good).encode()) == good
    for bad in (b"[]", b"{", json.dumps({**good, "lineno": "3"}).encode()):
        with pytest.raises(ProtocolError, match="malformed log record"):
            frames.read_log(bad)
    caplog.set_level(logging.INFO)
    for name in ("user.x", "distex_zmq.broker"):
        emit_log("h", 7, "w-1", json.dumps({**good, "name": name}).encode())
    [record] = [r for r in caplog.records if r.name != "distex_zmq.output"]
    assert (record.name, record.host, record.pid, record.worker) == ("user.x", "h", 7, "w-1")
    assert record.getMessage() == "m" and record.filename == "b.py"


def test_log_records_at_the_level(client):
    check_logs(client("logs", num_workers=1))


def test_log_records_at_a_lower_level(client):
    check_logs(client("logs", num_workers=1, log_level=20), level_shown=True)


def test_no_log_records(client):
    c = client("logs", num_workers=1, log_level=None)
    c.expect("out", "^RESULT ")
    assert not any(line.startswith("LOG ") for line in c.finish()["out"])


#: what a caller's context holds, as Jupyter's running cell (ipykernel keeps
#: the cell whose output a write belongs to in a context variable)
CELL: contextvars.ContextVar[str] = contextvars.ContextVar("CELL", default="no cell")


def test_pool_loop_does_not_run_in_the_context_that_made_the_pool(make_pool):
    """A task's log record and a done callback, both handled on the pool loop,
    do not see the context of the caller that made the pool: in Jupyter they
    would go to the output of that cell, long finished, instead of the running
    one."""
    from tests import tasks

    seen: list[tuple[str, str]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(("log", CELL.get()))

    def in_first_cell() -> Any:
        CELL.set("the cell that made the pool")
        return make_pool(1)

    pool = contextvars.copy_context().run(in_first_cell)
    logger = logging.getLogger("user.context")
    handler = Handler()
    logger.addHandler(handler)
    try:
        future = pool.submit(tasks.log_after, 0.2, "user.context", "logged")
        future.add_done_callback(lambda _: seen.append(("callback", CELL.get())))
        assert future.result(timeout=30) == "logged"
        wait_until(lambda: len(seen) == 2, timeout=10)
    finally:
        logger.removeHandler(handler)
    assert sorted(seen) == [("callback", "no cell"), ("log", "no cell")]


def test_pool_loop_does_not_run_in_the_context_that_resized_the_pool(make_pool):
    """The death of a worker that ``resize`` added is reported (a warning of
    ``distex_zmq.broker``) outside the context of the caller of ``resize``:
    in Jupyter it would go to that cell, long finished."""
    from tests import tasks

    pool = make_pool(1)
    before = set(pool.run_on_all(tasks.pid))

    def in_second_cell() -> None:
        CELL.set("the cell that resized the pool")
        pool.resize(2)

    contextvars.copy_context().run(in_second_cell)
    [added] = set(pool.run_on_all(tasks.pid)) - before
    seen: list[tuple[str, str]] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), CELL.get()))

    logger = logging.getLogger("distex_zmq")
    handler = Handler()
    logger.addHandler(handler)
    try:
        os.kill(added, signal.SIGKILL)
        assert wait_until(lambda: any(f"pid {added} " in m for m, _ in seen), timeout=20), seen
    finally:
        logger.removeHandler(handler)
    assert [cell for m, cell in seen if f"pid {added} " in m] == ["no cell"], seen


# spawner workers


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[LoopbackSpawner]:
    s = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        yield s
    finally:
        s.stop()


def test_spawner_lines_reach_the_pool(client, spawner):
    hosts = [f"127.0.0.1:{spawner.port}/1"]
    check_live(client("live", num_workers=None, hosts=hosts, secret=None))
    assert b"hello-out" not in spawner.read()


def test_spawner_last_line_and_logs(client, spawner):
    hosts = [f"127.0.0.1:{spawner.port}/1"]
    c = client("sigkill", num_workers=None, hosts=hosts, secret=None)
    c.expect("out", PREFIXED + "last words before SIGKILL$")
    c.finish()
    check_logs(client("logs", num_workers=None, hosts=hosts, secret=None))


def test_spawner_drops_a_flood_with_a_marker_and_goes_on(client, spawner):
    hosts = [f"127.0.0.1:{spawner.port}/1"]
    c = client("flood", num_workers=None, hosts=hosts, secret=None)
    c.expect("out", PREFIXED + r"\[\d+ lines dropped: the worker wrote too fast\]$")
    c.expect("out", r"^RESULT ")
    lines = c.finish()["out"]
    assert 1000 < sum(line.endswith("] " + "x" * 99) for line in lines) < 200_000


# SSH workers (the network-namespace cluster: run under the cluster lock)

ssh = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@ssh
def test_ssh_lines_reach_the_pool(client, ssh_home):
    kwargs = {"num_workers": None, "hosts": ["ssh://dzq-a/1"], "remote_python": REMOTE_PYTHON}
    check_live(client("live", **kwargs))
    c = client("sigkill", **kwargs)
    c.expect("out", PREFIXED + "last words before SIGKILL$")
    c.finish()
    check_logs(client("logs", **kwargs))
