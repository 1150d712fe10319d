"""Building tasks: helpers for the client modules that make them."""

from __future__ import annotations

from typing import Any


def callable_name(func: Any) -> str:
    """A short name for a callable, cheap to compute."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        inner = getattr(func, "func", None)  # functools.partial
        name = callable_name(inner) if inner is not None else type(func).__name__
    return str(name)
