"""Sending and receiving multipart messages with less overhead than pyzmq's helpers,
reading a socket on an event loop (``EdgeReader``), and polling for a
message that is about to come (``LonePoll``).

``Socket.recv_multipart`` asks the socket for RCVMORE after each frame and
``send_multipart`` goes through several layers per frame: together some ten
microseconds per message, paid on the hot path of broker and workers alike.
These do the same with one call per frame; small frames are copied (cheaper
than tracking them), large ones are sent without a copy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _BackendSocket

SNDMORE = int(zmq.SNDMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
#: Frames at least this large are sent without a copy.
ZERO_COPY_MIN = 64 * 1024
#: The backend's ``send``, which ``zmq.Socket.send`` calls after a layer of
#: Python of its own (routing ids and groups of draft sockets) that no socket
#: here needs.
_send = _BackendSocket.send


def keep_alive(sock: zmq.Socket[Any], timeout: float) -> None:
    """Keep the TCP connections that ``sock`` makes from now on alive, and
    close one that is dead within about ``timeout`` seconds.

    A NAT or a firewall that forgets an idle connection, or a path that
    drops its packets, sends no reset: a side that only receives would
    wait for ever, and a message sent into it would be retransmitted for
    some fifteen minutes before TCP gives up. ZMTP pings every quarter of
    ``timeout`` keep an idle connection carrying traffic, both ways, as a
    NAT needs to keep its mapping; data that stays unacknowledged for
    ``timeout`` (a ping or a message into a dead path) has TCP close the
    connection (``TCP_MAXRT``: Linux's ``TCP_USER_TIMEOUT``), which both
    ends then see as a drop. The pings have no timeout of their own
    (``HEARTBEAT_TIMEOUT`` 0): ZeroMQ counts a ping as answered only once
    a whole frame has come in, so a frame that takes longer than the
    timeout to arrive (a large argument or result on a slow link) would
    cut a healthy connection; TCP's acknowledgements keep coming while it
    does.
    """
    ms = max(int(timeout * 1000), 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(ms // 4, 1))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 0)
    sock.setsockopt(zmq.TCP_MAXRT, ms)


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a whole message waits (and the edge-triggered FD is reset)."""
    return bool(int(sock.getsockopt(EVENTS)) & POLLIN)


def poll(sock: zmq.Socket[Any], seconds: float, stop: Callable[[], bool] | None = None) -> bool:
    """Whether a message comes within ``seconds``, looked for without
    sleeping (``stop``: end early when it returns true).

    Cheaper than sleeping when one comes soon, as waking a sleeping thread
    costs tens of microseconds. Between looks the thread yields its core
    (and the GIL): the ZeroMQ I/O threads that carry the message, and on a
    machine of few cores the peer that sends it, must run meanwhile, and
    would otherwise wait for the poll to end. A look that finds nothing
    resets the edge of the socket's FD, as ``readable`` does.
    """
    deadline = time.perf_counter() + seconds
    while not readable(sock):
        if time.perf_counter() > deadline or (stop is not None and stop()):
            return False
        _yield_cpu()
    return True


class LonePoll:
    """``poll`` for the message that follows a lone one (the pool's only
    task, or its result), while such polls pay off.

    A poll that comes up empty costs its whole length in CPU, and where
    every core is busy it costs more: a thread that spins loses the
    precedence the scheduler gives a thread it wakes, and competes with the
    threads that carry the message (``benchmarks/RESULTS.md`` has the
    numbers). So after a poll that found nothing, the next polls are
    skipped, twice as many after each further miss, up to ``MAX_SKIPPED``:
    tasks longer than a poll, a caller that does something else between
    tasks, or a machine without an idle core soon stop the polling, and a
    poll that finds its message starts it again.
    """

    #: The most lone messages in a row that are not polled for after misses.
    MAX_SKIPPED = 64

    __slots__ = ("seconds", "_skip", "_backoff")

    def __init__(self, seconds: float):
        self.seconds = seconds
        #: polls still to skip, and how many the next miss skips
        self._skip = 0
        self._backoff = 1

    def __call__(self, sock: zmq.Socket[Any], stop: Callable[[], bool] | None = None) -> bool:
        """Whether a message waits, polled for up to ``seconds`` (False at
        once when this poll is skipped)."""
        if self._skip:
            self._skip -= 1
            return False
        if poll(sock, self.seconds, stop):
            self._backoff = 1
            return True
        if stop is None or not stop():
            self._skip = self._backoff
            self._backoff = min(2 * self._backoff, self.MAX_SKIPPED)
        return False


#: ``os.sched_yield`` where there is one (not on Windows, where sleeping 0
#: seconds yields)
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[Any]:
    """Receive the next message, as zmq Frames; call only when ``readable``
    (or with ``NOBLOCK``, which raises ``zmq.Again`` when none waits)."""
    frame = sock.recv(flags, False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(0, False)
        frames.append(frame)
    return frames


def recv_routed(sock: zmq.Socket[Any], flags: int = 0) -> list[Any]:
    """``recv_frames`` for a ROUTER socket: the first frame, the peer's
    identity, as bytes (a ROUTER always puts another frame after it): a copy
    of a few bytes is cheaper than a Frame and its ``.bytes``."""
    frames: list[Any] = [sock.recv(flags, True)]
    frame = sock.recv(0, False)
    frames.append(frame)
    while frame.more:
        frame = sock.recv(0, False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], track: bool = False) -> list[Any]:
    """Send a message: the frames in order, large ones without a copy.

    ZeroMQ reads a frame sent without a copy later, from its own thread.
    ``track``: return the ``MessageTracker`` of each such frame, done once
    ZeroMQ has let go of its memory (else an empty list)."""
    last = len(frames) - 1
    trackers = []
    for i, frame in enumerate(frames):
        flags = SNDMORE if i < last else 0
        if len(frame) >= ZERO_COPY_MIN:
            if track:
                trackers.append(_send(sock, frame, flags, False, True))
            else:
                _send(sock, frame, flags, False)
        else:
            _send(sock, frame, flags)
    return trackers


def send_routed(sock: zmq.Socket[Any], identity: bytes, frames: Sequence[Any]) -> None:
    """``send_frames`` on a ROUTER socket: to the peer ``identity``."""
    _send(sock, identity, SNDMORE)
    send_frames(sock, frames)


class EdgeReader:
    """Reads a socket on an event loop, for every socket of the package.

    A ZeroMQ socket's FD is edge-triggered: it signals once when messages
    arrive, and a send can consume that edge. So every message that waits
    is read at each signal (and once at the start, as the FD signals only
    after the socket was found empty), and ``poke`` looks again after a send.
    ``handle(frames)`` gets each message, as ``recv(sock, flags)`` receives
    it; at most ``max_reads`` are read before other callbacks get a turn,
    then reading goes on at the next iteration of the loop. When the socket
    runs empty, ``wait_more(sock)`` (if given) says whether a message waits
    now, which it may poll for: the loop then reads on without sleeping.
    """

    __slots__ = (
        "_loop",
        "_sock",
        "_fd",
        "_handle",
        "_recv",
        "_max_reads",
        "_closed",
        "_reading",
        "_wait_more",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[Any],
        handle: Callable[[list[Any]], None],
        max_reads: int = 256,
        recv: Callable[[zmq.Socket[Any], int], list[Any]] = recv_frames,
        wait_more: Callable[[zmq.Socket[Any]], bool] | None = None,
    ):
        self._wait_more = wait_more
        self._loop = loop
        self._sock = sock
        self._handle = handle
        self._recv = recv
        self._max_reads = max_reads
        self._closed = False
        self._reading = False
        self._fd = int(sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self.read)
        # the FD signals only after the socket was once found empty
        loop.call_soon(self.read)

    def read(self) -> None:
        """Hand the waiting messages to ``handle`` (called when the FD signals).

        The first message is taken with a non-blocking receive rather than
        after a ``readable`` check: the FD signalled, so one nearly always
        waits, and ``getsockopt(EVENTS)`` costs a ``poll`` and a ``getpid``
        system call each time. Each later one after a ``readable`` check,
        which also resets the edge before the loop sleeps. Sends that
        ``handle`` makes need no ``poke``: the check after it looks anyway.
        """
        if self._closed:
            return
        sock, handle, recv = self._sock, self._handle, self._recv
        try:
            frames = recv(sock, NOBLOCK)
        except zmq.Again:
            return  # nothing waits: the receive reset the edge as a check would
        self._reading = True
        try:
            handle(frames)
            wait_more = self._wait_more
            for _ in range(self._max_reads - 1):
                if self._closed:
                    return
                if not readable(sock) and (wait_more is None or not wait_more(sock)):
                    return
                handle(recv(sock, 0))
        finally:
            self._reading = False
        self._loop.call_soon(self.read)

    def poke(self) -> None:
        """Look for messages soon: after a send, which may have taken the edge.

        Free while ``read`` runs a handler: it looks again when that returns."""
        if not self._reading and not self._closed and readable(self._sock):
            self._loop.call_soon(self.read)

    def close(self) -> None:
        """Stop reading (the socket stays open)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
