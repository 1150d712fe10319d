"""File descriptors 0, 1 and 2 kept open, so that the pool's own never take
their numbers."""

from __future__ import annotations

import os


def hold_standard_fds() -> None:
    """Open ``/dev/null`` on each of the descriptors 0, 1 and 2 that is closed.

    A program started with stdin, stdout or stderr closed (a daemon, a cron
    job, ``python script.py <&-``) hands those numbers to the next files it
    opens: the pool's sockets and its loop's, which uvloop refuses to close
    (an assertion aborts the process), and the local workers would inherit
    them as their own standard streams.
    """
    for fd in range(3):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened > 2:  # another thread took the number meanwhile
                os.close(opened)
