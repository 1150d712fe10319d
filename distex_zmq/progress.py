"""Progress of a map (``progress=``): a tqdm bar or the caller's callback,
told how many inputs are done at most every ``INTERVAL`` seconds and once at
the end. A count held back by the interval is reported once it has passed:
the map's thread wakes for it (``due``). A map without ``progress`` has no
``Progress`` and pays nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Seconds between two reports, at the least (the last one comes at the end).
INTERVAL = 0.1

Report = Callable[[int, "int | None"], Any]


class Progress:
    """Counts a map's inputs done and reports them, throttled."""

    def __init__(self, report: Report, total: int | None, close: Callable[[], Any] | None = None):
        self.total = total
        self.done = 0
        self._report = report
        self._close = close
        self._reported = -1
        self._next = 0.0

    def add(self, n: int) -> None:
        """``n`` more inputs are done (their results or errors reached the
        map); report the count if the interval since the last report passed
        (also with ``n`` 0, for a count held back)."""
        self.done += n
        if self._reported == self.done:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + INTERVAL
            self._reported = self.done
            self._report(self.done, self.total)

    def due(self) -> float | None:
        """Seconds until a count held back may be reported (None: none is)."""
        if self._reported == self.done:
            return None
        return max(0.0, self._next - time.monotonic())

    def close(self) -> None:
        """The map ended: the final report (unless the last said it all)."""
        if self._reported != self.done:
            self._reported = self.done
            self._report(self.done, self.total)
        if self._close is not None:
            close, self._close = self._close, None
            close()


def input_length(iterables: tuple[Any, ...]) -> int | None:
    """The length of a map's input: that of its shortest iterable, 0 with
    none (an empty map), None if one has no length.

    An iterable too long for ``len`` (``range(10**20)``) bounds nothing: the
    others give the length, or, with none, there is None.
    """
    lengths = []
    for it in iterables:
        try:
            lengths.append(len(it))
        except OverflowError:
            continue
        except TypeError:
            return None
    if not iterables:
        return 0
    return min(lengths, default=None)


def make_progress(progress: bool | Report | None, iterables: tuple[Any, ...]) -> Progress | None:
    """The ``Progress`` of a map's ``progress`` argument (None: off).

    The total is the length of the input, if every iterable has one (the
    shortest, for several); else None.
    """
    if progress is None or progress is False:
        return None
    total = input_length(iterables)
    if callable(progress):
        return Progress(progress, total)
    if progress is not True:
        raise TypeError(f"progress must be True, False or a callable, not {progress!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError(
            "progress=True shows a tqdm bar and needs tqdm: pip install 'distex_zmq[progress]'"
        ) from e
    bar: list[Any] = []

    def report(done: int, total: int | None) -> None:
        if not bar:  # made at the first report: a map never iterated shows none
            bar.append(tqdm(total=total, unit="input"))
        bar[0].update(done - bar[0].n)

    def close() -> None:
        if bar:
            bar[0].close()

    return Progress(report, total, close)
