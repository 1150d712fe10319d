"""dill's pickler for functions, with classes of the user's script sent as
cloudpickle sends them; imported when a function first needs dill (see
``script_objects.dill_dumps``), so that a program that never sends one does
not import dill.
"""

from __future__ import annotations

from typing import Any

import dill

from .script_pickler import reduce_class


class ScriptClassesPickler(dill.Pickler):
    """dill, but classes of ``__main__`` go as cloudpickle sends them (with
    their tracker ids); dill alone sends a new class each time, and cannot
    send a script's enum."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, type) and obj.__module__ == "__main__" and id(obj) not in self.memo:
            reduce = reduce_class(obj, self.proto)
            if reduce is not NotImplemented:
                self.save_reduce(*reduce, obj=obj)
                return
        super().save(obj, save_persistent_id)
