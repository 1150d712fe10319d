"""The pools' exit handler, run before those of libraries imported later.

``atexit`` runs the handler registered last first. paramiko, imported when
a pool first adds an SSH host (after the pools registered theirs), registers
one that stops every SSH connection: run first, it would cut every SSH host
off before the pools' handler lets their tasks finish, and the pools would
lose those hosts and run their tasks again elsewhere. ``run_first`` registers
the pools' handler again, after such a library's.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable

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
