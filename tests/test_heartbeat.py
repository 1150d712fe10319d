"""Heartbeats of remote launchers (``launch/remote.py``): a host that falls
silent is lost ``heartbeat_timeout`` after the last message it sent, on a
real event loop (the cluster tests cut real links; here the moment of the
last message is chosen, which a cut link cannot do)."""

from __future__ import annotations

import asyncio
import time

import pytest

from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.remote import RemoteLauncher
from distex_zmq.wire import control, frames

pytestmark = pytest.mark.timeout(30)


class SilentHost(RemoteLauncher):
    """A host that says hello, then only what the test makes it say."""

    where = "silent host"

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        super().__init__(loop, HostSpec("silent/1"), timeout, self.exited, self.on_lost)
        self.sent: list[control.Command] = []
        self.reason = ""
        self.lost_at: asyncio.Future[float] = loop.create_future()

    def _send(self, command: control.Command) -> None:
        self.sent.append(command)

    async def _close(self) -> None:
        pass

    def exited(self, identity: bytes, pid: int, rc: int, tail: str) -> None:
        pass

    def on_lost(self, launcher: object, reason: str, workers: set[bytes]) -> None:
        self.reason = reason
        self.lost_at.set_result(asyncio.get_running_loop().time())


def test_silent_host_is_lost_heartbeat_timeout_after_its_last_message():
    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        host = SilentHost(loop, timeout=2.0)
        host._start_heartbeats()
        # a message between two pings (every 0.5 s): then silence
        await asyncio.sleep(0.75)
        heard = loop.time()
        host._on_message(control.Pong())
        lost = await asyncio.wait_for(host.lost_at, 10)
        pings = sum(isinstance(c, control.Ping) for c in host.sent)
        return lost - heard, pings

    loop = asyncio.new_event_loop()  # not asyncio.run: it unsets the current loop
    try:
        delay, pings = loop.run_until_complete(main())
    finally:
        loop.close()
    # due at 2.0 s; a check only at each ping would notice at 2.25 s
    assert 2.0 <= delay < 2.15
    assert pings >= 4  # pings still go every quarter of the timeout


def test_a_host_that_refuses_a_request_is_lost():
    # a spawner that gave up on the pool after a short outage (silent for
    # half its heartbeat_timeout) stopped its workers and answers the next
    # ping with a refusal: the host is lost (and then reconnected), not
    # left looking up with workers it no longer runs
    async def main() -> str:
        loop = asyncio.get_running_loop()
        host = SilentHost(loop, timeout=30.0)
        host._on_message(control.Opened("h", "0", frames.VERSION, "3", 1))
        host._start_heartbeats()
        host._on_message(control.Refused("'ping' before 'open'"))
        await asyncio.wait_for(host.lost_at, 5)
        return host.reason

    loop = asyncio.new_event_loop()
    try:
        reason = loop.run_until_complete(main())
    finally:
        loop.close()
    assert "refused a request ('ping' before 'open')" in reason


class AnsweringHost(SilentHost):
    """A host that answers each ping at once, as a live one does."""

    def _send(self, command: control.Command) -> None:
        super()._send(command)
        if isinstance(command, control.Ping):
            self._loop.call_soon(self._on_message, control.Pong())


def test_a_client_that_stood_still_does_not_lose_a_host_that_answers():
    # Ctrl-Z and fg, a debugger, a suspended VM: the pool's loop stands
    # still for longer than heartbeat_timeout while the host is fine; the
    # pings it did not send meanwhile were not the host's to answer
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        host = AnsweringHost(loop, timeout=1.0)
        host._start_heartbeats()
        await asyncio.sleep(0.6)
        time.sleep(3.0)  # the loop stands still, as a stopped process does
        await asyncio.sleep(2.0)  # heartbeats go on: a dead host is lost in this time
        return host.lost

    loop = asyncio.new_event_loop()
    try:
        lost = loop.run_until_complete(main())
    finally:
        loop.close()
    assert not lost


def test_a_host_silent_after_the_client_stood_still_is_lost():
    # and a host that stays silent once the client goes on is still lost
    async def main() -> str:
        loop = asyncio.get_running_loop()
        host = SilentHost(loop, timeout=1.0)
        host._start_heartbeats()
        await asyncio.sleep(0.3)
        time.sleep(3.0)
        await asyncio.wait_for(host.lost_at, 10)
        return host.reason

    loop = asyncio.new_event_loop()
    try:
        reason = loop.run_until_complete(main())
    finally:
        loop.close()
    assert "no heartbeat" in reason
