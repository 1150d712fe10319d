"""A joblib backend that runs ``joblib.Parallel`` (and scikit-learn's
``n_jobs``) on a pool, its remote hosts included.

Importing this module registers the backend as ``"distex_zmq"``::

    import joblib
    import distex_zmq.joblib  # noqa: F401

    with Pool(hosts=...) as pool, joblib.parallel_config(backend="distex_zmq", pool=pool):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(x) for x in xs)

(``joblib.parallel_backend("distex_zmq", pool=pool)``, joblib's older name
for it, works too.)
``n_jobs=-1`` and ``n_jobs=None`` are the pool's workers; joblib groups
small calls into batches from the run times the pool reports back. Each
batch is one task of the pool, its calls pickled as data (so functions and
classes of the script travel by value, large arrays out of band). An error
is raised with its own type, and cancels the batches that have not started.
A batch that kills its worker fails the call with ``WorkerLostError``, as
loky fails it: it runs again only with ``parallel_config(...,
max_retries=n)``, not with the pool's ``max_retries``.
An error of joblib's completion callback (a ``Parallel`` subclass's
``print_progress``, say) fails the call too. While a worker runs a batch,
its BLAS and OpenMP thread pools are limited as loky limits them in its
workers (``inner_max_num_threads``, or the host's cores divided by
``n_jobs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, FallbackToBackend
from joblib.parallel import ParallelBackendBase

from .pool import Pool
from .results import TaskFuture
from .tasks import callable_name

NAME = "distex_zmq"

_logger = logging.getLogger("distex_zmq.joblib")


def _run_batch(batch: Any, max_threads: int | None = None, n_jobs: int = 1) -> Any:
    """Run a batch of joblib calls (a ``BatchedCalls``) in a worker, with
    the thread pools of BLAS and OpenMP limited while it runs, as loky
    limits them in its workers: to ``max_threads`` (joblib's
    ``inner_max_num_threads``) when it is given, else to this host's cores
    divided by the call's ``n_jobs``, unless the worker's environment sets
    a limit of its own (``OMP_NUM_THREADS`` and the like)."""
    if max_threads is None:
        if any(name in os.environ for name in ParallelBackendBase.MAX_NUM_THREADS_VARS):
            return batch()
        limits = max(joblib.cpu_count() // n_jobs, 1)
    else:
        limits = max_threads
    controller = _thread_pools(explicit=max_threads is not None)
    if controller is None:
        return batch()
    with controller.limit(limits=limits):
        return batch()


def _batch_name(batch: Any) -> str | None:
    """``a joblib batch of 3 calls of f``: what the pool's errors about the
    task of ``batch`` (a ``BatchedCalls``; a worker lost, a result that does
    not pickle) call it, rather than ``_run_batch``."""
    items = getattr(batch, "items", None)
    if not isinstance(items, list) or not items:
        return None
    names = list(dict.fromkeys(callable_name(item[0]) for item in items))
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    calls = "1 call" if len(items) == 1 else f"{len(items)} calls"
    return f"a joblib batch of {calls} of {shown}"


# the worker's thread pools (threadpoolctl's controller), and the number
# of modules loaded when they were looked up: a module loaded since may
# have brought a library of its own
_controller: Any = None
_controller_modules = 0


def _thread_pools(explicit: bool) -> Any:
    """This process's BLAS and OpenMP thread pools (a threadpoolctl
    ``ThreadpoolController``), or ``None`` without threadpoolctl."""
    global _controller, _controller_modules
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        if explicit:  # the user asked for the limit
            warnings.warn(
                "distex_zmq: joblib's inner_max_num_threads is not applied on "
                f"{socket.gethostname()}: it needs threadpoolctl in the workers "
                "(scikit-learn installs it; pip install threadpoolctl)",
                RuntimeWarning,
                stacklevel=1,
            )
        return None
    if _controller is None or len(sys.modules) != _controller_modules:
        _controller, _controller_modules = ThreadpoolController(), len(sys.modules)
    return _controller


class DistexZmqBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend over a ``Pool`` (given as ``pool=`` to
    ``parallel_config``; ``max_retries=``, 0 unless given there, is how
    often a batch that kills its worker runs again).

    joblib's completion callbacks, which dispatch the next batches and so
    read the caller's iterator of calls, run on a thread of the backend, not
    on the pool's loop, which they would hold up. An error of a callback
    stops the call's dispatch and is raised by the call once it has
    stopped retrieving results (or logged, when it had stopped already).

    ``parallel_config`` makes one backend for all the ``Parallel`` calls in
    it, and each call's end terminates it. A call that starts while another
    one runs (the caller reads a ``return_as="generator"`` output and calls
    ``Parallel`` in the loop) runs on a backend of its own instead, which
    its end terminates, so the call that runs keeps its thread of callbacks,
    its batches and its batch sizes. So does each call while the output of
    a ``return_as="generator"`` call is left unread and unclosed: that call
    runs until its output is closed or garbage.
    """

    default_n_jobs = -1
    supports_inner_max_num_threads = True
    supports_retrieve_callback = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, pool: Pool | None = None, max_retries: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if pool is None:
            # Parallel(backend="distex_zmq") makes its backend without the
            # arguments of the parallel_config around it: its own, then
            config = _backend_of_the_config()
            if config is not None:
                pool = config.pool
                max_retries = config.max_retries if max_retries is None else max_retries
        if max_retries is None:
            max_retries = 0
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(
                f'the "{NAME}" joblib backend\'s max_retries must be an integer >= 0, '
                f"not {max_retries!r}"
            )
        self.pool: Pool | None = pool
        #: how often a batch that kills its worker runs again (not the pool's
        #: max_retries: joblib runs each batch once, and loky fails the call
        #: at the first death)
        self.max_retries: int = max_retries
        self._callbacks: ThreadPoolExecutor | None = None
        self._pending: set[Future[Any]] = set()
        # the call's n_jobs, of which the workers' thread pools take their share
        self._n_jobs = 1
        self._lock = threading.Lock()
        # the Parallel call that runs on this backend, until it terminates it
        self._running: Any = None
        # the error of a completion callback, for the call to raise
        self._callback_error: BaseException | None = None

    def _the_pool(self) -> Pool:
        if self.pool is None:
            raise ValueError(
                f'the "{NAME}" joblib backend runs on a pool: pass it as '
                f'joblib.parallel_config(backend="{NAME}", pool=pool) (in it, '
                f'Parallel(backend="{NAME}") runs on that pool too)'
            )
        return self.pool

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs``; -1 (and ``None``) is every worker of the pool, -2 all
        but one, and never less than 2: joblib runs the calls of ``n_jobs``
        1 in the caller's process, which only an explicit ``n_jobs=1`` asks
        for, not a pool of one worker, or of two while one is replaced."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        workers = self._the_pool()._max_workers
        if n_jobs is None:
            return max(workers, 2)
        if n_jobs < 0:
            return max(workers + 1 + n_jobs, 2)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_args: Any) -> int:
        n = self.effective_n_jobs(n_jobs)
        if n == 1:  # joblib runs the calls itself, and does not terminate
            return n
        with self._lock:
            if self._running is not None and self._running is not parallel:
                # joblib configures and runs the backend it is given instead
                raise FallbackToBackend(self._fresh())
            self._running = parallel
        self.parallel = parallel
        self._n_jobs = n
        if self._callbacks is None:
            self._callbacks = ThreadPoolExecutor(1, thread_name_prefix="distex_zmq-joblib")
        return n

    def _fresh(self) -> DistexZmqBackend:
        """A backend like this one, for a call that starts while another runs."""
        return type(self)(
            pool=self.pool,
            max_retries=self.max_retries,
            nesting_level=self.nesting_level,
            inner_max_num_threads=self.inner_max_num_threads,
            # joblib 1.5 keeps the other arguments; 1.3 and 1.4 take no others
            **getattr(self, "backend_kwargs", {}),
        )

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        try:
            args = (func, self.inner_max_num_threads, self._n_jobs)
            future = self._the_pool()._submit_named(
                _batch_name(func), _run_batch, args, {}, self.max_retries
            )
        except Exception as error:  # noqa: BLE001 - joblib raises it from the batch
            # a batch that does not pickle (or a pool shut down) fails as a
            # batch: joblib dispatches most batches from a completion
            # callback, where nobody would see the error, and waits for ever
            future = Future()
            future.set_exception(error)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        if callback is not None:
            callbacks = self._callbacks
            assert callbacks is not None, "configure() comes first"
            future.add_done_callback(lambda f: _hand_over(callbacks, self._call_back, callback, f))
        return future

    # joblib 1.3 and 1.4 dispatch with apply_async, an abstract method there;
    # 1.5 renamed it submit
    apply_async = submit

    def _call_back(self, callback: Any, future: Future[Any]) -> None:
        """Run joblib's completion callback (a ``BatchCompletionCallBack``)
        on the thread of callbacks.

        Its error would end in the future of the thread pool, which nobody
        reads, and the call that waits for the batches the callback did not
        dispatch would wait for ever: the error stops the call's dispatch
        (joblib's ``_aborting``, as a failed batch does), and
        ``retrieval_context`` raises it in the caller.
        """
        try:
            callback(future)
        except BaseException as error:  # noqa: BLE001 - the caller raises it
            self._callback_failed(callback, error)

    def _callback_failed(self, callback: Any, error: BaseException) -> None:
        parallel = getattr(callback, "parallel", None)
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(
                f"distex_zmq: raised by joblib's completion callback of {parallel!r}, "
                "which reports progress and dispatches the next batches"
            )
        call_id = getattr(callback, "parallel_call_id", None)
        with self._lock:
            # not a callback of an earlier call of a Parallel that runs again
            ours = parallel is self._running and getattr(parallel, "_call_id", None) == call_id
            if parallel is not None and ours and self._callback_error is None:
                self._callback_error = error
                parallel._aborting = True
                return
        _log_callback_error(error)

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """joblib retrieves a call's results in it; its end raises the error
        of a completion callback of the call."""
        yield
        with self._lock:
            error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def start_call(self) -> None:
        """A ``Parallel`` call starts (on a backend that ``with Parallel()``
        keeps for several calls)."""
        self._log_unraised()

    def _log_unraised(self) -> None:
        """Log the error of a callback that came after its call had stopped
        retrieving results, which nobody raises."""
        with self._lock:
            error, self._callback_error = self._callback_error, None
        if error is not None:
            _log_callback_error(error)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches that have not started (after an error), and
        give up those that run: their results are dropped, and one that
        kills its worker is not run again."""
        with self._lock:
            pending, self._pending = self._pending, set()
        for future in pending:
            if isinstance(future, TaskFuture):
                future.abandon()
            else:
                future.cancel()

    def terminate(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            # from a callback itself joblib cannot wait for its own thread
            on_it = threading.current_thread().name.startswith("distex_zmq-joblib")
            callbacks.shutdown(wait=not on_it)
        self.reset_batch_stats()
        with self._lock:
            self._running = None
        self._log_unraised()


def _backend_of_the_config() -> DistexZmqBackend | None:
    """The ``"distex_zmq"`` backend that the active ``parallel_config`` (or
    ``parallel_backend``) holds, if any."""
    backend, _ = joblib.parallel.get_active_backend()
    return backend if isinstance(backend, DistexZmqBackend) else None


def _hand_over(
    callbacks: ThreadPoolExecutor, call_back: Any, callback: Any, future: Future[Any]
) -> None:
    try:
        callbacks.submit(call_back, callback, future)
    except RuntimeError:  # the Parallel call has ended (terminate): nobody waits for it
        pass


def _log_callback_error(error: BaseException) -> None:
    _logger.error(
        "joblib's completion callback failed where its Parallel call does not raise "
        "the error: the call had stopped retrieving results (a Parallel subclass's "
        "print_progress, say, failed at the last result), or raises another error",
        exc_info=error,
    )


def register() -> None:
    """Register the backend with joblib as ``"distex_zmq"`` (importing this
    module does it once)."""
    joblib.register_parallel_backend(NAME, DistexZmqBackend)


register()
