"""dill's pickler for functions, with classes of the user's script sent as
cloudpickle sends them; imported when a function first needs dill (see
``script_objects.dill_dumps``), so that a program that never sends one does
not import dill.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import dill

from .script_pickler import reduce_class
from .script_rebuild import is_singledispatch, make_singledispatch, singledispatch_args


class ScriptClassesPickler(dill.Pickler):
    """dill, but classes of ``__main__`` go as cloudpickle sends them (with
    their tracker ids); dill alone sends a new class each time, and cannot
    send a script's enum. Modules go by name, as cloudpickle sends them: dill
    sends a module outside the standard library and site-packages (one next
    to the script) with a copy of its globals, which fails on the first one
    that does not pickle (a lock, a ``threading.local``) and otherwise
    overwrites the worker's globals of that module at every task. A
    ``functools.singledispatch`` function of the script goes as its
    implementations (its dispatch cache holds weak references)."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, type) and obj.__module__ == "__main__" and id(obj) not in self.memo:
            reduce = reduce_class(obj, self.proto)
            if reduce is not NotImplemented:
                self.save_reduce(*reduce, obj=obj)
                return
        elif is_singledispatch(obj) and id(obj) not in self.memo:
            self.save_reduce(make_singledispatch, singledispatch_args(obj), obj=obj)
            return
        elif (
            isinstance(obj, types.ModuleType)
            and obj.__name__ != "__main__"
            and sys.modules.get(obj.__name__) is obj
        ):
            self.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)
            return
        super().save(obj, save_persistent_id)
