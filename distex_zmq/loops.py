"""Event loops: their types (the values of distex), and tasks held until done."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from enum import IntEnum
from typing import Any


class LoopType(IntEnum):
    """Event loop a worker runs tasks on."""

    default = 0  #: uvloop when installed, else asyncio
    asyncio = 1  #: the standard selector event loop
    uvloop = 2  #: uvloop (Unix only)
    proactor = 3  #: proactor (Windows only)
    quamash = 4  #: a Qt event loop through quamash


def new_event_loop(kind: int = LoopType.default) -> asyncio.AbstractEventLoop:
    """Make a new event loop of the given ``LoopType``."""
    return loop_factory(kind)()


def loop_type(kind: int | str) -> LoopType:
    """``kind``, a ``LoopType`` or its name (``"uvloop"``), as a ``LoopType``;
    ``ValueError`` that lists those that run here if it is none."""
    try:
        if isinstance(kind, str):
            return LoopType[kind.lower()]
        return LoopType(kind)
    except (KeyError, ValueError):
        usable = [LoopType.default, LoopType.asyncio, LoopType.uvloop]
        if sys.platform == "win32":
            usable.append(LoopType.proactor)
        raise ValueError(
            f"unknown LoopType {kind!r}; use one of "
            + ", ".join(f"{t.name}={t.value} ({t.name!r})" for t in usable)
        ) from None


def loop_factory(kind: int | str = LoopType.default) -> Callable[[], asyncio.AbstractEventLoop]:
    """The function that makes event loops of the given ``LoopType`` (or
    its name).

    Raises ``ValueError`` with what to do when the type cannot run here.
    """
    kind = loop_type(kind)
    if kind == LoopType.default:
        try:
            import uvloop
        except ImportError:
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    if kind == LoopType.asyncio:
        return asyncio.SelectorEventLoop
    if kind == LoopType.uvloop:
        try:
            import uvloop
        except ImportError:
            raise ValueError(
                "LoopType.uvloop needs uvloop: pip install 'distex_zmq[uvloop]'"
            ) from None
        return uvloop.new_event_loop
    if kind == LoopType.proactor:
        if sys.platform != "win32":
            raise ValueError("LoopType.proactor runs on Windows only; use LoopType.default")
        return asyncio.ProactorEventLoop  # type: ignore[attr-defined,unused-ignore]
    raise ValueError(
        "LoopType.quamash is not supported: a Qt loop in a headless worker process "
        "has nothing to drive it; use LoopType.default"
    )


def running_loop(api: str, sync: str | None = None) -> asyncio.AbstractEventLoop:
    """The asyncio loop running in this thread, which ``Pool.<api>`` (an
    async method, whose sync twin is ``sync``) runs on; a ``RuntimeError``
    that says what to do where none runs (under trio), raised before the
    method does anything."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        twin = f" (Pool.{sync})" if sync else ""
        raise RuntimeError(
            f"Pool.{api} needs a running asyncio event loop (asyncio.run, uvloop, "
            "anyio's asyncio backend), and this thread runs none; under trio, call "
            f"the pool's sync API{twin} in a thread instead, as in "
            "`await trio.to_thread.run_sync(pool.run, func, x)`"
        ) from None


def run_in_background(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, None],
    tasks: set[asyncio.Task[None]],
) -> asyncio.Task[None]:
    """Start ``coro`` as a task that ``tasks`` holds until it is done: an
    event loop holds its tasks only weakly, so a task nothing else refers to
    may be collected before it ends."""
    task = loop.create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
