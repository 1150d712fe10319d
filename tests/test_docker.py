"""The docker compose cluster of ``docker/``, run for real on a private Docker engine.

The module starts its own dockerd (``tests/cluster/docker-engine.sh``: own
socket and data, no iptables, no default bridge; never a system daemon),
makes a base image with debootstrap (no registry is reachable), builds
``docker/Dockerfile`` from wheels made here, brings ``docker/docker-compose.yml``
up with keys from ``docker/make-keys.sh``, and at the end brings it down,
stops the engine and deletes everything it made. If the engine cannot start
on this machine, the tests are skipped with the reason.

The compose network gets a /24 that no route or address of this machine
overlaps (a bridge left by an earlier run would otherwise capture the
nodes' addresses), and a bridge of a fixed name that is deleted at the end
and, if an interrupted run left it, at the start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from distex_zmq import Pool
from tests.helpers import wait_until
from tests.multihost import ROOT

pytestmark = [pytest.mark.timeout(900)]

ENGINE = ROOT / "tests" / "cluster" / "docker-engine.sh"
PROJECT = "dzqtest"
#: the compose network's Linux bridge (DZQ_DOCKER_BRIDGE in docker/docker-compose.yml)
BRIDGE = "dzqtest0"
#: this Python's major and minor version
OURS = f"{sys.version_info[0]}.{sys.version_info[1]}"
#: /24s tried for the compose network (DZQ_DOCKER_NET), the compose file's default first
CANDIDATES = [f"10.215.{i}" for i in range(256)] + [f"172.29.{i}" for i in range(256)]


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this machine's routes (every table) and addresses."""
    taken = []
    for cmd in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
        for entry in json.loads(out or "[]"):
            if "dst" in entry and entry["dst"] != "default":
                taken.append(ipaddress.ip_network(entry["dst"], strict=False))
            for info in entry.get("addr_info", []):
                if info.get("family") == "inet":
                    net = f"{info['local']}/{info['prefixlen']}"
                    taken.append(ipaddress.ip_network(net, strict=False))
    return [net for net in taken if isinstance(net, ipaddress.IPv4Network)]


def free_net() -> str | None:
    """The first three octets of a /24 that nothing on this machine uses."""
    taken = _taken_networks()
    for prefix in CANDIDATES:
        net = ipaddress.ip_network(f"{prefix}.0/24")
        if not any(net.overlaps(other) for other in taken):
            return prefix
    return None


def remove_bridge() -> None:
    """Delete the compose network's bridge if a run left it (quietly if none)."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a private Docker engine needs root; CI runs these tests as root"
    missing = [
        t for t in ("dockerd", "docker", "docker-compose", "debootstrap") if not shutil.which(t)
    ]
    if missing:
        return f"missing {missing}: apt-get install docker.io docker-compose debootstrap"
    return None


REASON = _unavailable()
if REASON:
    pytestmark.append(pytest.mark.skipif(True, reason=REASON))


class Cluster:
    """The compose project on the private engine."""

    def __init__(self, workdir: Path, net: str):
        self.workdir = workdir
        #: where the compose file puts the spawner nodes
        self.spawners = (f"{net}.11", f"{net}.12")
        self.engine = workdir / "engine"
        self.context = workdir / "context"
        #: the major and minor version of the image's Python (``build``)
        self.python = ""
        self.keys = self.context / "docker" / "keys"
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.engine}/docker.sock",
            "DZQ_IMAGE": "distex_zmq:test",
            "DZQ_KEYS": str(self.keys),
            "DZQ_DOCKER_NET": net,
            "DZQ_DOCKER_BRIDGE": BRIDGE,
        }

    def run(self, *cmd: str, timeout: float = 300, check: bool = True) -> str:
        result = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result.stdout

    def compose(self, *args: str, **kwargs: object) -> str:
        file = str(self.context / "docker" / "docker-compose.yml")
        return self.run("docker-compose", "-p", PROJECT, "-f", file, *args, **kwargs)  # type: ignore[arg-type]

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def build(self) -> None:
        """The image from wheels made here: the build itself needs no network."""
        ctx = self.context
        ctx.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", ".dockerignore"):
            shutil.copy(ROOT / name, ctx / name)
        for name in ("distex_zmq", "broker", "worker", "docker"):
            shutil.copytree(
                ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__", "keys")
            )
        wheels = str(ctx / "wheels")
        self.python = self.run(
            "docker", "run", "--rm", "--network", "none", "dzq/base:1", "python3", "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ).strip()  # fmt: skip
        if self.python == OURS:
            self.run(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", wheels, str(ctx),
                     timeout=600)  # fmt: skip
        else:
            # the suite runs on another Python than the image's: this package's
            # wheel, then its dependencies' for the image's Python
            self.run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
                     wheels, str(ctx), timeout=600)  # fmt: skip
            (ours,) = Path(wheels).glob("distex_zmq-*.whl")
            self.run(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                     "--python-version", self.python, "--dest", wheels, str(ours),
                     timeout=600)  # fmt: skip
        self.run(
            "docker", "build", "-q", "-f", str(ctx / "docker" / "Dockerfile"),
            "--build-arg", "BASE=dzq/base:1",
            "--build-arg", "PACKAGE=distex_zmq",
            "--build-arg", "PIP_OPTIONS=--no-index --find-links /src/wheels",
            "-t", "distex_zmq:test", str(ctx),
            timeout=600,
        )  # fmt: skip
        self.run("bash", str(ctx / "docker" / "make-keys.sh"), str(self.keys))


@pytest.fixture(scope="module")
def cluster():
    remove_bridge()  # left by a run that was killed before its teardown
    net = free_net()
    if net is None:
        pytest.skip(f"every /24 of {CANDIDATES[0]}.0 .. {CANDIDATES[-1]}.0 is in use here")
    workdir = Path(tempfile.mkdtemp(prefix="dzq-docker-"))
    c = Cluster(workdir, net)
    try:
        up = subprocess.run(
            ["bash", str(ENGINE), "up", str(c.engine)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if up.returncode != 0:
            reason = f"the private Docker engine could not start here: {up.stderr.strip()}"
            print(reason, file=sys.stderr)
            pytest.skip(reason)
        c.build()
        c.compose("up", "-d", "--no-build", timeout=300)
        yield c
    finally:
        if (c.context / "docker" / "docker-compose.yml").exists():
            c.compose("down", "-v", "--remove-orphans", timeout=120, check=False)
        subprocess.run(["bash", str(ENGINE), "down", str(c.engine)], timeout=120, check=False)
        remove_bridge()  # if the engine went down before the network
        shutil.rmtree(workdir, ignore_errors=True)


def test_client_container_computes_on_every_node(cluster):
    client = cluster.container("client")
    assert cluster.run("docker", "wait", client, timeout=180).strip() == "0"
    out = cluster.run("docker", "logs", client)
    for host in ("client", "spawner-1", "spawner-2", "ssh-node"):
        assert f"host {host}, worker pid" in out, out
    assert "primes below 2,000,000: 148,933" in out and out.rstrip().endswith("OK")


@pytest.fixture
def host_pool(cluster, monkeypatch):
    """A pool on the Docker host with every node of the cluster."""
    if cluster.python != OURS:
        # a host of another Python is refused (test_spawner_service)
        pytest.skip(f"the nodes run Python {cluster.python} (Debian's), these tests {OURS}")
    monkeypatch.setenv("HOME", str(cluster.keys / "host"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    pool = Pool(
        None,
        [f"{cluster.spawners[0]}/2", f"{cluster.spawners[1]}/2", "ssh://ssh-node/2"],
        secret_file=str(cluster.keys / "secret"),
        remote_python={"ssh-node": "/opt/distex_zmq/bin/python"},
        heartbeat_timeout=4,
    )
    try:
        yield pool
    finally:
        pool.shutdown()


def where_and_square(delay: float = 0.0):
    """A task function defined at run time, so that it travels by value: the
    nodes have distex_zmq, not these tests."""

    def task(x: int) -> tuple[str, int]:
        time.sleep(delay)
        return socket.gethostname(), x * x

    return task


def test_pool_on_the_host_uses_every_node(host_pool):
    assert sorted(host_pool.run_on_all(socket.gethostname)) == [
        "spawner-1", "spawner-1", "spawner-2", "spawner-2", "ssh-node", "ssh-node"
    ]  # fmt: skip
    results = list(host_pool.map(where_and_square(), range(300)))
    assert [r for _, r in results] == [x * x for x in range(300)]
    assert {h for h, _ in results} == {"spawner-1", "spawner-2", "ssh-node"}


def test_node_killed_mid_map(cluster, host_pool):
    host_pool.run_on_all(int, 0)
    results = []
    for i, (_, r) in enumerate(host_pool.map(where_and_square(0.05), range(200))):
        results.append(r)
        if i == 20:
            cluster.run("docker", "kill", cluster.container("spawner-2"))
    assert results == [x * x for x in range(200)]
    assert wait_until(
        lambda: "spawner-2" not in host_pool.run_on_all(socket.gethostname), timeout=30
    )
