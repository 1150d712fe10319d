"""eventkit's ``Event.poolmap``, without importing eventkit before it is used.

eventkit imports numpy, which took half the time of ``from distex_zmq import
Pool``. So the pool attaches ``Event.poolmap`` (``distex_zmq.poolmap``) at
once only if eventkit is already imported; else a finder on ``sys.meta_path``
waits for eventkit's import and attaches it right after, so that the method
is there whichever of the two a program imports first, as with distex.

eventkit asks asyncio for the current event loop as it is imported, and
there is none after ``asyncio.run()`` has ended, nor on Python 3.14 before
any loop was set (3.14's ``get_event_loop`` no longer makes one): the import
raises ``RuntimeError``. Imported through this module (the finder, or
``import_eventkit``), it is imported again with a new loop set as the
current one for the time of the import, as it would have found on Python
3.13 before any ``asyncio.run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

_lock = threading.Lock()


def import_eventkit() -> None:
    """Import eventkit, also where there is no current event loop (see above)."""
    try:
        importlib.import_module("eventkit")
    except RuntimeError:
        with _a_current_loop():
            importlib.import_module("eventkit")


@contextlib.contextmanager
def _a_current_loop() -> Iterator[None]:
    """A new event loop set as the current one for the time of the block;
    eventkit keeps it (for ``Event.emit_threadsafe``), so it is not closed."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    try:
        yield
    finally:
        asyncio.set_event_loop(None)


def attach_poolmap() -> None:
    """Give eventkit's ``Event`` its ``poolmap`` method, now or once eventkit is imported."""
    with _lock:
        if "eventkit" not in sys.modules:
            if not any(isinstance(finder, _AfterEventkit) for finder in sys.meta_path):
                sys.meta_path.insert(0, _AfterEventkit())
            return
    importlib.import_module("distex_zmq.poolmap")


class _AfterEventkit:
    """Finds eventkit as the other finders do, then attaches ``poolmap`` after it has run.

    A meta path finder, and ``_ThenPoolmap`` a loader, by their methods:
    neither derives from ``importlib.abc``, whose import takes
    ``importlib.resources`` along.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname != "eventkit":
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = cast("Loader", _ThenPoolmap(spec.loader))
        return spec


class _ThenPoolmap:
    """eventkit's own loader, which imports ``distex_zmq.poolmap`` after eventkit."""

    def __init__(self, loader: Any):
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        # get_source, is_package and the rest: tracebacks and inspect use them
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._loader.exec_module(module)
        except RuntimeError:  # no current event loop (see the module's docstring)
            with _a_current_loop():
                self._loader.exec_module(module)
        try:
            importlib.import_module("distex_zmq.poolmap")
        except Exception as e:  # noqa: BLE001 - the program imported eventkit, not us
            warnings.warn(
                f"distex_zmq could not give eventkit's Event its poolmap method "
                f"({type(e).__name__}: {e}); PoolMap and Event.poolmap will not work",
                RuntimeWarning,
                stacklevel=2,
            )
