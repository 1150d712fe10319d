"""Malformed and hostile messages: the parsers of ``wire/`` (any bytes give a
message or a ``ProtocolError``, nothing else), a live pool's broker and a
spawner process on loopback, each sent garbage by a plain ZeroMQ socket or
raw TCP, and still working afterwards."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distex_zmq import Pool, ProtocolError
from distex_zmq.wire import control as c
from distex_zmq.wire import frames as p
from tests import tasks
from tests.helpers import LoopbackSpawner, broker_endpoint, child_pids, wait_until

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

#: JSON nested deeper than the decoder goes (a RecursionError in ``json``)
DEEP = b"[" * 100_000
#: any JSON value, and objects with the fields of the messages among their keys
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    *p.LOG_FIELDS,
    "pid", "host", "credits", "python", "version", "op", "ev", "id", "workers",
    "heartbeat", "endpoint", "keys", "worker", "protocol", "grace", "rc", "tail",
]  # fmt: skip
json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values)


def json_bytes(value: Any) -> bytes:
    # Infinity and NaN as Python's json writes (and reads) them
    return json.dumps(value).encode()


bodies = (
    st.binary(max_size=300)
    | json_objects.map(json_bytes)
    | json_values.map(json_bytes)
    | st.just(DEEP)
    | st.just(b'{"pid": Infinity, "host": "h", "credits": 1}')
)


def envelope(kind: bytes, count: int = 0, body: bytes = b"") -> bytes:
    return p.HEAD.pack(p.MAGIC, p.VERSION, kind, count) + body


# the parsers of wire/: a message, or a ProtocolError


@FUZZ
@given(kind=st.sampled_from([p.HELLO, p.RESULT, p.LOG, p.TASK, b"\x00"]), body=bodies)
@example(kind=p.HELLO, body=DEEP)
@example(kind=p.HELLO, body=b'{"pid": Infinity, "host": "h", "credits": 1}')
@example(kind=p.HELLO, body=b'{"pid": 1, "host": "h", "credits": -Infinity}')
def test_a_broker_reads_any_hello_or_log_body_or_refuses_it(kind, body):
    buf = memoryview(envelope(kind, body=body))
    for read in (p.read_hello, p.json_body, p.text_body):
        try:
            read(buf)
        except ProtocolError:
            pass
    try:
        p.read_log(body)
    except ProtocolError:
        pass


def test_json_nested_too_deep_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="malformed body: nested too deep"):
        p.read_hello(memoryview(envelope(p.HELLO, body=DEEP)))
    with pytest.raises(ProtocolError, match="malformed log record: nested too deep"):
        p.read_log(DEEP)
    with pytest.raises(ProtocolError, match="malformed JSON: nested too deep"):
        c.decode([c.HEAD, DEEP], c.SPAWNER_READS)
    with pytest.raises(ProtocolError, match="malformed hello"):
        p.read_hello(memoryview(envelope(p.HELLO, body=b'{"pid": Infinity, "host": "h"}')))


@FUZZ
@given(
    head=st.binary(max_size=12) | st.just(envelope(p.RESULT)),
    count=st.integers(0, 0xFFFF),
    entries=st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 1, 5, 100, p.IN_FRAME, 2**32 - 2]),
            st.integers(0, 3),
            st.integers(0, 2**32 - 1),
        ),
        max_size=4,
    ),
    tail=st.binary(max_size=64),
    extra=st.integers(0, 3),
)
def test_a_result_message_reads_or_is_refused(head, count, entries, tail, extra):
    # entries and bodies as a broker walks them (``Delivery.on_results``):
    # an extent past the message or its frames is a ProtocolError
    raw = b"".join(p.RESULT_ENTRY.pack(*entry) for entry in entries)
    if len(head) == p.HEAD.size:
        head = head[:-2] + count.to_bytes(2, "big")
    frame0 = head + raw + tail
    message = [frame0, *[b"x" * 10] * extra]
    try:
        _, n, buf = p.check(frame0)
        reader = p.Reader(buf, p.body(buf, n, p.RESULT_ENTRY), message)
        for *_, size, nbuffers, _mark in p.result_entries(buf, n):
            reader.data(size, nbuffers)
    except ProtocolError:
        pass


@FUZZ
@given(
    head=st.just(c.HEAD) | st.binary(max_size=8),
    body=bodies,
    more=st.lists(st.binary(max_size=8), max_size=2),
    reads=st.sampled_from([c.SPAWNER_READS, c.AGENT_READS, c.POOL_READS, c.STATUS_READS]),
)
@example(head=c.HEAD, body=DEEP, more=[], reads=c.SPAWNER_READS)
@example(head=c.HEAD, body=b'{"op": "open", "workers": 1e9}', more=[], reads=c.SPAWNER_READS)
def test_a_control_message_reads_or_is_refused(head, body, more, reads):
    for decode in (
        lambda: c.decode([head, body, *more], reads),
        lambda: c.decode_line(body, reads),
    ):
        try:
            decode()
        except ProtocolError:
            pass
