"""A raw pyzmq echo worker for the ``pyzmq`` reference column of ``run.py``.

``python benchmarks/_rawzmq_worker.py ENDPOINT``: a DEALER socket that
connects to ENDPOINT, says hello, then sends every message back as it came,
without a copy, until it receives ``stop``; a message ``+N`` (a decimal
number) is answered with N + 2, which is ``tasks.g``, and a message
``chunk`` followed by a pickled tuple of numbers with the pickled list of
their ``g``. No event loop and no protocol: what a ZeroMQ round trip costs
on its own.
"""

from __future__ import annotations

import pickle
import sys

import zmq


def main(endpoint: str) -> None:
    """Echo messages until ``stop``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(b"hello")
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames[0]) < 32:  # look only into small ones: .bytes copies
            data = frames[0].bytes
            if data == b"stop":
                break
            if data[:1] == b"+":
                sock.send(b"%d" % (int(data[1:]) + 2))
                continue
            if data == b"chunk":
                chunk = pickle.loads(frames[1].buffer)
                sock.send(pickle.dumps([x + 2 for x in chunk], pickle.HIGHEST_PROTOCOL))
                continue
        sock.send_multipart(frames, copy=False)
    sock.close()
    ctx.term()


if __name__ == "__main__":
    main(sys.argv[1])
