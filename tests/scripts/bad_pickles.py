"""Tasks that fail to (un)pickle, run as a script (``__main__`` is this file).

Prints one line per case: the type and message of the error raised.
"""

import enum
import threading

from distex_zmq import PickleType, Pool


class Color(enum.Enum):
    RED = 1


def name_of(color):
    return color.name


def red():
    return Color.RED.name


def lock(_):
    return threading.Lock()


class Rebuilt:
    """Pickles in a worker; its reconstructor raises where it unpickles (the client)."""

    def __init__(self, i):
        self.i = i

    def __reduce__(self):
        return rebuild, (self.i,)


def rebuild(i):
    raise ValueError(f"Rebuilt({i}) does not rebuild here")


def rebuilt_at_5(i):
    return Rebuilt(i) if i == 5 else i


def upto_error(results):
    """Call for ``report``: the results a map yields before its error, then that error."""
    got = []

    def take():
        for y in results:
            got.append(y)

    def call():
        try:
            take()
        finally:
            print(got, end=" ")

    return call


def report(future_or_call):
    try:
        future_or_call()
    except Exception as e:  # noqa: BLE001
        notes = " ".join(getattr(e, "__notes__", []))
        print(f"{type(e).__name__}: {e} {notes}".replace("\n", " "))
    else:
        print("no error")


def main():
    with Pool(1, data_pickle=PickleType.pickle, func_pickle=PickleType.pickle) as plain:
        report(plain.submit(name_of, Color.RED).result)
        report(plain.submit(str, Color.RED).result)
        report(lambda: list(plain.map(name_of, [Color.RED, Color.RED], chunksize=1)))
    with Pool(1) as pool:
        report(pool.submit(red).result)
        report(pool.submit(lock, 1).result)
        report(lambda: list(pool.map(lock, [1, 2], chunksize=1)))
        # a chunk of results of which one does not unpickle in the client
        report(upto_error(pool.map(rebuilt_at_5, range(12), chunksize=4)))
        # in the client: arguments, a map input, a function
        report(pool.submit(name_of, threading.Lock()).result)
        report(lambda: list(pool.map(name_of, [Color.RED, threading.Lock()], chunksize=1)))
        held = (i for i in range(3))  # neither pickle nor dill takes a generator
        report(pool.submit(lambda: next(held)).result)
    with Pool(1, data_pickle=PickleType.pickle, lazy_create=True) as plain:
        report(plain.submit(name_of, lambda: 1).result)


if __name__ == "__main__":
    main()
