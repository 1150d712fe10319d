"""Network-namespace hosts for the soak and many-hosts runs (needs root).

Like the test suite's cluster (``tests/multihost.py``), built with the same
scripts (``tests/cluster/netns.sh``, ``sshd.sh``), but under names, a
subnet and a bridge of its own (``dzs-1``..., 10.214.0.0/24, ``dzs-br0``),
so that it never meets the suite's ``dzq-*`` hosts. Each host is either an
SSH host (an sshd of its own) or a spawner host (``python -m
distex_zmq.spawner`` with a shared secret). The namespaces share this
machine's file system, so the remote interpreter is this one, with the
repository and ``benchmarks/`` on ``PYTHONPATH``.

``Hosts.down()`` ends everything it started and deletes the namespaces;
``Hosts.up()`` registers it with ``atexit`` and makes SIGTERM and SIGHUP
exit through it too (Ctrl-C raises ``KeyboardInterrupt``, which does).
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = ROOT / "tests" / "cluster"
NET = "10.214.0"
BRIDGE = "dzs-br0"
SECRET = "distex_zmq soak secret 7f3a"
SPAWNER_PORT = 8899
#: what every process of a host marks as the pool's own
POOL_TAGS = ("distex_zmq.worker", "distex_zmq.agent")


def unavailable() -> str | None:
    """Why no hosts can be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("/usr/sbin/sshd", shutil.which("ip"), shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return f"missing {tool or 'ip/ssh-keygen'}: apt-get install openssh-server iproute2"
    return None


def remote_env(extra: dict[str, str] | None = None) -> list[str]:
    """``env VAR=... python``: this interpreter, with the repository importable."""
    env = {"PYTHONPATH": f"{ROOT}:{BENCH}", **(extra or {})}
    return ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable]


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(parent: int) -> list[int]:
    """Live processes below ``parent`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state = proc_state(int(entry))
            if state and state[0] != "Z":
                children.setdefault(state[1], []).append(int(entry))
    found, todo = [], [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Hosts:
    """Namespaces ``dzs-1``... with an sshd or a spawner each, and a client HOME."""

    def __init__(self, ssh: int, spawner: int, env: dict[str, str] | None = None):
        self.names = [f"dzs-{i + 1}" for i in range(ssh + spawner)]
        self.ssh_hosts = self.names[:ssh]
        self.spawner_hosts = self.names[ssh:]
        self.dir = Path(tempfile.mkdtemp(prefix="dzs-hosts-"))
        self.home = self.dir / "home"
        self.secret_file = self.dir / "cluster.secret"
        self.env = env or {}
        self.addresses: dict[str, str] = {}
        self.sshd_pids: dict[str, int] = {}
        self.spawner_pids: dict[str, int] = {}
        self._down = False

    # building and tearing down

    def up(self) -> None:
        atexit.register(self.down)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        out = self._run(SCRIPTS / "netns.sh", "up", *self.names)
        for line in out.splitlines():
            name, address = line.split()
            self.addresses[name] = address
        self.secret_file.write_text(SECRET + "\n")
        self.secret_file.chmod(0o600)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        key = ssh_dir / "id_ed25519"
        self._run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dzs", "-f", key)
        config, known = [], []
        for host in self.ssh_hosts:
            host_key = self._run(
                SCRIPTS / "sshd.sh", "start", self.dir / host, f"{key}.pub", "0.0.0.0", "22", host
            ).strip()
            self.sshd_pids[host] = int((self.dir / host / "sshd.pid").read_text())
            address = self.addresses[host]
            config.append(f"Host {host}\n  HostName {address}\n  User root\n  IdentityFile {key}\n")
            known.append(f"{address} {host_key}\n")
        (ssh_dir / "config").write_text("".join(config))
        (ssh_dir / "known_hosts").write_text("".join(known))
        for host in self.spawner_hosts:
            self.start_spawner(host)

    def down(self) -> None:
        """Stop every sshd and spawner, end what still runs, delete the namespaces."""
        if self._down:
            return
        self._down = True
        for host in self.names:
            subprocess.run(["ip", "link", "set", f"{host}-h", "up"], capture_output=True)
        for pid in self.spawner_pids.values():
            _kill(pid, signal.SIGTERM)
        for host in self.ssh_hosts:
            subprocess.run([SCRIPTS / "sshd.sh", "stop", self.dir / host], capture_output=True)
        env = dict(os.environ, DZQ_NET=NET, DZQ_BRIDGE=BRIDGE)
        subprocess.run(
            [SCRIPTS / "netns.sh", "down", *self.names], env=env, capture_output=True, check=False
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    # hosts

    def specs(self, per_host: int) -> list[str]:
        """Host specs for a pool: ``ssh://name/N`` and ``address/N`` for spawners."""
        return [f"ssh://{h}/{per_host}" for h in self.ssh_hosts] + [
            f"{self.addresses[h]}/{per_host}" for h in self.spawner_hosts
        ]

    def host_of(self, spec: str) -> str:
        """The namespace behind a host spec."""
        where = spec.removeprefix("ssh://").split("/")[0].split(":")[0]
        by_address = {a: h for h, a in self.addresses.items()}
        return by_address.get(where, where)

    def link(self, host: str, up: bool) -> None:
        """Connect or cut off a host (its end of the bridge up or down)."""
        self._run("ip", "link", "set", f"{host}-h", "up" if up else "down")

    def processes(self, host: str) -> dict[int, str]:
        """Live processes in a host's namespace: pid -> command line."""
        out = subprocess.run(
            ["ip", "netns", "pids", host], capture_output=True, text=True, check=False
        ).stdout
        return {pid: cmdline(pid) for pid in map(int, out.split()) if alive(pid)}

    def workers(self, host: str) -> list[int]:
        return [pid for pid, cmd in self.processes(host).items() if "distex_zmq.worker" in cmd]

    def pool_processes(self) -> dict[str, dict[int, str]]:
        """Agents and workers of any pool, by host (not the spawners or sshds)."""
        found = {}
        for host in self.names:
            procs = {
                pid: cmd
                for pid, cmd in self.processes(host).items()
                if any(tag in cmd for tag in POOL_TAGS)
            }
            if procs:
                found[host] = procs
        return found

    # spawners

    def start_spawner(self, host: str, max_workers: int = 16) -> int:
        """``python -m distex_zmq.spawner`` in ``host`` (host name = ``host``), up."""
        log = self.dir / f"spawner-{host}.log"
        argv = ["ip", "netns", "exec", host, "unshare", "--uts", "sh", "-c",
                f'hostname {host} && exec "$@"', "sh", *remote_env(self.env),
                "-m", "distex_zmq.spawner", "--port", str(SPAWNER_PORT),
                "--secret-file", str(self.secret_file),
                "--max-workers", str(max_workers)]  # fmt: skip
        subprocess.run(
            ["sh", "-c", f"{shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1 &"],
            check=True,
        )
        tag = f"distex_zmq.spawner --port {SPAWNER_PORT}"
        probe = ["ip", "netns", "exec", host, "bash", "-c",
                 f"exec 3<>/dev/tcp/{self.addresses[host]}/{SPAWNER_PORT}"]  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            pids = [pid for pid, cmd in self.processes(host).items() if tag in cmd]
            if pids and subprocess.run(probe, capture_output=True).returncode == 0:
                self.spawner_pids[host] = pids[0]
                return pids[0]
            if time.monotonic() > deadline:
                for pid in pids:
                    _kill(pid, signal.SIGKILL)
                raise RuntimeError(f"the spawner on {host} did not start: {log.read_text()}")
            time.sleep(0.05)

    def kill_spawner(self, host: str) -> None:
        """SIGKILL the spawner of ``host`` and wait until it is gone."""
        pid = self.spawner_pids.pop(host)
        _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _run(*cmd: Any) -> str:
        env = dict(os.environ, DZQ_NET=NET, DZQ_BRIDGE=BRIDGE)
        result = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=60, env=env
        )
        if result.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
