"""What the benchmark measures: pools, workloads, their sizes and metrics.

Shared by ``run.py`` (labels, units, which direction is better) and
``_one.py`` (sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Pools in table order. The ratio column of every pool is against ``distex``.
#: ``pyzmq`` is no pool: plain ROUTER/DEALER sockets echoing frames, the floor
#: under what any pool built on ZeroMQ can do (``RAW_WORKLOADS`` only).
POOLS: tuple[str, ...] = ("distex_zmq", "distex", "process", "loky", "pyzmq")
#: Workloads that ``pyzmq`` measures.
RAW_WORKLOADS = ("map_cs1", "map_cs1_q16", "map_cs100", "latency", "latency_sync", "echo")
#: The pool that all ratios are computed against.
BASELINE = "distex"
#: Workers per pool.
NUM_WORKERS = 2
#: Size of the payload of the ``bytes_arg`` and ``echo`` workloads.
PAYLOAD_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Metric:
    """One number that a workload reports, i.e. one row of the table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    """One measurement; ``n`` is its size (tasks, iterations or payloads)."""

    name: str
    n_full: int
    n_quick: int
    metrics: tuple[Metric, ...]
    #: Whether the pool is driven from plain synchronous code (no running
    #: event loop), rather than from coroutines on a uvloop client loop.
    sync_client: bool = False
    #: ``qsize`` of distex and distex_zmq pools (None: their default, 2).
    qsize: int | None = None

    def size(self, quick: bool) -> int:
        """Return the size to use, smaller with ``--quick``."""
        return self.n_quick if quick else self.n_full


def _tput(key: str, label: str) -> tuple[Metric, ...]:
    """Return a one-metric tuple for a throughput in tasks per second."""
    return (Metric(key, label, "tasks/s", True),)


def _percentiles(key: str, label: str) -> tuple[Metric, ...]:
    """Return the p50 and p99 metrics of a latency in microseconds."""
    return tuple(Metric(f"{key}_{p}", f"{label}, {p}", "µs", False) for p in ("p50", "p99"))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("map_default", 100_000, 10_000, _tput("map_default", "map_async g, defaults")),
        Workload("map_cs1", 100_000, 10_000, _tput("map_cs1", "map_async g, chunksize=1")),
        Workload(
            "map_cs1_q16",
            100_000,
            10_000,
            _tput("map_cs1_q16", "map_async g, chunksize=1, qsize=16"),
            qsize=16,
        ),
        Workload(
            "map_cs100",
            1_000_000,
            100_000,
            _tput("map_cs100", "map_async g, chunksize=100"),
        ),
        Workload(
            "sync_map",
            100_000,
            10_000,
            _tput("sync_map", "sync map g, defaults"),
            sync_client=True,
        ),
        Workload(
            "small_maps",
            500,
            50,
            _tput("small_maps", "sync map g over 60 inputs, map after map"),
            sync_client=True,
        ),
        Workload(
            "submit",
            20_000,
            2_000,
            _tput("submit", "submit g + wait all"),
            sync_client=True,
        ),
        Workload(
            "latency",
            2_000,
            200,
            _percentiles("latency", "one at a time, await run_async"),
        ),
        Workload(
            "latency_sync",
            2_000,
            200,
            _percentiles("latency_sync", "one at a time, sync run"),
            sync_client=True,
        ),
        Workload(
            "bytes_arg",
            200,
            20,
            (Metric("bytes_arg", "10 MiB argument, returns len", "MB/s", True),),
        ),
        Workload(
            "echo",
            50,
            10,
            (Metric("echo", "10 MiB echo", "MB/s each way", True),),
        ),
        Workload(
            "startup",
            1,
            1,
            (Metric("startup", "Pool(2) to first result", "ms", False),),
        ),
        Workload(
            "import",
            7,
            3,
            (Metric("import", "import of the pool", "ms", False),),
        ),
        Workload(
            "cpu",
            200,
            20,
            (Metric("cpu_speedup", "CPU-bound map, 2 workers vs serial", "speedup", True),),
        ),
    )
}
