"""Which process a runtime belongs to: a generation number, bumped in every
forked child. A runtime made before a fork belongs to an ancestor process:
its pool loop thread did not survive the fork, and its sockets and workers
are the ancestor's to use and to stop.
"""

from __future__ import annotations

import os

#: Bumped in every forked child (read as ``forks.generation``: a comparison
#: of two ints, where a pid check would cost a system call).
generation = 0


def _after_fork_in_child() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
