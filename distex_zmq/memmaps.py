"""numpy's ``memmap`` pickled as the plain array of its data.

numpy sends only plain arrays out of band: pickle copies a ``memmap``'s
data into the pickle and makes it again as a ``memmap`` of no file, and
dill fails on the ``mmap`` it holds. The picklers of data and functions
reduce a ``memmap`` of at least ``OOB_THRESHOLD`` bytes as the plain array
that views its data instead (``memmap_reduce``): it travels out of band
without a copy, as other large arrays do, and arrives as an ``ndarray``,
read-only if the ``memmap`` is. numpy is not imported here.
"""

from __future__ import annotations

import sys
from typing import Any

#: Buffers at least this large travel as their own frames (``serialization``).
OOB_THRESHOLD = 32 * 1024

#: What a pickle holds where it names numpy's ``memmap`` class (the name,
#: as protocol 5 writes it the first time).
MEMMAP_MARK = b"\x8c\x06memmap"


def memmap_reduce(obj: Any, protocol: int) -> Any:
    """The reduction of ``obj`` if it is a ``numpy.memmap`` (a subclass of
    one keeps its own): that of the plain array viewing its data if it holds
    at least ``OOB_THRESHOLD`` bytes, else pickle's (a ``memmap`` of no
    file, in band); ``NotImplemented`` for any other object."""
    kind = type(obj)
    if kind.__name__ != "memmap":
        return NotImplemented
    if kind is not memmap_type():
        return NotImplemented
    array = plain_array(obj)
    return obj.__reduce__() if array is obj else array.__reduce_ex__(protocol)


def memmap_type() -> type | None:
    """``numpy.memmap``, or ``None`` while numpy is not imported."""
    return getattr(sys.modules.get("numpy"), "memmap", None)


def plain_array(obj: Any) -> Any:
    """The plain array viewing the data of ``obj``, a ``numpy.memmap``, if
    it holds at least ``OOB_THRESHOLD`` bytes; else ``obj``."""
    if obj.nbytes < OOB_THRESHOLD:
        return obj
    return obj.view(sys.modules["numpy"].ndarray)
