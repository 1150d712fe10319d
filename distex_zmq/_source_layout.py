"""Find the subpackages of a source checkout that shadows the installed package.

``broker/`` and ``worker/`` live beside the ``distex_zmq/`` directory in a
checkout and are installed inside it (pyproject's ``package-dir``). Where the
checkout shadows the installed package (Python started in its root; a worker
started there), ``distex_zmq.broker`` is looked for beside this directory too.
"""

import os
import sys

_package = sys.modules[__package__]
_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(_here)
if not os.path.isdir(os.path.join(_here, "broker")) and os.path.isfile(
    os.path.join(_root, "broker", "__init__.py")
):
    _package.__path__.append(_root)
