"""Workers joining and leaving the pool: the HELLO of an expected worker, its
initializer before it counts as ready, and workers taken out (``retire``,
drained, then stopped) or stopped with the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from distex_zmq.errors import ProtocolError
from distex_zmq.wire import frames as p

from .dispatch import Dispatcher
from .losses import Losses
from .records import BrokerHooks, InitNotSent, WorkerRecord
from .registry import Registry

_logger = logging.getLogger("distex_zmq.broker")


class Membership:
    """Admits, readies, retires and stops workers, on the pool loop.

    ``control(identity, kind, body)`` sends STOP or REFUSE; ``dispatch()``
    sends what the queue holds to the workers ready.
    """

    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        losses: Losses,
        hooks: BrokerHooks,
        control: Callable[[bytes, bytes, bytes], None],
        dispatch: Callable[[], None],
    ):
        self._registry = registry
        self._dispatcher = dispatcher
        self._losses = losses
        self._hooks = hooks
        self._control = control
        self._dispatch = dispatch
        self._stopping = False
        #: identities of workers taken out of the pool (``retire``) whose
        #: processes have not been reported gone (``forget``): their late
        #: messages are dropped without a warning
        self._retired: set[bytes] = set()

    def retired(self, identity: bytes) -> bool:
        """Whether the worker ``identity`` was taken out and is not yet gone."""
        return identity in self._retired

    def hello(self, identity: bytes, buf: memoryview) -> WorkerRecord | None:
        """A worker says HELLO: admit it, or tell it to stop or go away.

        A worker admitted already says it again when its connection dropped
        before it heard from the pool (its first may have been lost on the
        way): its record is returned, to be checked as after ``SYNC``. So is
        that of a worker admitted by a HELLO said again: its first was lost,
        and it waits for a ``CHECK`` that settles what was on its way (here:
        nothing), as a worker does after a drop."""
        if self._stopping or identity in self._retired:
            self._control(identity, p.STOP, b"")
            return None
        registry = self._registry
        if not registry.expects(identity):
            self._control(identity, p.REFUSE, b"unknown worker identity")
            raise ProtocolError("hello from a worker this pool did not start")
        pid, host, credits, python, again = p.read_hello(buf)
        rec = registry.get(identity)
        if rec is not None:
            if (rec.pid, rec.host) != (pid, host):
                raise ProtocolError(f"second hello, from pid {pid} on {host}, of {rec}")
            return rec
        rec = WorkerRecord(identity, pid, host, credits, python)
        rec.remote = registry.remote(identity)
        registry.add(rec)
        _logger.debug("hello from %s, %d credits", rec, credits)
        try:
            init = self._hooks.on_hello(rec)
        except InitNotSent:
            return rec if again else None  # the pool's start failed with it
        if init is None:
            self.make_ready(rec)
        else:
            self._dispatcher.pin(rec, init)
            self._dispatch()
        return rec if again else None

    def make_ready(self, rec: WorkerRecord) -> None:
        """``rec`` may run tasks now (its initializer, if any, succeeded)."""
        self._registry.set_ready(rec)
        self._hooks.on_ready(rec)
        self._dispatch()

    def forget(self, identity: bytes) -> None:
        """Admit this identity no more (its worker will never connect)."""
        self._registry.forget(identity)
        self._retired.discard(identity)

    def retire(self, identity: bytes, drain: bool) -> None:
        """Take a worker out of the pool: it gets no new task.

        With ``drain``, a ready worker finishes the tasks it holds (and those
        pinned to it), then gets STOP. Otherwise, and for a worker that is not
        ready yet, its tasks go back to the queue at once without counting a
        try (``Losses.withdraw``); its launcher is to kill it. ``forget`` the
        identity once its process is gone.
        """
        registry = self._registry
        registry.forget(identity)
        self._retired.add(identity)
        rec = registry.get(identity)
        if rec is None:
            return
        rec.spend_pending = False  # it leaves: its count decides nothing more
        if drain and rec.ready:
            registry.drain(rec)
            if not rec.running and not rec.pinned:
                self.drained(rec)
        else:
            self._losses.withdraw(rec, "was removed from the pool")

    def drained(self, rec: WorkerRecord) -> None:
        """A draining worker holds nothing more: it leaves the pool."""
        self._registry.remove(rec)
        self._control(rec.identity, p.STOP, b"")
        self._hooks.on_stopped(rec)

    def stop_all(self) -> None:
        """Ask every worker to finish and exit, and those that connect later."""
        self._stopping = True
        for rec in list(self._registry.workers.values()):
            self._control(rec.identity, p.STOP, b"")
