"""Workers' output and log records reach the client, live and tagged, on
local, spawner and SSH workers (issue 18 §2).

Each test runs a client script (``tests/scripts/output_client.py``) as a
process of its own and reads its stdout and stderr line by line, as a user
in a terminal would see them.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import io
import itertools
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
from typing import Any, cast

import pytest

from distex_zmq import ProtocolError
from distex_zmq.launch.relay import BURST, OutputRelay
from distex_zmq.output import MAX_PENDING, OutputWriter, WorkerOutput, emit_log
from distex_zmq.wire import control, frames
from tests import tasks
from tests.contract.conftest import LoopbackSpawner
from tests.helpers import wait_until
from tests.multihost import REMOTE_PYTHON, unavailable

SCRIPT = Path(__file__).parent / "scripts" / "output_client.py"
ROOT = Path(__file__).parent.parent
#: Seconds a client may take to show a line.
DEADLINE = 60.0

pytestmark = pytest.mark.timeout(120)


class Client:
    """The client script running one scenario; its lines as they come, and
    the text of each stream so far (a line not ended yet too)."""

    runs = itertools.count()

    def __init__(self, tmp_path: Path, scenario: str, **kwargs: Any):
        #: made to let the task end; one for each client of a test
        self.go = tmp_path / f"go-{next(Client.runs)}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), scenario, json.dumps(kwargs), str(self.go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        #: each stream's lines (split at "\n" only: a "\r" stays in its line)
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        #: each stream's text so far
        self.text = {"out": "", "err": ""}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe: Any) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(pipe.fileno(), 65536):  # what came, ended or not
            self._queue.put((name, decoder.decode(chunk)))
        self._queue.put((name, decoder.decode(b"", final=True)))

    def _take(self, timeout: float) -> str:
        """Take what came next on either stream (waiting up to ``timeout``
        seconds); its name, or "" if nothing came."""
        try:
            name, text = self._queue.get(timeout=timeout)
        except queue.Empty:
            return ""
        start = self.text[name].rfind("\n") + 1
        self.text[name] += text
        self.lines[name].extend(self.text[name][start:].split("\n")[:-1])
        return name

    def _wait_for(self, stream: str, found: Any, what: str) -> Any:
        deadline = time.monotonic() + DEADLINE
        seen = found()
        while not seen and (left := deadline - time.monotonic()) > 0:
            if self._take(left) == stream:
                seen = found()
        if not seen:
            pytest.fail(f"no {what} on {stream}; so far: {self.text}")
        return seen

    def expect(self, stream: str, pattern: str) -> re.Match[str]:
        """The first line of ``stream`` (``"out"`` or ``"err"``) that matches
        ``pattern``, as it arrives; fail after ``DEADLINE`` seconds."""
        regex = re.compile(pattern)
        lines = self.lines[stream]
        #: lines looked at already: a flood of lines is looked at once, not
        #: again at each piece of it that comes
        looked = 0

        def found() -> re.Match[str] | None:
            nonlocal looked
            start, looked = looked, len(lines)
            return next(filter(None, map(regex.search, lines[start:looked])), None)

        return cast(re.Match[str], self._wait_for(stream, found, f"line {pattern!r}"))

    def expect_text(self, stream: str, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` (multiline: ``^`` at the start of
        each line) in the text of ``stream`` so far, a line not ended yet
        too, as it arrives; fail after ``DEADLINE`` seconds."""
        regex = re.compile(pattern, re.MULTILINE)
        return cast(
            re.Match[str],
            self._wait_for(stream, lambda: regex.search(self.text[stream]), f"text {pattern!r}"),
        )

    def finish(self) -> dict[str, list[str]]:
        """Let the task end; wait for the client to exit; all its lines (the
        last one of a stream also if not ended)."""
        self.go.touch()
        try:
            self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(10)
        while self._take(0):
            pass
        for name, text in self.text.items():
            if text and not text.endswith("\n"):
                self.lines[name].append(text[text.rfind("\n") + 1 :])
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


TAG = r"\[(?P<host>[^\]:]+):(?P<pid>\d+)\] "
PREFIXED = "^" + TAG


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


def check_partial(c: Client) -> None:
    """A line a task has begun (``write`` and ``flush``, ``print(end="")``)
    reaches the client, tagged, while the task waits before ending it; its
    end continues it, tagged once."""
    out = c.expect_text("out", PREFIXED + r"partial-out\Z")
    err = c.expect_text("err", PREFIXED + r"partial-err\Z")
    assert not c.go.exists()  # the task is still waiting for it
    lines = c.finish()
    assert c.proc.returncode == 0, lines
    tag = f"[{out['host']}:{out['pid']}] "
    assert (err["host"], err["pid"]) == (out["host"], out["pid"])
    assert lines["out"] == [tag + "partial-out, ended"]
    assert lines["err"] == [tag + "partial-err, ended"]


def check_redraw(c: Client) -> None:
    """A line redrawn after ``\\r`` arrives as it is drawn, the tag after each ``\\r``."""
    first = c.expect_text("out", "^\r" + TAG + r"step 1\Z")
    assert not c.go.exists()
    lines = c.finish()
    assert c.proc.returncode == 0, lines
    tag = f"[{first['host']}:{first['pid']}] "
    assert lines["out"] == [f"\r{tag}step 1\r{tag}step 2\r{tag}step 3"]


def check_bar(c: Client) -> None:
    """A tqdm bar in a task moves in the client as the task runs."""
    half = c.expect_text("err", "\r" + TAG + r"bar:  50%\|")
    assert not c.go.exists()
    lines = c.finish()
    assert c.proc.returncode == 0, lines
    tag = f"[{half['host']}:{half['pid']}] "
    [drawn] = [line for line in lines["err"] if "bar: 100%|" in line]
    first, *redrawn = drawn.split("\r")
    assert first == "" and len(redrawn) >= 3
    assert all(part.startswith(tag + "bar: ") for part in redrawn if part), drawn


def check_long_line(c: Client) -> None:
    """A line longer than a read (and an output event) arrives in parts, as
    one line, tagged once."""
    lines = c.finish()
    assert c.proc.returncode == 0, lines
    assert len(lines["out"]) == 1, [line[:50] for line in lines["out"]]
    assert re.fullmatch(PREFIXED + "z{300000}", lines["out"][0])


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


def test_local_partial_line_arrives_before_its_end(client):
    check_partial(client("partial", num_workers=1))


def test_local_redrawn_line_arrives_as_drawn(client):
    check_redraw(client("redraw", num_workers=1))


def test_local_tqdm_bar_in_a_task_moves(client):
    check_bar(client("bar", num_workers=1))


def test_local_long_line_arrives_whole(client):
    check_long_line(client("long_line", num_workers=1))


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


SCRIPT_PRINTS_THEN_ITS_CALLER = """
import sys
from distex_zmq import Pool


def task(i):
    print(f"task {i}")
    return i


if __name__ == "__main__":
    with Pool(int(sys.argv[1])) as pool:
        for i in range(100):
            assert pool.run(task, i) == i
            print(f"client {i}", flush=True)
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_what_a_task_printed_shows_before_its_caller_has_the_result(tmp_path, workers):
    # a task's line went through the worker's pipe and a thread of the
    # pool, its result through the broker: the caller printed after the
    # result, and its line came first in most round trips (as a user
    # debugging with print sees it); ProcessPoolExecutor's forked workers
    # write to the client's stdout itself
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_PRINTS_THEN_ITS_CALLER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(script), str(workers)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = [f"client {i}" for i in range(100)]
    assert [line for line in lines if line.startswith("client")] == expected, lines
    tasks_lines = [line for line in lines if not line.startswith("client")]
    assert all(re.match(PREFIXED + r"task \d+$", line) for line in tasks_lines), lines
    late = [i for i in range(100) if lines.index(f"client {i}") < _line_of(lines, f"task {i}")]
    assert not late, (late, lines)


def _line_of(lines: list[str], text: str) -> int:
    return next(n for n, line in enumerate(lines) if line.endswith(f"] {text}"))


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


def test_lines_a_stream_cannot_take_are_escaped_or_said_lost(monkeypatch, make_pool):
    # a stdout whose encoding lacks a character (PYTHONIOENCODING=ascii, a C
    # locale) lost the whole line in silence, and so did a full disk, where
    # ProcessPoolExecutor's workers fail with the error
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", ascii_out)
    monkeypatch.setattr(sys, "stderr", err)
    pool = make_pool(1, output="raw")
    assert pool.run(print, "caf\u00e9 1") is None
    pool.shutdown()
    assert ascii_out.buffer.getvalue() == b"caf\\xe9 1\n"  # as Python's stderr escapes it
    full = open("/dev/full", "w")  # noqa: SIM115 - its close fails too
    try:
        monkeypatch.setattr(sys, "stdout", full)
        pool = make_pool(1, output="raw")
        for i in range(3):
            assert pool.run(print, "line", i) is None
        pool.shutdown()
    finally:
        with contextlib.suppress(OSError):
            full.close()
    # said once, on the other stream
    assert err.getvalue() == (
        "distex_zmq: the workers' output could not be written to this process's stdout "
        "(No space left on device); lines are lost while it fails\n"
    )
    # and a stream the client closed: lost without a word before
    closed = io.StringIO()
    closed.close()
    err.truncate(0)
    err.seek(0)
    monkeypatch.setattr(sys, "stdout", closed)
    pool = make_pool(1, output="raw")
    for i in range(3):
        assert pool.run(print, "line", i) is None
    pool.shutdown()
    assert err.getvalue() == (
        "distex_zmq: the workers' output could not be written to this process's stdout "
        "(it is closed); lines are lost while it fails\n"
    )


def written(mode: str, *writes: tuple[Any, ...], monkeypatch: Any) -> tuple[str, str]:
    """What ``WorkerOutput(mode)`` writes to stdout and stderr for ``writes``,
    each ``(pid, stream, lines, partial[, dropped])`` of host ``h``."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    output = WorkerOutput(mode)
    for pid, stream, lines, partial, *dropped in writes:
        output.write("h", pid, stream, lines, *dropped, partial=partial)
    asyncio.run(output.close())
    return out.getvalue(), err.getvalue()


def test_partial_lines_keep_their_tags_and_never_share_a_line(monkeypatch):
    """The tag comes at the start of each line and after each ``\\r`` that
    more text follows; the rest of a partial line continues it untagged,
    unless another worker's output came in between: then the other's line is
    ended there and the rest comes on a line of its own, tagged. Each of the
    client's streams is a line of its own."""
    out, err = written(
        "prefixed",
        (1, "out", ["whole"], False),
        (1, "out", ["abc"], True),
        (1, "out", ["def"], True),
        (1, "err", ["on stderr"], True),  # no matter to stdout
        (1, "out", ["ghi", "next"], False),
        (1, "err", [", ended"], False),
        (1, "out", ["a"], True),
        (2, "out", ["b1", "b2"], False),  # in the middle of 1's line
        (1, "out", [" rest"], False),
        (3, "out", ["\r 0%"], True),
        (3, "out", ["\r 50%"], True),
        (4, "out", ["other"], True),
        (3, "out", ["\r100%"], False),
        (4, "out", [""], False),  # its line was ended: nothing to end
        (5, "out", ["x\r"], True),
        (5, "out", ["y", ""], False),
        (6, "out", ["\ra\rb", "\r", ""], False),  # whole lines with a \r
        (7, "out", ["p"], True),
        (7, "out", ["q"], False, 2),  # lines dropped between
        monkeypatch=monkeypatch,
    )
    assert out.split("\n") == [
        "[h:1] whole",
        "[h:1] abcdefghi",
        "[h:1] next",
        "[h:1] a",
        "[h:2] b1",
        "[h:2] b2",
        "[h:1]  rest",
        "\r[h:3]  0%\r[h:3]  50%",
        "[h:4] other",
        "\r[h:3] 100%",
        "[h:5] x\r[h:5] y",
        "[h:5] ",
        "\r[h:6] a\r[h:6] b",
        "\r",
        "[h:6] ",
        "[h:7] p",
        "[h:7] [2 lines dropped: the worker wrote too fast]",
        "[h:7] q",
        "",
    ]
    assert err == "[h:1] on stderr, ended\n"
    raw = written(
        "raw",
        (1, "out", ["a"], True),
        (2, "out", ["b"], False),
        (1, "out", [" c", "\rd"], False),
        monkeypatch=monkeypatch,
    )
    assert raw == ("a\nb\n c\n\rd\n", "")


def test_a_partial_line_whose_rest_a_host_drops_is_ended(monkeypatch):
    """A host that drops the rest of a line it sent in part (the worker wrote
    too fast) says so at once, and the pool ends that line there: it does not
    stay open until the worker's next line gets through."""
    sent: list[control.Output] = []
    relay = OutputRelay(lambda event: sent.append(event) or True)
    relay.forward(b"w-1", 7, "err", ["\r 50%"], True)
    relay.forward(b"w-1", 7, "err", ["x" * (BURST + 1)], False)  # over its budget
    assert sent[-1] == control.Output(b"w-1", 7, "err", [], 1)
    relay.forward(b"w-1", 7, "err", ["y" * (BURST + 1)], False)  # no line open now
    assert len(sent) == 2
    writes = [(e.pid, e.stream, e.lines, e.partial, e.dropped) for e in sent]
    assert written("prefixed", *writes, monkeypatch=monkeypatch) == (
        "",
        "\r[h:7]  50%\n[h:7] [1 lines dropped: the worker wrote too fast]\n",
    )


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
    with pytest.raises(ValueError, match="log_level"):
        Pool(1, log_level="info")  # as Logger.setLevel, which takes the name only


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
    # without the fields a worker of an earlier version does not send
    assert frames.read_log(json.dumps(good).encode()) == {
        **good,
        "threadName": "MainThread",
        "stack_info": None,
        "extra": {},
    }
    full = {
        **good,
        "threadName": "helper",
        "stack_info": "Stack (most recent call last):",
        "extra": {"user_id": 42},
    }
    assert frames.read_log(json.dumps(full).encode()) == full
    for bad in (
        b"[]",
        b"{",
        json.dumps({**good, "lineno": "3"}).encode(),
        json.dumps({**good, "threadName": 3}).encode(),
        json.dumps({**good, "extra": ["user_id"]}).encode(),
    ):
        with pytest.raises(ProtocolError, match="malformed log record"):
            frames.read_log(bad)
    caplog.set_level(logging.INFO)
    for name in ("user.x", "distex_zmq.broker"):
        emit_log("h", 7, "w-1", json.dumps({**good, "name": name}).encode())
    [record] = [r for r in caplog.records if r.name != "distex_zmq.output"]
    assert (record.name, record.host, record.pid, record.worker) == ("user.x", "h", 7, "w-1")
    assert record.getMessage() == "m" and record.filename == "b.py"
    # extra= sets no attribute that the record has, nor the pool's, nor a method
    caplog.clear()
    extra = {"user_id": 42, "host": "x", "lineno": 9, "getMessage": 1, "_p": 1, "a b": 1}
    emit_log("h", 7, "w-1", json.dumps({**good, "extra": extra}).encode())
    [record] = [r for r in caplog.records if r.name != "distex_zmq.output"]
    assert (record.user_id, record.host, record.lineno, record.getMessage()) == (42, "h", 3, "m")
    assert not hasattr(record, "_p") and not hasattr(record, "a b")


@pytest.mark.timeout(60)
def test_a_log_records_extra_reaches_the_clients_formatters_and_filters(make_pool, caplog):
    # structured logging: extra={"user_id": 42} was dropped on the way, so
    # that a client's filter on it never matched and a format with
    # %(user_id)s failed on every record of a task
    caplog.set_level(logging.WARNING, logger="user.extra")
    pool = make_pool(1)
    assert pool.run(tasks.log_with_extra, "user.extra", 42)
    [record] = [r for r in caplog.records if r.name == "user.extra"]
    assert record.user_id == 42 and record.tags == ["a", "b"]
    assert record.payload.startswith("<object object at")  # not JSON: its repr
    line = logging.Formatter("%(user_id)s %(tags)s %(message)s").format(record)
    assert line == "42 ['a', 'b'] for user 42"


@pytest.mark.timeout(60)
def test_a_log_record_keeps_its_thread_and_stack(make_pool, caplog):
    # they were the client's pool loop thread's name and None
    caplog.set_level(logging.WARNING, logger="user.stack")
    pool = make_pool(1)
    thread = pool.run(tasks.log_with_stack, "user.stack")

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "user.stack"]

    assert wait_until(lambda: len(records()) == 2, timeout=20)
    main, helper = sorted(records(), key=lambda r: r.getMessage() != "from the task")
    assert main.getMessage() == "from the task" and main.threadName == thread
    assert main.stack_info is not None and main.stack_info.startswith(
        "Stack (most recent call last)"
    )
    assert "in log_with_stack" in main.stack_info, main.stack_info
    assert "in log_with_stack" in logging.Formatter().format(main)
    assert (helper.getMessage(), helper.threadName, helper.stack_info) == (
        "from a thread",
        "helper",
        None,
    )


def messages(caplog: Any, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.timeout(60)
def test_log_records_follow_the_clients_level(make_pool, caplog):
    """With the default ``log_level``, the workers forward at the client's
    root level when the pool starts (``basicConfig(level=INFO)``: INFO
    records too), and the client's own logger levels still filter them: the
    workers forwarded only WARNING and above, and a record reached the
    handlers of a logger whose level was above its own."""
    caplog.set_level(logging.INFO)
    quiet = logging.getLogger("user.follow.quiet")
    quiet.setLevel(logging.WARNING)
    try:
        pool = make_pool(1)
        assert pool.run(tasks.log_records, "user.follow", 2, logging.INFO) == 2
        assert pool.run(tasks.log_records, "user.follow.quiet", 1, logging.INFO) == 1
        pool.run(tasks.log_records, "user.follow.quiet", 1, logging.WARNING)
        pool.shutdown()
    finally:
        quiet.setLevel(logging.NOTSET)
    assert messages(caplog, "user.follow") == ["record 0", "record 1"]
    assert [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "user.follow.quiet"
    ] == [("WARNING", "record 0")]


class Blocking(logging.Handler):
    """A handler that handles nothing until ``go`` is set, or takes ``lock``
    for each record, as a slow or locking handler of a user's would."""

    def __init__(self, lock: Any = None) -> None:
        super().__init__()
        self.go = threading.Event()
        self.caller_lock = lock
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.go.wait()
        if self.caller_lock is not None:
            with self.caller_lock:
                pass
        self.messages.append(record.getMessage())


@pytest.fixture
def blocking() -> Iterator[Any]:
    """``blocking(name, lock=None)``: a ``Blocking`` handler on logger
    ``name``, removed (and let go) after the test."""
    added: list[tuple[logging.Logger, Blocking]] = []

    def add(name: str, lock: Any = None) -> Blocking:
        handler = Blocking(lock)
        logging.getLogger(name).addHandler(handler)
        added.append((logging.getLogger(name), handler))
        return handler

    yield add
    for logger, handler in added:
        handler.go.set()
        logger.removeHandler(handler)


@pytest.mark.timeout(90)
def test_a_slow_log_handler_does_not_hold_up_the_tasks(make_pool, blocking):
    """The records are handled off the pool loop: tasks go on while a
    handler of the client blocks; once it goes on, each record comes, in the
    order the task logged them, and all have before ``shutdown`` returns.
    The handler ran on the pool loop, and no task finished while it blocked.
    A task's result waits for its records only while the handler goes on
    (``HOLD_LIMIT``), not for ever."""
    handler = blocking("user.slow")
    pool = make_pool(2)
    assert pool.submit(tasks.log_records, "user.slow", 5).result(timeout=30) == 5
    assert handler.messages == []
    futures = [pool.submit(tasks.log_records, "user.slow", 1) for _ in range(3)]
    results = pool.map(abs, range(-300, 0), timeout=30)
    assert sorted(results) == list(range(1, 301))
    assert [f.result(timeout=30) for f in futures] == [1, 1, 1]
    handler.go.set()
    pool.shutdown()
    assert handler.messages == [f"record {i}" for i in range(5)] + ["record 0"] * 3
    assert not [t for t in threading.enumerate() if t.name == "distex_zmq output"]


@pytest.mark.timeout(90)
def test_a_log_handler_may_take_a_lock_the_caller_holds(make_pool, blocking):
    """A handler that takes a lock which the caller holds while it waits for
    a result does not deadlock the pool: the pool loop waited for the lock,
    and the caller for the result, for ever."""
    lock = threading.Lock()
    handler = blocking("user.locked", lock)
    handler.go.set()
    pool = make_pool(1)
    with lock:
        assert pool.submit(tasks.log_records, "user.locked", 1).result(timeout=30) == 1
        assert pool.submit(abs, -3).result(timeout=30) == 3
    pool.shutdown()
    assert handler.messages == ["record 0"]


@pytest.fixture
def slow_handler() -> Iterator[Any]:
    """``slow_handler(name)``: a handler on logger ``name`` that takes 0.1 s
    per record; returns the list of the messages it handled, in order. The
    handler is removed after the test."""
    added: list[tuple[logging.Logger, logging.Handler]] = []

    def add(name: str) -> list[str]:
        handled: list[str] = []

        class Slow(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                time.sleep(0.1)
                handled.append(record.getMessage())

        logger = logging.getLogger(name)
        handler = Slow()
        logger.addHandler(handler)
        added.append((logger, handler))
        return handled

    yield add
    for logger, handler in added:
        logger.removeHandler(handler)


@pytest.mark.timeout(90)
def test_shutdown_returns_once_the_records_are_handled(make_pool, slow_handler):
    """Records still queued when ``shutdown`` is called are handled before it
    returns, however long the handler takes with them (as long as it goes
    on), not only for ``FLUSH_TIMEOUT`` seconds."""
    handled = slow_handler("user.drain")
    pool = make_pool(1)
    assert pool.run(tasks.log_records, "user.drain", 40) == 40
    pool.shutdown()
    assert handled == [f"record {i}" for i in range(40)]


@pytest.mark.timeout(90)
def test_a_result_comes_after_the_records_its_task_logged(make_pool, slow_handler):
    """When a task's result reaches the caller, the records the task logged
    before it returned have been handled, however slow the handler, as for
    a function called in the caller's own process (a ``caplog`` test sees
    them): from ``run``, ``submit``, ``run_async`` and ``map``. The handler
    takes longer than the task's round trip: a result that did not wait
    would come while it sleeps."""
    handled = slow_handler("user.before")
    pool = make_pool(2)
    assert pool.run(tasks.log_records, "user.before", 2) == 2
    assert handled == ["record 0", "record 1"]
    assert pool.submit(tasks.log_records, "user.before", 3).result(timeout=30) == 3
    assert handled[2:] == ["record 0", "record 1", "record 2"]
    assert asyncio.run(pool.run_async(tasks.log_records, "user.before", 1)) == 1
    assert handled[5:] == ["record 0"]
    del handled[:]
    logged = 0
    for count in pool.map(tasks.log_records, ["user.before"] * 4, [1, 2, 1, 2]):
        logged += count
        assert len(handled) >= logged
    assert sorted(handled) == ["record 0"] * 4 + ["record 1"] * 2


def test_log_records_at_the_level(client):
    check_logs(client("logs", num_workers=1))


@pytest.mark.parametrize("level", [20, "INFO"])  # a level, or its name as setLevel takes it
def test_log_records_at_a_lower_level(client, level):
    check_logs(client("logs", num_workers=1, log_level=level), level_shown=True)


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


def test_spawner_partial_lines_arrive_before_their_end(client, spawner):
    hosts = [f"127.0.0.1:{spawner.port}/1"]
    check_partial(client("partial", num_workers=None, hosts=hosts, secret=None))
    check_redraw(client("redraw", num_workers=None, hosts=hosts, secret=None))
    check_bar(client("bar", num_workers=None, hosts=hosts, secret=None))
    check_long_line(client("long_line", num_workers=None, hosts=hosts, secret=None))


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
    check_partial(client("partial", **kwargs))
