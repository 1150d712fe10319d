"""The pools' exit handler, run before those of libraries imported later.

``atexit`` runs the handler registered last first. paramiko, imported when
a pool first adds an SSH host (after the pools registered theirs), registers
one that stops every SSH connection: run first, it would cut every SSH host
off before the pools' handler lets their tasks finish, and the pools would
lose those hosts and run their tasks again elsewhere. ``run_first`` registers
the pools' handler again, after such a library's.

Before the atexit handlers, the exit waits for the threads that are not
daemons, and a Ctrl-C there raises a ``KeyboardInterrupt`` that Python
shows as "Exception ignored" and forgets: ``ctrl_c_came`` tells the pools'
handler of it.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable
from types import FrameType

_handlers: list[Callable[[], None]] = []


def register(handler: Callable[[], None]) -> None:
    """Run ``handler`` at the interpreter's exit."""
    _handlers.append(handler)
    atexit.register(handler)


def run_first() -> None:
    """Run the handlers registered here before every handler registered until now."""
    for handler in _handlers:
        atexit.unregister(handler)
        atexit.register(handler)


#: A Ctrl-C came during the interpreter's exit (see ``_note_ctrl_c``).
_ctrl_c = False


def ctrl_c_came() -> bool:
    """Whether a Ctrl-C came since the interpreter's exit began."""
    return _ctrl_c


def _note_ctrl_c() -> None:
    """At the start of the interpreter's exit (``threading._shutdown``, before
    it waits for the threads that are not daemons), have Python's own
    handler of Ctrl-C note that one came before it raises."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # the program's own handler, or Ctrl-C ignored

    def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
        global _ctrl_c
        _ctrl_c = True
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_ctrl_c)


try:
    # private, but what concurrent.futures uses for the same moment
    threading._register_atexit(_note_ctrl_c)  # type: ignore[attr-defined]
except RuntimeError:  # imported during the exit (by an atexit handler): too late
    pass
