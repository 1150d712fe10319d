"""The spawner run as a service on this host, on loopback: under a shell loop
that restarts it, stopped by signals, its log and its ``status``, and what
an operator sees of its pools. No cluster needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LoopbackSpawner, free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def test_ctrl_c_ends_a_shell_loop_that_restarts_the_spawner(tmp_path: Path) -> None:
    # Ctrl-C reaches the loop's shell and the spawner; a shell goes on
    # with its loop when its child exited as after a clean stop, so the
    # spawner must end as a program Ctrl-C ended does: killed by SIGINT
    log = tmp_path / "spawner.log"
    spawner = f"{sys.executable} -m distex_zmq.spawner --port {free_port()}"
    loop = f"while true; do {spawner}; echo restarted >&2; done"
    env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
    with open(log, "wb") as out:
        shell = subprocess.Popen(["bash", "-c", loop], stderr=out, env=env, start_new_session=True)
    try:
        assert wait_until(lambda: b" spawner (pid " in log.read_bytes(), timeout=30)
        os.killpg(shell.pid, signal.SIGINT)  # as the terminal does to its foreground
        try:
            shell.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the loop went on after Ctrl-C:\n{log.read_text()}")
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
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
