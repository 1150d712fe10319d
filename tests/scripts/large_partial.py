"""A partial of a script function holding more than a worker keeps of
functions (``FUNCTION_CACHE_BYTES``) as the function of a map, run as
``python large_partial.py`` (``__main__`` is this file). Each worker must
load it once, not once per task. Prints the most loads any worker made,
then ``OK``.
"""

import functools
import os

from distex_zmq import Pool
from distex_zmq.wire.frames import FUNCTION_CACHE_BYTES

#: how many times this process loaded a ``Held``
LOADS = 0


class Held:
    """Data that counts its loads in the process it arrives in."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return loaded, (self.payload,)


def loaded(payload):
    global LOADS
    LOADS += 1
    return Held(payload)


def task(i, held):
    return os.getpid(), LOADS, len(held.payload)


if __name__ == "__main__":
    size = FUNCTION_CACHE_BYTES + 2**20
    func = functools.partial(task, held=Held(bytes(size)))
    with Pool(2) as pool:
        for _ in range(2):
            got = list(pool.map(func, range(16), chunksize=1))
            assert all(n == size for _, _, n in got), "the data arrived whole"
    most = max(loads for _, loads, _ in got)
    print("most loads of one worker:", most)
    assert most == 1, most
    print("OK")
