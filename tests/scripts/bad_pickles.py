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


def report(future_or_call):
    try:
        future_or_call()
    except Exception as e:  # noqa: BLE001
        print(f"{type(e).__name__}: {e}".replace("\n", " "))
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


if __name__ == "__main__":
    main()
