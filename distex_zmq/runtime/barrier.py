"""The barrier of ``Pool.run_on_all``: one copy of a task pinned to each worker
once the tasks submitted before it have finished.

It waits for the pool's start, then, on the pool loop, for the broker to drain,
and pins the copies to the workers ready at that moment (when none is, and
replacements start, to those ready once one of them is).
"""

from __future__ import annotations

import concurrent.futures

from distex_zmq.broker import Task
from distex_zmq.errors import PoolClosedError
from distex_zmq.results import TaskFuture
from distex_zmq.runtime.loop import Runtime
from distex_zmq.tasks import TaskMaker

#: Seconds between looks for a ready worker, while none is and some start.
READY_LOOK = 0.02


def pin_to_all_after_drain(
    runtime: Runtime, tasks: TaskMaker, template: Task
) -> concurrent.futures.Future[list[TaskFuture]]:
    """Copies of ``template``, one pinned to each worker once the tasks before
    them have finished; the future of their futures.

    (A function, not a method of the pool: the callbacks must not hold the
    pool, which would then never be garbage-collected.)
    """
    batch: concurrent.futures.Future[list[TaskFuture]] = concurrent.futures.Future()

    def make_task() -> Task:
        # (the broker passes the worker's record; the task is the same for all)
        task = tasks.copy(template)
        TaskFuture(task, runtime.loop)  # the future becomes the task's tag
        return task

    def pin() -> None:
        if runtime.closing:
            dropped()
            return
        if not runtime.broker.registry.ready_count and runtime.supervisor.placement.starting_count:
            # right after deaths no worker is ready, and their replacements
            # start: it would run nowhere, and return [] without a word
            runtime.loop.call_later(READY_LOOK, pin)
            return
        # a caller that stopped waiting (run_on_all_async cancelled) pins
        # nothing; this runs inside the broker's handling of a result, which
        # an InvalidStateError here would cut short
        if not batch.set_running_or_notify_cancel():
            return
        pinned = runtime.broker.pin_to_all(make_task)
        batch.set_result([task.tag for task in pinned])

    def dropped() -> None:
        # the pool shut down first, and stopped the tasks before it
        if batch.set_running_or_notify_cancel():
            batch.set_exception(
                PoolClosedError(f"the pool was shut down before run_on_all({template.name}) ran")
            )

    def after_start(started: concurrent.futures.Future[None]) -> None:
        error = started.exception()
        if error is not None:
            if batch.set_running_or_notify_cancel():
                batch.set_exception(error)
                runtime.note_error_told()
            return
        try:
            runtime.loop.call_soon_threadsafe(runtime.broker.when_drained, pin, dropped)
        except RuntimeError:  # the pool loop has ended
            dropped()

    if runtime.started.done():
        after_start(runtime.started)
    else:
        runtime.started.add_done_callback(after_start)
    return batch
