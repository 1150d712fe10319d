"""A real multi-host cluster on this one machine, for the SSH tests.

Each host is a Linux network namespace on a bridge, with its own address,
host name and sshd (``tests/cluster/netns.sh`` and ``sshd.sh``, started with
their own config and keys, never the system's). The client side is a
throwaway ``HOME`` with ``~/.ssh/config`` (an alias per host), a key and
``known_hosts``; tests point ``HOME`` at it. The namespaces share this
machine's file system, so the remote interpreter is this virtual
environment's, run with the repository on ``PYTHONPATH`` (``REMOTE_PYTHON``).

Needs root. Teardown stops every sshd, kills whatever still runs in the
namespaces and deletes them, also when a test failed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distex_zmq.worker.keeper import KEEPER_NAME

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "cluster"
#: the hosts' names; each is its namespace and its host name
HOSTS = ("dzq-a", "dzq-b", "dzq-c")
#: the command that runs Python on a host: this venv's, able to import the tests
REMOTE_PYTHON_ARGV = ["env", f"PYTHONPATH={ROOT}", sys.executable]
REMOTE_PYTHON = shlex.join(REMOTE_PYTHON_ARGV)


def unavailable() -> str | None:
    """Why no cluster can be made here, or None."""
    if os.geteuid() != 0:
        return "the multi-host tests need root (network namespaces); CI runs them as root"
    for tool in ("/usr/sbin/sshd", shutil.which("ip"), shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return f"missing {tool or 'ip/ssh-keygen'}: apt-get install openssh-server iproute2"
    return None


class Cluster:
    """Namespaces with an sshd each, and a client HOME that can reach them."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dzq-cluster-"))
        self.home = self.dir / "home"
        self.addresses: dict[str, str] = {}
        self.host_keys: dict[str, str] = {}
        self.sshd_pids: dict[str, int] = {}

    def up(self) -> None:
        out = self._run(SCRIPTS / "netns.sh", "up", *HOSTS)
        for line in out.splitlines():
            name, address = line.split()
            self.addresses[name] = address
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        key = ssh_dir / "id_ed25519"
        self._run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dzq-test", "-f", key)
        authorized = self.dir / "authorized_keys"
        shutil.copy(f"{key}.pub", authorized)
        for host in HOSTS:
            sshd_dir = self.dir / host
            line = self._run(
                SCRIPTS / "sshd.sh", "start", sshd_dir, authorized, "0.0.0.0", "22", host
            )
            self.host_keys[host] = line.strip()
            self.sshd_pids[host] = int((sshd_dir / "sshd.pid").read_text())
        self.write_home(self.home, HOSTS)

    def write_home(self, home: Path, trusted: tuple[str, ...], key: Path | None = None) -> None:
        """``~/.ssh`` in ``home``: an alias per host, ``known_hosts`` for ``trusted``."""
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = key or self.home / ".ssh" / "id_ed25519"
        config = "".join(
            f"Host {host}\n  HostName {address}\n  User root\n  IdentityFile {key}\n"
            for host, address in self.addresses.items()
        )
        (ssh_dir / "config").write_text(config)
        (ssh_dir / "known_hosts").write_text(
            "".join(f"{self.addresses[h]} {self.host_keys[h]}\n" for h in trusted)
        )

    def other_home(self, name: str, trusted: tuple[str, ...], own_key: bool = False) -> Path:
        """Another client HOME: trusting only ``trusted``, with a key of its own."""
        home = self.dir / name
        key = None
        if own_key:
            (home / ".ssh").mkdir(parents=True, mode=0o700)
            key = home / ".ssh" / "id_ed25519"
            self._run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        self.write_home(home, trusted, key)
        return home

    def link(self, host: str, up: bool) -> None:
        """Connect or cut off a host (its link to the bridge up or down)."""
        self._run("ip", "link", "set", f"{host}-h", "up" if up else "down")

    def processes(self, host: str) -> dict[int, str]:
        """Live processes in a host's namespace but its sshd listener: pid -> cmdline."""
        out = subprocess.run(
            ["ip", "netns", "pids", host], capture_output=True, text=True, check=False
        ).stdout
        found = {}
        for pid in map(int, out.split()):
            if pid == self.sshd_pids.get(host):
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] != "Z":
                found[pid] = cmdline
        return found

    def workers(self, host: str) -> list[int]:
        """Pids of the workers of any pool on ``host``."""
        return [pid for pid, cmd in self.processes(host).items() if "distex_zmq.worker" in cmd]

    def worker_connect(self, host: str) -> str:
        """The broker endpoint that a worker on ``host`` was told to connect to:
        its ``--connect`` argument (the worker's public CLI)."""
        for pid in self.workers(host):
            args = self.processes(host).get(pid, "").split()
            for i, arg in enumerate(args):
                if arg.startswith("--connect="):
                    return arg.partition("=")[2]
                if arg == "--connect" and i + 1 < len(args):
                    return args[i + 1]
        raise LookupError(f"no worker on {host} tells its broker endpoint")

    def pool_processes(self) -> dict[str, dict[int, str]]:
        """Agents, workers and their keepers of any pool, by host (not the spawners)."""
        found = {}
        marks = ("distex_zmq.worker", "distex_zmq.agent", KEEPER_NAME)
        for host in HOSTS:
            procs = {
                pid: cmd
                for pid, cmd in self.processes(host).items()
                if any(mark in cmd for mark in marks)
            }
            if procs:
                found[host] = procs
        return found

    def start_spawner(self, host: str, *args: str, port: int = 8899) -> Daemon:
        """``python -m distex_zmq.spawner`` on ``host`` (host name = ``host``), up.

        It runs as a daemon, not as a child of the tests, like a service
        started on a real host (the leak checks count only our children).
        """
        log = self.dir / f"spawner-{host}.log"
        argv = ["ip", "netns", "exec", host, "unshare", "--uts", "sh", "-c",
                f'hostname {host} && exec "$@"', "sh", *REMOTE_PYTHON_ARGV,
                "-m", "distex_zmq.spawner", "--port", str(port), *args]  # fmt: skip
        subprocess.run(
            ["sh", "-c", f"{shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1 &"],
            check=True,
        )
        tag = f"distex_zmq.spawner --port {port}"
        address = "127.0.0.1" if "127.0.0.1" in args else self.addresses[host]
        probe = ["ip", "netns", "exec", host, "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]
        deadline = time.monotonic() + 15
        while True:
            pids = [pid for pid, cmd in self.processes(host).items() if tag in cmd]
            if pids and subprocess.run(probe, capture_output=True).returncode == 0:
                return Daemon(pids[0])
            if time.monotonic() > deadline:
                for pid in pids:
                    Daemon(pid).kill()
                raise RuntimeError(f"the spawner on {host} did not start: {self.spawner_log(host)}")
            time.sleep(0.05)

    def spawner_log(self, host: str) -> str:
        path = self.dir / f"spawner-{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def down(self) -> None:
        for host in HOSTS:
            subprocess.run([SCRIPTS / "sshd.sh", "stop", self.dir / host], check=False)
        subprocess.run([SCRIPTS / "netns.sh", "down", *HOSTS], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _run(*cmd: object) -> str:
        result = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout


class Capture:
    """Every frame that crosses an interface, as raw bytes (an AF_PACKET socket).

    ``with Capture("dzq-br0") as cap: ...`` then ``cap.data``. Needs root.
    """

    def __init__(self, interface: str):
        import socket

        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        # big enough that nothing is dropped while Python catches up
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self._sock.bind((interface, 0))
        self._sock.settimeout(0.1)
        self.data = bytearray()
        self.packets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(1 << 18)  # offloaded segments exceed the MTU
            except TimeoutError:
                continue
            except OSError:
                return
            self.data += frame
            self.packets += 1

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def hostnames(pool: Any) -> list[str]:
    """The host name of every worker of ``pool``, sorted."""
    import socket

    return sorted(pool.run_on_all(socket.gethostname))


class Daemon:
    """A process that is not our child, by pid: enough of ``Popen`` for the tests."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                stat = f.read()
        except OSError:
            return 0
        return 0 if stat[stat.rindex(")") + 2] == "Z" else None

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return 0
