"""The socket helpers of ``distex_zmq.wire.zmqio``, on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

from distex_zmq.wire.zmqio import EdgeReader, LonePoll, poll, recv_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A connected PAIR of sockets over inproc: (receiver, sender)."""
    ctx = zmq.Context()
    receiver, sender = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    receiver.bind("inproc://zmqio-test")
    sender.connect("inproc://zmqio-test")
    yield receiver, sender
    receiver.close(linger=0)
    sender.close(linger=0)
    ctx.term()


def test_poll_finds_a_waiting_message_and_ends_empty_or_when_told(pair):
    receiver, sender = pair
    assert not poll(receiver, 0.001)
    sender.send(b"x")
    assert poll(receiver, 10.0)
    assert receiver.recv() == b"x"
    # told to stop: it ends long before its minute
    assert not poll(receiver, 60.0, lambda: True)


def test_lone_poll_skips_more_polls_after_each_miss_and_starts_again_on_a_find(pair):
    receiver, sender = pair
    lone_poll = LonePoll(0.001)
    sender.send(b"x")
    assert lone_poll(receiver)  # found: the next poll is made too
    receiver.recv()
    assert not lone_poll(receiver)  # a miss: the next poll is skipped
    sender.send(b"x")
    assert not lone_poll(receiver), "a message waits, but the poll after a miss is skipped"
    assert lone_poll(receiver)
    receiver.recv()
    assert not lone_poll(receiver)  # a miss: one skipped
    assert not lone_poll(receiver)  # skipped
    assert not lone_poll(receiver)  # a second miss in a row: two skipped
    sender.send(b"x")
    assert [lone_poll(receiver) for _ in range(3)] == [False, False, True]
    receiver.recv()


def test_lone_poll_told_to_stop_counts_no_miss(pair):
    receiver, sender = pair
    lone_poll = LonePoll(60.0)
    assert not lone_poll(receiver, lambda: True)
    sender.send(b"x")
    assert lone_poll(receiver), "a poll ended by its caller made the next one skip"
    receiver.recv()


def test_lone_poll_skips_at_most_max_skipped_polls(pair):
    receiver, sender = pair
    lone_poll = LonePoll(0.0)
    misses = 0
    while True:  # misses until one skips the most
        assert not lone_poll(receiver)
        misses += 1
        skipped = lone_poll._skip
        for _ in range(skipped):
            assert not lone_poll(receiver)
        if skipped == LonePoll.MAX_SKIPPED:
            break
        assert misses < 20
    assert not lone_poll(receiver)  # a further miss skips no more than the most
    assert lone_poll._skip == LonePoll.MAX_SKIPPED


def test_edge_reader_reads_on_while_wait_more_finds_a_message(pair):
    # When the socket runs empty after a message, ``wait_more`` may wait for
    # the next one (the broker polls for a result while a map's consumer
    # waits): what it finds is read in the same turn of the loop, without a
    # wake-up, and once it says no, the reader returns.
    receiver, sender = pair
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    coming = [b"2", b"3"]

    def wait_more(sock: zmq.Socket) -> bool:
        if not coming:
            return False
        sender.send(coming.pop(0))  # the next message comes while it waits
        return poll(sock, 10.0)

    try:
        reader = EdgeReader(
            loop, receiver, lambda frames: got.append(frames[0].bytes), 256, recv_frames, wait_more
        )
        sender.send(b"1")
        assert poll(receiver, 10.0)
        reader.read()
        assert got == [b"1", b"2", b"3"] and not coming
        reader.close()
    finally:
        loop.close()
