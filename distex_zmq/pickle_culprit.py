"""What a function that does not pickle holds that does not: a global, a
closure variable, a default, a ``partial``'s argument, a bound method's or
callable object's attribute, named.

A pickler's own error names the type that failed (``cannot pickle
'generator' object``), not where the function holds it; the error of a
function that does not pickle then names that place too. Looked for only
once pickling failed, by pickling each part on its own.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from typing import Any


def culprit(func: Any, dumps: Callable[[Any], Any]) -> str:
    """The first part of ``func`` that ``dumps`` fails on, named with its
    type ("its global 'LOCK' (a lock)"); "" if none is found (the function
    itself fails, or a part of a part)."""
    for what, value in _parts(func):
        if isinstance(value, types.ModuleType):
            continue  # by name
        try:
            dumps(value)
        except Exception:  # noqa: BLE001 - this one fails: it is named
            return f"{what} (a {type(value).__qualname__})"
    return ""


def _parts(func: Any) -> Iterator[tuple[str, Any]]:
    """What ``func`` holds that goes with it when pickled, named."""
    if isinstance(func, functools.partial):
        yield "the partial's function", func.func
        for number, arg in enumerate(func.args):
            yield f"the partial's argument #{number}", arg
        for name, arg in func.keywords.items():
            yield f"the partial's argument {name}=", arg
        return
    if isinstance(func, types.MethodType):
        yield "the object of the bound method", func.__self__
        func = func.__func__
    if isinstance(func, types.FunctionType):
        for name, value in closure_values(func).items():
            yield f"its closure variable {name!r}", value
        for name, value in sorted(used_globals(func).items()):
            yield f"its global {name!r}", value
        for number, default in enumerate(func.__defaults__ or ()):
            yield f"its default #{number}", default
        for name, default in (func.__kwdefaults__ or {}).items():
            yield f"its default {name}=", default
        return
    if not isinstance(func, type):
        for name, value in getattr(func, "__dict__", {}).items():
            yield f"its attribute {name!r}", value


def closure_values(func: types.FunctionType) -> dict[str, Any]:
    """The values of ``func``'s closure, by name (a cell not filled yet left out)."""
    values = {}
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=True):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # not filled yet
            continue
    return values


def used_globals(func: types.FunctionType) -> dict[str, Any]:
    """The globals that ``func``'s code (nested functions' too) names."""
    found = func.__globals__
    return {name: found[name] for name in code_names(func.__code__) if name in found}


def code_names(code: types.CodeType) -> set[str]:
    """The names that ``code`` and the code nested in it look up."""
    names: set[str] = set()
    codes = [code]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names
