"""What the soak and many-hosts runs share: fault injection, counters, leak checks.

``Chaos`` is a thread that, until stopped, SIGKILLs random workers of the
pool (local ones: the client's descendants; remote ones: found in the
hosts' namespaces), cuts a host off and reconnects it, and restarts a
spawner. ``LogCounter`` counts the pool's "host lost" and "reconnected"
warnings. ``leftovers()`` lists what a pool left behind after shutdown.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import signal
import tempfile
import threading
import time
from collections import Counter

from _netns import Hosts, cmdline, descendants

#: the broker's account of a lost worker's tasks, in its warning
_REQUEUED = re.compile(r"of its tasks, (\d+) will run again and (\d+) failed")


def local_workers() -> list[int]:
    """This process's worker processes (of any of its pools)."""
    return [pid for pid in descendants(os.getpid()) if "distex_zmq.worker" in cmdline(pid)]


class Chaos(threading.Thread):
    """Random faults every ``interval`` seconds (a range) until ``stop()``."""

    def __init__(
        self,
        hosts: Hosts,
        counts: Counter[str],
        seed: int,
        interval: tuple[float, float] = (0.5, 2.0),
        cut_for: tuple[float, float] = (3.0, 8.0),
    ):
        super().__init__(name="chaos", daemon=True)
        self.hosts = hosts
        self.counts = counts
        self.rng = random.Random(seed)
        self.interval = interval
        self.cut_for = cut_for
        self.cut: dict[str, float] = {}  # host -> when to reconnect it
        self._halt = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._halt.wait(self.rng.uniform(*self.interval)):
            try:
                self._reconnect_due()
                action = self.rng.choices(["kill", "cut", "spawner"], weights=[8, 2, 1])[0]
                getattr(self, f"_{action}")()
            except Exception as e:  # noqa: BLE001  (reported at the end; the run goes on)
                self.errors.append(f"{type(e).__name__}: {e}")

    def stop(self) -> None:
        """Stop, and reconnect every host that is cut off."""
        self._halt.set()
        self.join(30)
        for host in list(self.cut):
            self.hosts.link(host, up=True)
            self.counts["links restored"] += 1
        self.cut.clear()
        for host in self.hosts.spawner_hosts:
            if host not in self.hosts.spawner_pids:
                self.hosts.start_spawner(host)

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for host, when in list(self.cut.items()):
            if now >= when:
                self.hosts.link(host, up=True)
                del self.cut[host]
                self.counts["links restored"] += 1

    def _kill(self) -> None:
        victims = local_workers()
        for host in self.hosts.names:
            if host not in self.cut:
                victims += self.hosts.workers(host)
        if victims:
            try:
                os.kill(self.rng.choice(victims), signal.SIGKILL)
                self.counts["workers SIGKILLed"] += 1
            except ProcessLookupError:
                pass

    def _cut(self) -> None:
        if self.cut:  # one host off at a time: the others keep the work going
            return
        host = self.rng.choice(self.hosts.names)
        self.hosts.link(host, up=False)
        self.cut[host] = time.monotonic() + self.rng.uniform(*self.cut_for)
        self.counts["links cut"] += 1

    def _spawner(self) -> None:
        candidates = [h for h in self.hosts.spawner_hosts if h not in self.cut]
        if not candidates:
            return
        host = self.rng.choice(candidates)
        self.hosts.kill_spawner(host)
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.hosts.start_spawner(host)
        self.counts["spawner restarts"] += 1


class LogCounter(logging.Handler):
    """Counts the pool's host-lost and reconnected warnings; keeps their times."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.lost: list[tuple[float, str]] = []
        self.reconnected: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("host ") and " lost" in message:
            self.counts["hosts lost (pool log)"] += 1
            self.lost.append((time.time(), message))
        elif message.startswith("reconnected to"):
            self.counts["reconnects (pool log)"] += 1
            self.reconnected.append((time.time(), message))
        elif message.startswith("cannot reconnect"):
            self.counts["failed reconnect attempts (pool log)"] += 1
        elif " was lost (" in message:
            self.counts["workers lost (pool log)"] += 1
            if found := _REQUEUED.search(message):
                self.counts["tasks to run again (pool log)"] += int(found[1])
                self.counts["tasks failed (pool log)"] += int(found[2])

    def install(self) -> LogCounter:
        logger = logging.getLogger("distex_zmq")
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        return self


def ipc_dirs() -> list[str]:
    """This process's pools' ipc directories that still exist."""
    pattern = f"distex_zmq-{os.getpid()}-*"
    found = set(glob.glob(os.path.join(tempfile.gettempdir(), pattern)))
    return sorted(found | set(glob.glob(os.path.join("/tmp", pattern))))


def leftovers(hosts: Hosts, timeout: float) -> list[str]:
    """What still runs or exists of the pool ``timeout`` s after its shutdown."""
    deadline = time.monotonic() + timeout
    while True:
        left = [f"local worker {pid}" for pid in local_workers()]
        for host, procs in hosts.pool_processes().items():
            left += [f"{host}: {pid} {cmd[:80]}" for pid, cmd in procs.items()]
        left += [f"ipc directory {d}" for d in ipc_dirs()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
