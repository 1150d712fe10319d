"""The spawner run as a service on this host, on loopback: under a shell loop
that restarts it, stopped by signals, its log and its ``status``, and what
an operator sees of its pools. No cluster needed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from distex_zmq import Pool, __version__
from distex_zmq.errors import HostConnectionError
from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT
from distex_zmq.security import explain_handshake_failure
from distex_zmq.spawner.status import split_address
from distex_zmq.wire import control
from tests.helpers import (
    WITH_DEFAULT_SIGNALS,
    LoopbackSpawner,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

SPAWNER = f"{sys.executable} -m distex_zmq.spawner"


def start_in_bash(script: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``bash -c script`` (``{port}`` in it a free port), in a session of its
    own with the signals a terminal leaves (``WITH_DEFAULT_SIGNALS``), its
    stderr in ``log``, once the spawner it starts listens; and the port."""
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}

    def listening() -> bool:
        return b" spawner (pid " in log.read_bytes()

    for _ in range(5):  # another process may take the port between probe and bind
        port = free_port()
        with open(log, "wb") as out:
            shell = subprocess.Popen(
                [*WITH_DEFAULT_SIGNALS, "bash", "-c", script.format(port=port)],
                stderr=out,
                env=env,
                start_new_session=True,
            )
        wait_until(lambda shell=shell: shell.poll() is not None or listening(), timeout=30)
        if listening():
            return shell, port
        stop_group(shell)
    raise RuntimeError(f"no spawner started: {log.read_text()}")


def stop_group(shell: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of ``shell``'s session."""
    if shell.poll() is None:
        os.killpg(shell.pid, signal.SIGKILL)
    shell.wait()


def test_ctrl_c_ends_a_shell_loop_that_restarts_the_spawner(tmp_path: Path) -> None:
    # Ctrl-C reaches the loop's shell and the spawner; a shell goes on
    # with its loop when its child exited as after a clean stop, so the
    # spawner must end as a program Ctrl-C ended does: killed by SIGINT
    log = tmp_path / "spawner.log"
    # a port taken meanwhile (exit status 1) ends the loop rather than repeat
    loop = "while true; do %s --port {port}; [ $? = 1 ] && exit 1; echo restarted >&2; done"
    shell, _ = start_in_bash(loop % SPAWNER, log)
    try:
        os.killpg(shell.pid, signal.SIGINT)  # as the terminal does to its foreground
        try:
            shell.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the loop went on after Ctrl-C:\n{log.read_text()}")
    finally:
        stop_group(shell)
    text = log.read_text()
    assert "stopped: got SIGINT" in text and "restarted" not in text, text


@pytest.mark.parametrize(
    ("sig", "returncode"), [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 0)]
)
def test_the_exit_status_after_a_stop_by_signal(
    tmp_path: Path, sig: signal.Signals, returncode: int
) -> None:
    # SIGTERM (systemd, docker stop) is a clean stop, status 0; Ctrl-C
    # ends it as it ends a Python program
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        spawner.proc.send_signal(sig)
        spawner.proc.wait(timeout=30)
    finally:
        spawner.stop()
    assert spawner.proc.returncode == returncode, spawner.read().decode()
    assert f"stopped: got {sig.name}" in spawner.read().decode()


def test_verbose_logs_every_request_with_the_pool_and_its_address(tmp_path: Path) -> None:
    # --verbose says "log every request": the opens, spawns, stops and
    # status queries, each with the pool's short id and address
    spawner = LoopbackSpawner(tmp_path / "spawner.log", "--verbose")
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None) as pool:
            assert pool.run(abs, -1) == 1
        status = _status(spawner.port)
        assert status.returncode == 0, status.stderr
    finally:
        spawner.stop()
    log = spawner.read().decode()
    pool_id = re.search(r"INFO pool (\w{12}) opened from 127\.0\.0\.1", log)
    assert pool_id, log
    request = rf"DEBUG request from {pool_id[1]} \(127\.0\.0\.1\): "
    for what in (r"open: up to 1 workers, broker tcp://", r"spawn worker \w+", r"stop: grace"):
        assert re.search(request + what, log), log
    assert re.search(r"DEBUG request from \w{12} \(127\.0\.0\.1\): status", log), log
    # an open's keys stay out of the log (the only word of a secret: that
    # the spawner, as root, has none)
    said = [line for line in log.splitlines() if "running as root without a secret" not in line]
    assert not [line for line in said if "secret" in line], log


def _status(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distex_zmq.spawner", "status", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"},
    )


def test_status_names_the_address_of_each_pool_and_when_it_was_last_heard(
    tmp_path: Path,
) -> None:
    # which client a pool belongs to, and whether it still speaks (a
    # killed client's pool is silent until the spawner stops its workers)
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None) as pool:
            pool.run(abs, -1)
            status = _status(spawner.port)
            as_json = _status(spawner.port, "--json")
    finally:
        spawner.stop()
    assert status.returncode == 0 == as_json.returncode, status.stderr + as_json.stderr
    line = r"pool [0-9a-f]{12}: 1 of 1 workers, from 127\.0\.0\.1, last heard [\d.]+ s ago"
    assert re.search(line, status.stdout), status.stdout
    (listed,) = json.loads(as_json.stdout)["pools"]
    assert listed["address"] == "127.0.0.1" and listed["silent"] >= 0, listed


@pytest.mark.parametrize("where", ["port in use", "no address of this host"])
def test_a_spawner_that_cannot_listen_says_why_and_what_to_do(tmp_path: Path, where: str) -> None:
    # a supervisor that restarts it shows this line again and again: it
    # must say what to change
    first = LoopbackSpawner(tmp_path / "first.log")
    try:
        args = ["--port", str(first.port)]
        if where == "no address of this host":
            args = ["--host", "192.0.2.1", "--insecure", "--port", str(free_port())]  # TEST-NET-1
        env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
        second = subprocess.run(
            [sys.executable, "-m", "distex_zmq.spawner", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
    finally:
        first.stop()
    assert second.returncode == 1, second.stderr
    if where == "port in use":
        assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in second.stderr
        assert f"another process listens on port {first.port}" in second.stderr
        assert f"spawner status 127.0.0.1:{first.port}` asks it" in second.stderr
        assert "choose another --port" in second.stderr
    else:
        assert "192.0.2.1 is no address of this host" in second.stderr, second.stderr


def test_a_stop_by_signal_logs_which_pools_lose_their_workers_before_they_end(
    tmp_path: Path,
) -> None:
    # the lines "worker pid N ended: killed by SIGTERM" follow the reason,
    # not come before it
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    pool = Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None, heartbeat_timeout=2.0)
    try:
        pool.run(abs, -1)
        spawner.proc.send_signal(signal.SIGTERM)
        spawner.proc.wait(timeout=30)
    finally:
        pool.shutdown()
        spawner.stop()
    log = spawner.read().decode()
    pool_id = re.search(r"INFO (pool \w{12}) opened from 127\.0\.0\.1", log)
    assert pool_id, log
    stopping = log.find(f"got SIGTERM: stopping {pool_id[1]} (from 127.0.0.1) and its 1 workers")
    ended = log.find(f"{pool_id[1]}: worker pid ")
    ended = log.find(" ended after ", ended)
    assert 0 <= stopping < ended, log
    assert spawner.proc.returncode == 0, log


@pytest.mark.parametrize("source", ["file", "environment"])
def test_a_short_secret_names_where_it_came_from(tmp_path: Path, source: str) -> None:
    # a spawner under a supervisor, its secret in a file or in the unit's
    # environment: the error says which one to fix
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
    secret_args: list[str] = []
    if source == "file":
        secret = tmp_path / "secret"
        secret.write_text("short\n")
        secret.chmod(0o600)
        secret_args = ["--secret-file", str(secret)]
        where = f"in the secret file {secret}"
    else:
        env["DISTEX_ZMQ_SECRET"] = "short"
        where = "in DISTEX_ZMQ_SECRET"
    spawner = [sys.executable, "-m", "distex_zmq.spawner"]
    serve = [*spawner, "--port", str(free_port()), *secret_args]
    status = [*spawner, "status", "127.0.0.1:1", *secret_args]
    for command in (serve, status):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 1, result.stderr
        assert f"the shared secret {where} is 5 bytes; use at least 16" in result.stderr


def test_a_pool_with_a_short_secret_names_where_it_came_from(monkeypatch) -> None:
    monkeypatch.setenv("DISTEX_ZMQ_SECRET", "short")
    with pytest.raises(ValueError, match="the shared secret in DISTEX_ZMQ_SECRET is 5 bytes"):
        Pool(None, ["127.0.0.1:1/1"])
    with pytest.raises(ValueError, match="the shared secret given as secret= is 6 bytes"):
        Pool(None, ["127.0.0.1:1/1"], secret="short2")


@pytest.mark.parametrize(("sig", "how"), [("HUP", "nohup"), ("INT", "a background job")])
def test_a_signal_ignored_at_start_stays_ignored(tmp_path: Path, sig: str, how: str) -> None:
    # `nohup python -m distex_zmq.spawner &` must outlive the terminal's
    # SIGHUP, and a shell script's background spawner the script's Ctrl-C
    log = tmp_path / "spawner.log"
    # what nohup and a non-interactive shell do: the signal ignored, then exec
    proc, port = start_in_bash(f"trap '' {sig}; exec {SPAWNER} --port {{port}}", log)
    try:
        proc.send_signal(getattr(signal, f"SIG{sig}"))
        status = _status(port)  # a spawner that the signal stopped does not answer
        assert status.returncode == 0, (how, status.stderr, log.read_text())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
    text = log.read_text()
    assert "stopped: got SIGTERM" in text and f"SIG{sig}" not in text, (how, text)
    assert proc.returncode == 0, text


def test_a_pool_learns_that_its_spawner_was_stopped_and_why(tmp_path: Path) -> None:
    # not "its connection closed (the spawner stopped or died)": an
    # operator's stop is no crash; the pool reconnects either way
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    pool = Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None, heartbeat_timeout=2.0)
    try:
        pool.run(abs, -1)
        spawner.proc.send_signal(signal.SIGTERM)
        spawner.proc.wait(timeout=30)

        def last_error() -> str:
            (host,) = [h for h in pool.status().hosts if h.kind != "local"]
            return host.last_error or ""

        assert wait_until(lambda: last_error() != "", timeout=30)
        assert "the spawner on " in last_error() and "is stopping: got SIGTERM" in last_error()
    finally:
        pool.shutdown()
        spawner.stop()
    assert spawner.proc.returncode == 0


@pytest.mark.timeout(300)  # the venv of the other Python is made first
def test_a_spawner_of_another_python_version_is_refused_with_both_versions(
    tmp_path: Path, other_python_venv: str
) -> None:
    # the functions of a script travel as bytecode: another minor version
    # fails them with SystemError or TypeError, or crashes on them, while
    # module functions work (abs runs there); so the host is refused at once
    theirs = subprocess.check_output(
        [other_python_venv, "-c", "import sys; print(sys.version.split()[0])"], text=True
    ).strip()
    spawner = LoopbackSpawner(tmp_path / "spawner.log", python=other_python_venv)
    pool = Pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None)
    try:
        with pytest.raises(HostConnectionError) as raised:
            pool.run(abs, -1)
    finally:
        pool.shutdown()
        spawner.stop()
    ours = sys.version.split()[0]
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert str(raised.value).startswith(
        f"spawner 127.0.0.1:{spawner.port} runs Python {theirs}, this client Python {ours}: "
    )
    assert f"run the spawner there with Python {minor}" in str(raised.value)
    assert b"worker pid" not in spawner.read()  # no worker started there


def test_a_spawner_of_another_control_protocol_names_both_versions() -> None:
    # what a spawner of another distex_zmq answers an open with: its own
    # control protocol version in the head, its distex_zmq version in the body
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    head = control.MAGIC + (control.VERSION + 1).to_bytes(2, "big")
    opened = json.dumps({"ev": "opened", "host": "old", "version": "9.9.9"}).encode()

    def answer() -> None:
        if router.poll(30_000):
            identity, *_ = router.recv_multipart()
            router.send_multipart([identity, head, opened])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    pool = Pool(None, [f"127.0.0.1:{port}/1"], secret=None, connect_timeout=20)
    try:
        with pytest.raises(HostConnectionError) as raised:
            pool.run(abs, -1)
    finally:
        pool.shutdown()
        thread.join(30)
        router.close()
    assert str(raised.value) == (
        f"spawner 127.0.0.1:{port} runs distex_zmq 9.9.9 (control protocol version "
        f"{control.VERSION + 1}), this client distex_zmq {__version__} (control protocol "
        f"version {control.VERSION}): install the client's version there (pip install "
        f"distex_zmq=={__version__}) and restart the spawner there"
    )


def test_status_takes_a_host_and_port_not_a_pools_host_specification():
    assert split_address("mini") == ("mini", DEFAULT_SPAWNER_PORT)
    assert split_address("mini:9000") == ("mini", 9000)
    # it said "cannot resolve 'mini:9000/2'"
    with pytest.raises(ValueError, match=r"status takes HOST\[:PORT\], 'mini:9000'"):
        split_address("mini:9000/2")


def test_a_handshake_refused_hints_at_ssh_hosts_to_a_pool_only():
    # a pool's host may have been meant as an SSH host; the status command's may not
    failure = ("the spawner at h:1", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0, False, "a secret")
    assert "is the port right? an SSH host is written ssh://host/N" in explain_handshake_failure(
        *failure
    )
    told = explain_handshake_failure(*failure, for_pool=False)
    assert "is the port right?)" in told and "ssh://" not in told
