"""Find ``distex_zmq.broker`` and ``distex_zmq.worker`` in a source checkout.

``broker/`` and ``worker/`` live beside the ``distex_zmq/`` directory in a
checkout and are installed inside the package (pyproject's ``package-dir``).
Where the checkout shadows the installed package (Python started in its
root), a finder maps exactly those two names to their directories, as
setuptools' editable installs do; the package's path stays as it is.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SUBPACKAGES = ("broker", "worker")


class _CheckoutFinder:
    """A meta path finder: ``find_spec`` is all the import system asks of
    one. It does not derive from ``importlib.abc.MetaPathFinder``, whose
    module imports ``importlib.resources`` in every process, workers too."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in _SUBPACKAGES:
            return None
        directory = os.path.join(_ROOT, name)
        return importlib.util.spec_from_file_location(
            fullname,
            os.path.join(directory, "__init__.py"),
            submodule_search_locations=[directory],
        )


def install() -> None:
    """Add the finder if this package is a checkout without the subpackages."""
    here = os.path.join(_ROOT, __package__ or "distex_zmq")
    if os.path.isdir(os.path.join(here, "broker")):
        return  # an installed copy: the subpackages are inside
    if not os.path.isfile(os.path.join(_ROOT, "broker", "__init__.py")):
        return
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())
