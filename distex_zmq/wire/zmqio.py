"""Sending and receiving multipart messages with less overhead than pyzmq's helpers.

``Socket.recv_multipart`` asks the socket for RCVMORE after each frame and
``send_multipart`` goes through several layers per frame: together some ten
microseconds per message, paid on the hot path of broker and workers alike.
These do the same with one call per frame; small frames are copied (cheaper
than tracking them), large ones are sent without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

SNDMORE = int(zmq.SNDMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
#: Frames at least this large are sent without a copy.
ZERO_COPY_MIN = 64 * 1024


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a whole message waits (and the edge-triggered FD is reset)."""
    return bool(int(sock.getsockopt(EVENTS)) & POLLIN)


def recv_frames(sock: zmq.Socket[Any]) -> list[Any]:
    """Receive the next message, as zmq Frames; call only when ``readable``."""
    frame = sock.recv(0, False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(0, False)
        frames.append(frame)
    return frames


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any]) -> None:
    """Send a message: the frames in order, large ones without a copy."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        flags = SNDMORE if i < last else 0
        if len(frame) >= ZERO_COPY_MIN:
            sock.send(frame, flags, copy=False)
        else:
            sock.send(frame, flags)
