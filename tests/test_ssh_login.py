"""SSH logins as a client sets them up (its keys, its agent, its
``~/.ssh/config`` and ``known_hosts``) and as the host's sshd allows them,
and SSH hosts at the client's exit, against a throwaway sshd on this
machine's loopback.

Unlike ``test_ssh`` these need no network namespaces: an sshd of the
project's own (``tests/cluster/sshd.sh``) listens on ``127.0.0.1`` (at
``DZQ_TEST_SSHD_PORT`` and the ports after it if set, else on free ports),
and a client ``HOME`` of the module's own names it ``loop`` in
``~/.ssh/config``. Needs root (sshd's privilege separation directory) and
openssh-server.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref
from pathlib import Path

import paramiko
import pytest

from distex_zmq import HostConnectionError, __version__
from distex_zmq.hostspec import HostSpec
from distex_zmq.launch import ssh_connect
from distex_zmq.launch.ssh_tunnel import ReverseTunnel
from distex_zmq.options import DEFAULT_CONNECT_TIMEOUT
from distex_zmq.wire import control, frames
from tests import tasks
from tests.helpers import child_pids, pid_alive, pool_threads, wait_until
from tests.multihost import REMOTE_PYTHON, ROOT, SCRIPTS

pytestmark = pytest.mark.timeout(60)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the loopback sshd needs root; CI runs the tests as root"
    for tool in ("/usr/sbin/sshd", shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return "missing sshd or ssh-keygen: apt-get install openssh-server"
    return None


REASON = _unavailable()
if REASON:
    pytestmark = [pytestmark, pytest.mark.skip(reason=REASON)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "dzq-test", "-f", path],
        check=True,
    )
    return path


class Loopback:
    """An sshd on 127.0.0.1 and a client ``HOME`` that reaches it as ``loop``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dzq-sshd-"))
        self.port = self._port()
        self.key = _keygen(self.dir / "id_ed25519")
        self.locked_key = _keygen(self.dir / "locked_ed25519", passphrase="not asked for")
        authorized = self.dir / "authorized_keys"
        authorized.write_text(
            Path(f"{self.key}.pub").read_text() + Path(f"{self.locked_key}.pub").read_text()
        )
        result = subprocess.run(
            [SCRIPTS / "sshd.sh", "start", self.dir / "sshd", authorized, "127.0.0.1",
             str(self.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"the loopback sshd did not start: {result.stderr}")
        #: the host's key as known_hosts lists it: ``[127.0.0.1]:PORT TYPE BASE64``
        self.known = f"[127.0.0.1]:{self.port} {result.stdout.strip()}"
        self._variants: list[Path] = []

    def home(
        self,
        name: str,
        known_hosts: str,
        key: Path | None = None,
        included: bool = False,
        extra_config: str = "",
    ) -> Path:
        """A client HOME: ``loop`` logs in with ``key`` (by default one that
        the sshd accepts); ``known_hosts`` is its ``~/.ssh/known_hosts``.
        ``included``: ``~/.ssh/config`` has ``loop`` from a file it includes;
        ``extra_config`` comes after ``loop`` in it."""
        ssh = self.dir / name / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        config = ssh / "config"
        if included:
            (ssh / "config.d").mkdir()
            config.write_text("Include config.d/*.conf\n")
            config = ssh / "config.d" / "loop.conf"
        config.write_text(
            f"Host loop\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {key or self.key}\n{extra_config}"
        )
        (ssh / "known_hosts").write_text(known_hosts)
        return ssh.parent

    def _port(self) -> int:
        """A port for an sshd: the next of ``DZQ_TEST_SSHD_PORT`` and up, else a free one."""
        base = os.environ.get("DZQ_TEST_SSHD_PORT")
        if not base:
            return _free_port()
        self._ports_taken = getattr(self, "_ports_taken", -1) + 1
        return int(base) + self._ports_taken

    def variant(self, name: str, **options: str) -> int:
        """Another sshd like it (same host key, same keys accepted) with
        sshd_config ``options`` that override its own; returns its port."""
        port = self._port()
        pid_dir = self.dir / name
        pid_dir.mkdir()
        overrides = {"Port": str(port), "PidFile": str(pid_dir / "sshd.pid"), **options}
        subprocess.run(
            ["/usr/sbin/sshd", "-f", self.dir / "sshd" / "sshd_config", "-E", pid_dir / "log",
             *(arg for k, v in overrides.items() for arg in ("-o", f"{k}={v}"))],
            check=True, timeout=30,
        )  # fmt: skip
        self._variants.append(pid_dir)
        assert wait_until(lambda: _listening(port), timeout=10), (pid_dir / "log").read_text()
        return port

    def down(self) -> None:
        for pid_dir in [*self._variants, self.dir / "sshd"]:
            subprocess.run([SCRIPTS / "sshd.sh", "stop", pid_dir], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def loopback():
    sshd = Loopback()
    try:
        yield sshd
    finally:
        sshd.down()


@pytest.fixture
def login(loopback, monkeypatch, make_pool):
    """``login(name, known_hosts, key=None, included=False, extra_config="",
    hosts=["ssh://loop/1"], **options)``: a pool of ``hosts`` as a client
    whose HOME is ``name`` (``Loopback.home``); no SSH agent unless the test
    sets ``SSH_AUTH_SOCK``."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)

    def make(name, known_hosts, key=None, included=False, extra_config="", **kwargs):
        home = loopback.home(name, known_hosts, key, included, extra_config)
        monkeypatch.setenv("HOME", str(home))
        kwargs.setdefault("remote_python", REMOTE_PYTHON)
        before = child_pids()
        pool = make_pool(None, kwargs.pop("hosts", ["ssh://loop/1"]), **kwargs)
        _CHILDREN_BEFORE[pool] = before
        return pool

    return make


#: our children before each pool of ``login`` was made: the pool starts at
#: once, so a ProxyCommand of its own may already run (or be between its
#: fork and its exec) when the test goes on
_CHILDREN_BEFORE: weakref.WeakKeyDictionary[object, set[int]] = weakref.WeakKeyDictionary()


def refusal(pool) -> str:
    """The ``HostConnectionError`` that ends the pool's start, once nothing of it is left."""
    before = _CHILDREN_BEFORE.pop(pool)
    try:
        with pytest.raises(HostConnectionError) as info:
            pool.run_on_all(int, 0)
    finally:
        pool.shutdown()
    assert wait_until(lambda: child_pids() == before, timeout=10), _described(before)
    return str(info.value)


def _described(before: set[int]) -> str:
    """Which of our children came or went since ``before``, with their command lines."""
    now = child_pids()

    def named(pids: set[int]) -> list[str]:
        lines = []
        for pid in sorted(pids):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
                lines.append(f"{pid}: {command}")
            except OSError:
                lines.append(f"{pid}: (gone)")
        return lines

    return f"new: {named(now - before)}; gone: {named(before - now)}"


class SilentAgent:
    """A Unix socket where an SSH agent would be that takes connections and
    never answers (an agent that waits for a confirmation or a touch)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(conn)

    def close(self) -> None:
        """Close everything: a client that waits on it gets end of file."""
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for conn in self._connections:
            conn.close()


def test_the_host_logs_in(login, loopback):
    pool = login("plain", loopback.known)
    assert pool.run_on_all(int, 7) == [7]


@pytest.mark.parametrize(
    "config, timeout",
    [
        ("", 1),
        # as ssh: the ConnectTimeout of ~/.ssh/config, unless the pool is given one
        ("  ConnectTimeout 1\n", None),
        ("  ConnectTimeout 30\n", 1),
    ],
    ids=["given", "from-config", "given-over-config"],
)
def test_login_stuck_in_the_ssh_agent_fails_in_bounded_time(
    login, loopback, monkeypatch, config, timeout
):
    agent = SilentAgent(loopback.dir / f"silent-agent-{len(config)}.sock")
    monkeypatch.setenv("SSH_AUTH_SOCK", agent.path)
    options = {} if timeout is None else {"connect_timeout": timeout}
    try:
        # the host refuses this key, so paramiko asks the agent for its keys
        stranger = _keygen(loopback.dir / f"stranger-{len(config)}_ed25519")
        home = f"stuck-{len(config)}"
        pool = login(home, loopback.known, key=stranger, extra_config=config, **options)
        with pytest.raises(HostConnectionError) as info:
            pool.submit(int, 0).result(timeout=30)
        pool.shutdown()
    finally:
        agent.close()
    message = str(info.value)
    assert "ssh://loop" in message and "did not finish within 2 s" in message
    # where the bound comes from: the pool's argument or the host's config
    source = "ConnectTimeout in ~/.ssh/config" if timeout is None else "connect_timeout"
    assert f"(2 x {source})" in message
    assert f"SSH_AUTH_SOCK={agent.path}" in message and "ssh-add -l" in message
    # the thread that waited on the agent ends once the agent answers (here: goes away)
    assert wait_until(lambda: not pool_threads(), timeout=10), pool_threads()


def test_connect_timeout_given_to_the_pool_wins_over_the_ssh_config(loopback, monkeypatch):
    home = loopback.home("timeouts", loopback.known, extra_config="  ConnectTimeout 7\n")
    monkeypatch.setenv("HOME", str(home))
    loop = HostSpec("ssh://loop/1")
    assert ssh_connect.resolve(loop).timeout == 7
    assert ssh_connect.resolve(loop, timeout=3).timeout == 3
    assert ssh_connect.resolve(loop, timeout=DEFAULT_CONNECT_TIMEOUT).timeout == 10
    assert ssh_connect.resolve(HostSpec("ssh://elsewhere/1")).timeout == DEFAULT_CONNECT_TIMEOUT
    # a jump host's own ConnectTimeout, unless the pool is given one
    jump = "Host inner\n  HostName 127.0.0.1\n  ProxyJump loop\n  ConnectTimeout 5\n"
    (home / ".ssh" / "config").write_text((home / ".ssh" / "config").read_text() + jump)
    inner = HostSpec("ssh://inner/1")
    assert ssh_connect.resolve(inner).timeout == 5
    assert ssh_connect.resolve(inner).pool_timeout is None
    assert ssh_connect.resolve(inner, timeout=3).pool_timeout == 3
    # times as ssh_config writes them
    config = home / ".ssh" / "config"
    for value, seconds in (("1m", 60), ("1m30s", 90), ("45", 45)):
        config.write_text(f"Host loop\n  ConnectTimeout {value}\n")
        assert ssh_connect.resolve(loop).timeout == seconds
    config.write_text("Host loop\n  ConnectTimeout soon\n")
    with pytest.raises(HostConnectionError, match="gives loop ConnectTimeout soon, which is not a"):
        ssh_connect.resolve(loop)


def test_ssh_config_values_the_pool_cannot_use_fail_the_host(login, loopback):
    bad = "Host bad-timeout\n  HostName 127.0.0.1\n  ConnectTimeout soon\n"
    bad += "Host bad-port\n  HostName 127.0.0.1\n  Port many\n"
    pool = login("bad-timeout", loopback.known, extra_config=bad, hosts=["ssh://bad-timeout/1"])
    assert "gives bad-timeout ConnectTimeout soon, which is not a positive time" in refusal(pool)
    pool = login("bad-port", loopback.known, extra_config=bad, hosts=["ssh://bad-port/1"])
    assert "cannot start workers on ssh://bad-port: invalid literal" in refusal(pool)


def test_known_hosts_lines_paramiko_cannot_read_are_skipped(login, loopback):
    # what ssh reads without complaint: markers, other key types, stray lines
    lines = [
        "# a comment",
        f"@cert-authority *.example.com {Path(f'{loopback.key}.pub').read_text().strip()}",
        "host.example.com ssh-unknown AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
        "not a host key",
        loopback.known,
    ]
    pool = login("odd-lines", "\n".join(lines) + "\n")
    assert pool.run_on_all(int, 7) == [7]


def test_revoked_host_key_is_refused(login, loopback):
    revoked = "@revoked * " + loopback.known.split(" ", 1)[1]
    # listed as known and revoked: revoked wins
    message = refusal(login("known-revoked", f"{loopback.known}\n{revoked}\n"))
    assert "is marked @revoked in known_hosts" in message and "SHA256:" in message
    # not known, revoked: refused, and not trusted as a new host either
    pool = login("new-revoked", f"{revoked}\n", ssh_accept_new_hosts=True)
    message = refusal(pool)
    assert "is marked @revoked in known_hosts" in message
    known_hosts = loopback.dir / "new-revoked" / ".ssh" / "known_hosts"
    assert known_hosts.read_text() == f"{revoked}\n"


def test_any_known_key_of_the_host_will_do(login, loopback):
    # a host with two keys of one type in known_hosts: ssh accepts either
    stale = _keygen(loopback.dir / "stale_host_ed25519")
    kind, key = Path(f"{stale}.pub").read_text().split()[:2]
    stale_line = f"[127.0.0.1]:{loopback.port} {kind} {key}"
    for name, lines in (("stale-first", [stale_line, loopback.known]),
                        ("stale-last", [loopback.known, stale_line])):  # fmt: skip
        pool = login(name, "\n".join(lines) + "\n")
        assert pool.run_on_all(int, 7) == [7]
        pool.shutdown()
    # only the stale one: refused
    message = refusal(login("stale-only", f"{stale_line}\n"))
    known_hosts = loopback.dir / "stale-only" / ".ssh" / "known_hosts"
    assert f"does NOT match the one in known_hosts ({known_hosts}:1)" in message
    # the name to remove, as known_hosts writes a host on a port other than 22,
    # from the file that lists it
    assert f"ssh-keygen -f '{known_hosts}' -R '[127.0.0.1]:{loopback.port}'" in message
    # a file that the config names: that one, as ssh says (it named
    # ~/.ssh/known_hosts, and its ssh-keygen changed nothing)
    other = loopback.dir / "stale-elsewhere.known"
    other.write_text(f"{stale_line}\n")
    config = f"  UserKnownHostsFile {other}\n"
    message = refusal(login("stale-elsewhere", "", extra_config=config))
    assert f"({other}:1)" in message and f"ssh-keygen -f '{other}' -R" in message
    # the system's file that the config names (GlobalKnownHostsFile), which
    # the pool did not read: it vouches for the host as the user's does
    system = loopback.dir / "system.known"
    system.write_text(f"{loopback.known}\n")
    config = f"  GlobalKnownHostsFile {system}\n"
    pool = login("known-to-the-system", "", extra_config=config)
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()


def test_the_host_shows_a_key_of_the_type_known_hosts_lists(login, loopback):
    ecdsa = loopback.dir / "host_ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", ecdsa], check=True)
    port = loopback.variant("two-types", HostKey=str(ecdsa))
    scan = subprocess.run(
        ["ssh-keyscan", "-p", str(port), "127.0.0.1"], capture_output=True, text=True, timeout=30
    )
    assert "ssh-ed25519" in scan.stdout and "ecdsa-sha2-nistp256" in scan.stdout, scan
    # known_hosts lists its ECDSA key only, which paramiko would not ask for first
    kind, key = Path(f"{ecdsa}.pub").read_text().split()[:2]
    known = f"[127.0.0.1]:{port} {kind} {key}\n"
    host = f"Host two\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
    host += f"  IdentityFile {loopback.key}\n"
    pool = login("two-types", known, extra_config=host, hosts=["ssh://two/1"])
    assert pool.run_on_all(int, 7) == [7]


def test_hash_known_hosts_writes_the_new_host_hashed(login, loopback, make_pool):
    options = "  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n"
    pool = login("hashing", "", extra_config=options)
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()
    known_hosts = loopback.dir / "hashing" / ".ssh" / "known_hosts"
    line = known_hosts.read_text()
    assert line.startswith("|1|") and "127.0.0.1" not in line, line
    # as ssh reads it
    host = f"[127.0.0.1]:{loopback.port}"
    found = subprocess.run(["ssh-keygen", "-F", host, "-f", known_hosts], capture_output=True)
    assert found.returncode == 0, found
    # and as the pool reads it: known now, not written again
    pool = make_pool(None, ["ssh://loop/1"], remote_python=REMOTE_PYTHON)
    assert pool.run_on_all(int, 7) == [7]
    assert known_hosts.read_text() == line


def test_key_with_a_passphrase_names_the_agent(login, loopback, monkeypatch):
    message = refusal(login("locked", loopback.known, key=loopback.locked_key))
    assert "authentication as 'root' failed" in message
    assert f"{loopback.locked_key} needs a passphrase" in message
    assert f"ssh-add {loopback.locked_key}" in message
    assert "(there is none now: SSH_AUTH_SOCK is not set)" in message
    # an agent's socket left behind by one that ended: said so, not only
    # "add the key to your agent"
    gone = loopback.dir / "agent-that-ended.sock"
    monkeypatch.setenv("SSH_AUTH_SOCK", str(gone))
    message = refusal(login("locked-stale-agent", loopback.known, key=loopback.locked_key))
    assert f"there is none now: SSH_AUTH_SOCK names {gone}, where No such file" in message


class SSHAgent:
    """An ``ssh-agent`` of the test's own at ``path``, which ``SSH_AUTH_SOCK`` names."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch):
        self.path = path
        self._proc = subprocess.Popen(["ssh-agent", "-D", "-a", path], stdout=subprocess.DEVNULL)
        assert wait_until(path.exists, timeout=10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(path))

    def add(self, key: Path, passphrase: str = "") -> None:
        # ssh-add reads a passphrase from the SSH_ASKPASS program only
        askpass = self.path.with_suffix(".askpass")
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
        subprocess.run(["ssh-add", "-q", key], env=env, stdin=subprocess.DEVNULL, check=True,
                       timeout=10)  # fmt: skip

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


def test_identities_only_offers_the_agent_its_own_key_of_many(login, loopback, monkeypatch):
    # an agent of many keys, the host's (one with a passphrase) last: sshd
    # hangs up after MaxAuthTries (6) keys, and ssh without IdentitiesOnly too
    agent = SSHAgent(loopback.dir / "many.sock", monkeypatch)
    try:
        for i in range(6):
            agent.add(_keygen(loopback.dir / f"many-{i}_ed25519"))
        agent.add(loopback.locked_key, "not asked for")
        message = refusal(login("many-keys", loopback.known, key=loopback.locked_key))
        assert "the host closed the connection while the pool offered it keys" in message
        assert "MaxAuthTries" in message and "IdentitiesOnly yes" in message
        # as ssh with IdentitiesOnly: of the agent's keys, that of the IdentityFile only
        only = "  IdentitiesOnly yes\n"
        pool = login("identities-only", loopback.known, key=loopback.locked_key, extra_config=only)
        assert pool.run_on_all(int, 7) == [7]
        pool.shutdown()
        # and a key of no passphrase from its file, none of the agent's
        pool = login("identities-only-file", loopback.known, extra_config=only)
        assert pool.run_on_all(int, 7) == [7]
    finally:
        agent.close()


def test_options_the_pool_does_not_read_are_named_when_the_login_fails(login, loopback):
    # ssh would log in with this certificate; the pool does not
    certificate = f"  CertificateFile {loopback.dir / 'id_ed25519-cert.pub'}\n"
    stranger = _keygen(loopback.dir / "unread_ed25519")
    pool = login("certificate", loopback.known, key=stranger, extra_config=certificate)
    message = refusal(pool)
    assert "authentication as 'root' failed" in message
    assert "options the pool does not read: CertificateFile" in message
    assert "(the pool logs in with keys, not certificates)" in message


def test_identity_agent_is_the_agent_the_pool_asks(login, loopback, monkeypatch):
    # as ssh: the agent that IdentityAgent names, whatever SSH_AUTH_SOCK says
    agent = SSHAgent(loopback.dir / "elsewhere.sock", monkeypatch)
    silent = SilentAgent(loopback.dir / "identity-agent-silent.sock")
    # the host refuses this key: the login needs the agent's
    stranger = _keygen(loopback.dir / "identity-agent_ed25519")
    try:
        agent.add(loopback.key)
        monkeypatch.delenv("SSH_AUTH_SOCK")
        config = f"  IdentityAgent {agent.path}\n"
        pool = login("identity-agent", loopback.known, key=stranger, extra_config=config)
        assert pool.run_on_all(int, 7) == [7]
        pool.shutdown()
        # $NAME: the socket that variable names
        monkeypatch.setenv("DZQ_TEST_AGENT", str(agent.path))
        config = "  IdentityAgent $DZQ_TEST_AGENT\n"
        pool = login("identity-agent-var", loopback.known, key=stranger, extra_config=config)
        assert pool.run_on_all(int, 7) == [7]
        pool.shutdown()
        # none: no agent, not even SSH_AUTH_SOCK's
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.path))
        config = "  IdentityAgent none\n"
        message = refusal(login("identity-agent-none", loopback.known, key=stranger,
                                extra_config=config))  # fmt: skip
        assert "authentication as 'root' failed" in message
        # an agent of IdentityAgent that does not answer is named as such
        config = f"  IdentityAgent {silent.path}\n"
        pool = login("identity-agent-stuck", loopback.known, key=stranger, extra_config=config,
                     connect_timeout=1)  # fmt: skip
        message = refusal(pool)
        assert f"the SSH agent ({silent.path}, the IdentityAgent in ~/.ssh/config)" in message
        assert "give loop IdentityAgent none" in message
    finally:
        silent.close()
        agent.close()


def test_host_key_alias_is_the_host_name_in_known_hosts(login, loopback, make_pool):
    # as ssh: the host's key is looked up under its HostKeyAlias as it is
    # (no port), not under its address
    known = loopback.known.replace(f"[127.0.0.1]:{loopback.port}", "loop-key")
    alias = "  HostKeyAlias loop-key\n"
    pool = login("host-key-alias", f"{known}\n", extra_config=alias)
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()
    # listed under its address only: unknown, and the command that adds it
    # (which the message gives) lists it under the alias
    message = refusal(login("host-key-alias-unknown", f"{loopback.known}\n", extra_config=alias))
    assert "is not in" in message and "under its HostKeyAlias loop-key" in message
    add = re.search(r"\((ssh-keyscan .*? >> [^\s)]+)\) or connect", message)
    assert add and "sed 's/^[^ ]*/loop-key/'" in add.group(1), message
    subprocess.run(["bash", "-c", add.group(1)], check=True, capture_output=True, timeout=30)
    pool = make_pool(None, ["ssh://loop/1"], remote_python=REMOTE_PYTHON)  # the same HOME
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()
    # a new host is remembered under the alias
    accept = alias + "  StrictHostKeyChecking accept-new\n"
    pool = login("host-key-alias-new", "", extra_config=accept)
    assert pool.run_on_all(int, 7) == [7]
    written = (loopback.dir / "host-key-alias-new" / ".ssh" / "known_hosts").read_text()
    assert written == f"loop-key {loopback.known.split(' ', 1)[1]}\n", written


def test_a_proxy_command_that_cannot_run_is_named(login, loopback):
    proxy = "  ProxyCommand no-such-proxy-program %h %p\n"
    message = refusal(login("no-proxy-program", loopback.known, extra_config=proxy))
    assert "SSH to root@loop (127.0.0.1)" in message
    assert "its ProxyCommand in ~/.ssh/config cannot run here" in message
    assert f"'no-such-proxy-program 127.0.0.1 {loopback.port}': No such file" in message


def test_a_proxy_command_that_ends_at_once_is_named_without_a_traceback(login, loopback, capfd):
    # a proxy that ends before the SSH banner: the pool's error, which says
    # how it ended, and no traceback of paramiko's transport thread on
    # stderr (which Python's logging prints without a set-up of the user's)
    logging.getLogger("paramiko").propagate = False  # pytest's capture is no set-up of the user's
    try:
        proxy = "  ProxyCommand false\n"
        message = refusal(login("proxy-false", loopback.known, extra_config=proxy))
        proxy = "  ProxyCommand sh -c 'echo no route to the bastion >&2; exit 3'\n"
        said = refusal(login("proxy-says", loopback.known, extra_config=proxy))
    finally:
        logging.getLogger("paramiko").propagate = True
    assert "root@loop (127.0.0.1):" in message
    assert "its ProxyCommand in ~/.ssh/config ended before the login did" in message
    assert "('false': exit status 1; its error output: (nothing))" in message
    assert "exit status 3; its error output: no route to the bastion" in said
    assert "ssh -v loop" in said
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error reading SSH protocol banner" not in err, err
    # and a proxy that works still carries the login (ssh -W, as a bastion's)
    proxy = "  ProxyCommand ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no "
    proxy += f"-o UserKnownHostsFile=/dev/null -i {loopback.key} -p %p -W %h:%p root@%h\n"
    pool = login("proxy-works", loopback.known, extra_config=proxy)
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()
    # through it, a login that fails is no proxy that ended
    stranger = _keygen(loopback.dir / "proxy-stranger_ed25519")
    message = refusal(login("proxy-refused", loopback.known, key=stranger, extra_config=proxy))
    assert "authentication as 'root' failed" in message and "ProxyCommand" not in message


def test_hosts_of_included_config_files_are_found(login, loopback):
    # the alias lives in a file that ~/.ssh/config includes, relative to ~/.ssh
    pool = login("included", loopback.known, included=True)
    assert pool.run_on_all(int, 7) == [7]


def test_proxy_jump_goes_through_the_jump_host(login, loopback):
    def logins() -> int:
        log = (loopback.dir / "sshd" / "sshd.log").read_text()
        return log.count("Accepted publickey for root")

    jump = f"Host inner\n  HostName 127.0.0.1\n  Port {loopback.port}\n  User root\n"
    jump += f"  IdentityFile {loopback.key}\n  ProxyJump loop\n"
    before = logins()
    pool = login("jump", loopback.known, extra_config=jump, hosts=["ssh://inner/1"])
    assert pool.run_on_all(int, 7) == [7]
    assert logins() == before + 2  # the jump host's, then the inner host's through it
    # the jump host cannot reach the inner host: said so, with both named
    closed = _free_port()
    jump = f"Host inner\n  HostName 127.0.0.1\n  Port {closed}\n  ProxyJump loop\n"
    message = refusal(
        login("jump-closed", loopback.known, extra_config=jump, hosts=["ssh://inner/1"])
    )
    assert f"its ProxyJump host root@loop (127.0.0.1):{loopback.port} cannot connect" in message
    assert f"to 127.0.0.1 port {closed} (Connect failed)" in message
    # the inner host's StrictHostKeyChecking does not make its jump host trusted
    jump = f"Host inner\n  HostName localhost\n  Port {loopback.port}\n  User root\n"
    jump += f"  IdentityFile {loopback.key}\n  ProxyJump loop\n  StrictHostKeyChecking no\n"
    pool = login("jump-unknown", "", extra_config=jump, hosts=["ssh://inner/1"])
    message = refusal(pool)
    assert "through ProxyJump loop" in message and "is not in" in message


def test_an_identity_file_that_does_not_exist_is_passed_over(login, loopback, monkeypatch):
    missing = loopback.dir / "no-such-key"
    message = refusal(login("missing-key", loopback.known, key=missing))
    assert f"no key to log in with: the IdentityFile {missing} does not exist" in message
    # as ssh, the pool goes on with the agent's keys
    socket_path = loopback.dir / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL)
    try:
        assert wait_until(socket_path.exists, timeout=10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        subprocess.run(["ssh-add", "-q", loopback.key], check=True, timeout=10)
        pool = login("missing-key-agent", loopback.known, key=missing)
        assert pool.run_on_all(int, 7) == [7]
    finally:
        agent.terminate()
        agent.wait(10)


def test_sshd_that_refuses_the_tunnel_says_what_to_do(login, loopback):
    port = loopback.variant("no-forwarding", AllowTcpForwarding="no")
    known = loopback.known.replace(f":{loopback.port} ", f":{port} ")
    inner = f"Host closed-fwd\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
    inner += f"  IdentityFile {loopback.key}\n"
    message = refusal(login("no-fwd", known, extra_config=inner, hosts=["ssh://closed-fwd/1"]))
    assert "ssh://closed-fwd: its sshd refuses the reverse tunnel" in message
    assert "ssh_tunnel=False" in message and "AllowTcpForwarding" in message
    # and ssh_tunnel=False works there
    pool = login("no-fwd-direct", known, extra_config=inner, hosts=["ssh://closed-fwd/1"],
                 ssh_tunnel=False)  # fmt: skip
    assert pool.run_on_all(int, 7) == [7]


def test_a_host_reached_over_ipv6_without_the_tunnel(login, loopback):
    # the workers were told to connect to the address that SSH came from,
    # [::1], where the broker did not listen (0.0.0.0 only): they hung 30 s
    # and were killed; and localhost="::1" failed the bind ("No such device")
    port = loopback.variant("ipv6", ListenAddress="::1")
    known = loopback.known.replace(f"[127.0.0.1]:{loopback.port}", f"[::1]:{port}")
    config = f"Host loop6\n  HostName ::1\n  Port {port}\n  User root\n"
    config += f"  IdentityFile {loopback.key}\n"
    for localhost in ("", "::1"):
        pool = login(f"ipv6{localhost.replace(':', '')}", known, extra_config=config,
                     hosts=["ssh://loop6/1"], ssh_tunnel=False, localhost=localhost)  # fmt: skip
        assert pool.run_on_all(int, 7) == [7]
        pool.shutdown()


# the agent killed below ends the tunnel's links as the pool closes the SSH
# connection: a close of a channel there raised EOFError in the tunnel's thread
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_login_shell_that_prints_does_not_hide_the_agent(login, loopback):
    # what a ~/.bashrc that greets (or sets a terminal title) prints before
    # the agent runs, on the session's stdout: lines, and text with no end
    # of line, which the agent's hello then follows on the same line
    greeting = "echo 'Welcome to loop'; printf 'Last login: today'; printf '\\033]0;loop\\007'"
    pool = login("greeting", loopback.known, remote_python=f"{greeting}; {REMOTE_PYTHON}")
    assert pool.run_on_all(int, 7) == [7]
    # the agent's end, later: its error quoted the greeting as the agent's
    # last lines, the terminal title's escape and all, which set the title
    # of the client's terminal
    [agent] = pool.run_on_all(os.getppid)
    os.kill(agent, signal.SIGKILL)
    assert wait_until(lambda: pool.status().hosts[0].last_error is not None, timeout=30)
    error = pool.status().hosts[0].last_error
    assert "its agent ended" in error and "Welcome" not in error, error
    assert "\x1b" not in error and "\x07" not in error, error


def test_what_a_task_left_running_dies_with_a_killed_agent(login, loopback):
    # the agent's workers died with it (their parent-death signal), and what
    # their tasks started ran on: the agent would have killed each worker's
    # group as it reaped the worker
    pool = login("killed-agent", loopback.known)
    [(worker, agent)] = pool.run_on_all(tasks.pid_and_parent)
    sleeper = pool.run(tasks.start_sleeper, 60)
    assert pid_alive(sleeper)
    os.kill(agent, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(worker), timeout=10)
    assert wait_until(lambda: not pid_alive(sleeper), timeout=10)


def test_a_login_shell_that_reads_stdin_does_not_eat_the_workers_keys(login, loopback):
    # as a ~/.bashrc that reads stdin before the agent runs (a read with a
    # timeout, or a program that drains what is there): the workers' keys to
    # the broker go to the agent once it has said hello, so none is eaten
    drain = "read -t 1 line; timeout 1 cat > /dev/null"
    pool = login("reads-stdin", loopback.known, remote_python=f"{drain}; {REMOTE_PYTHON}")
    assert pool.run_on_all(int, 7) == [7]


def test_a_slow_login_shell_is_named_when_the_agent_is_late(login, loopback):
    # as a ~/.bashrc that waits; the pool gives the agent less time than that
    slow = f"sleep 3; {REMOTE_PYTHON}"
    pool = login("slow-shell", loopback.known, remote_python=slow, agent_start_timeout=1)
    message = refusal(pool)
    assert "the distex_zmq agent on ssh://loop did not start within 1 s" in message
    assert "start-up files (~/.bashrc)" in message
    assert "Pool(..., agent_start_timeout=...)" in message
    # and given more, it starts
    pool = login("slow-shell-waited", loopback.known, remote_python=slow, agent_start_timeout=20)
    assert pool.run_on_all(int, 7) == [7]
    pool.shutdown()
    # a start-up file that waits for a line on stdin gets none: asked about
    reads = f"read line; {REMOTE_PYTHON}"
    message = refusal(login("reads-a-line", loopback.known, remote_python=reads,
                            agent_start_timeout=1))  # fmt: skip
    assert "waiting there (for input on stdin, which the pool sends only to the agent)" in message


def test_a_remote_python_that_cannot_serve_says_what_to_do(login, loopback):
    # no site-packages: an interpreter without distex_zmq
    message = refusal(login("no-package", loopback.known, remote_python=f"{sys.executable} -S"))
    assert "distex_zmq is not installed for" in message
    assert f"pip install distex_zmq=={__version__}" in message  # the client's version
    # a file that is not a program
    not_a_program = str(loopback.dir / "authorized_keys")
    message = refusal(login("not-executable", loopback.known, remote_python=not_a_program))
    assert "exit status 126" in message and "cannot run there as the SSH user" in message
    # a command that ends in silence, as a login shell /bin/false, or a
    # ~/.bashrc that exits
    message = refusal(login("silent-end", loopback.known, remote_python="exit 0;"))
    assert "(exit status 0)" in message and "It ended before the agent said hello" in message
    # distex_zmq of another protocol: the hello such an agent says
    python = sys.version.split()[0]
    hello = {"v": control.VERSION, "ev": "hello", "host": "loop", "version": "0.0.1",
             "protocol": frames.VERSION - 1, "python": python, "pid": 1}  # fmt: skip
    old_agent = f"echo {shlex.quote(json.dumps(hello))}; true"
    message = refusal(login("old-agent", loopback.known, remote_python=old_agent))
    assert "distex_zmq 0.0.1 on ssh://loop runs workers of protocol version" in message
    assert f"install the same distex_zmq version on both (this client has {__version__})" in message


def _origin(name: str) -> str | None:
    """Where a task finds the module ``name``."""
    return importlib.util.find_spec(name).origin


def test_modules_in_the_remote_working_directory_shadow_nothing(login, loopback, tmp_path):
    # a learner's home on the host: scripts named like modules of the
    # standard library that the agent and the workers import; ``-m`` put the
    # directory it starts in first on the agent's path, where they stood in
    # for those modules and the agent did not start
    home = tmp_path / "remote-home"
    home.mkdir()
    for name in ("random", "queue", "tempfile", "argparse"):
        (home / f"{name}.py").write_text(f"raise ImportError('the home\\'s {name}.py')\n")
    (home / "home_module.py").write_text("VALUE = 42\n")
    in_home = f"cd {shlex.quote(str(home))} && {REMOTE_PYTHON}"
    pool = login("home-modules", loopback.known, remote_python=in_home)
    assert pool.run_on_all(os.getcwd) == [str(home)]
    # a task imports the standard library's module, not the home's script;
    # a module that only the home has still imports
    assert pool.run(_origin, "random") == importlib.util.find_spec("random").origin
    assert pool.run(_origin, "home_module") == str(home / "home_module.py")


def test_an_agent_of_another_control_protocol_names_both_versions(login, loopback):
    # the hello of an agent of another control protocol version: both
    # distex_zmq versions, and the client's to install there
    python = sys.version.split()[0]
    hello = {"v": control.VERSION + 1, "ev": "hello", "host": "loop", "version": "9.9.9",
             "protocol": frames.VERSION, "python": python, "pid": 1}  # fmt: skip
    agent = f"echo {shlex.quote(json.dumps(hello))}; true"
    message = refusal(login("other-control", loopback.known, remote_python=agent))
    assert message.startswith(
        f"ssh://loop runs distex_zmq 9.9.9 (control protocol version {control.VERSION + 1}), "
        f"this client distex_zmq {__version__} (control protocol version {control.VERSION}): "
    )
    assert f"pip install distex_zmq=={__version__}" in message
    assert "Pool(..., remote_python=...)" in message


def test_user_known_hosts_file_none_writes_no_file(login, loopback, tmp_path, monkeypatch):
    # a common set-up for throwaway hosts: trust whatever answers, remember nothing
    monkeypatch.chdir(tmp_path)
    options = "Host trusting\n  HostName 127.0.0.1\n  User root\n"
    options += f"  Port {loopback.port}\n  IdentityFile {loopback.key}\n"
    options += "  UserKnownHostsFile none\n  StrictHostKeyChecking no\n"
    pool = login("trusting", "", extra_config=options, hosts=["ssh://trusting/1"])
    assert pool.run_on_all(int, 7) == [7]
    assert list(tmp_path.iterdir()) == []  # no file named "none" here
    assert (loopback.dir / "trusting" / ".ssh" / "known_hosts").read_text() == ""


def test_adding_a_lost_host_again_says_it_reconnects(login, loopback, caplog):
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    port = loopback.variant("goes-away")
    known = loopback.known.replace(f":{loopback.port} ", f":{port} ")
    host = f"Host away\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
    host += f"  IdentityFile {loopback.key}\n"
    pool = login("away", known, extra_config=host, hosts=["ssh://away/1"])
    assert pool.run_on_all(int, 7) == [7]
    subprocess.run([SCRIPTS / "sshd.sh", "stop", loopback.dir / "goes-away"], check=True)
    assert wait_until(lambda: pool.status().hosts[-1].state != "up", timeout=30)
    # the sshd gone, with the agent it ran: said as what it may be
    lost = [r.getMessage() for r in caplog.records if "host ssh://away lost" in r.getMessage()]
    assert lost and "the SSH connection closed (sshd stopped?)" in lost[0], lost
    with pytest.raises(ValueError, match="in the pool already, and lost") as info:
        pool.add_hosts(["ssh://away/1"])
    assert "reconnects to it on its own" in str(info.value)
    assert "remove_hosts it and add_hosts it again" in str(info.value)


EXIT_CLIENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from distex_zmq import Pool
    from tests import tasks

    pool = Pool(None, ["ssh://loop/1"], remote_python={python!r})
    pool.run_on_all(int, 0)
    future = pool.submit(tasks.touch_then_sleep, {marker!r}, 1.0, "ran")
    future.add_done_callback(lambda f: print("done:", f.result(), flush=True))
    # no shutdown: the exit waits for the task, as a ProcessPoolExecutor's does
    """
)


def test_exit_lets_the_tasks_on_ssh_hosts_finish(loopback, tmp_path):
    marker = tmp_path / "starts"
    home = loopback.home("exiting", loopback.known)
    script = EXIT_CLIENT.format(root=str(ROOT), python=REMOTE_PYTHON, marker=str(marker))
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    result = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HOME": str(home)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "done: ran" in result.stdout
    # paramiko's own exit handler must not cut the host off first: no loss,
    # and the task ran once
    assert "lost" not in result.stderr, result.stderr
    assert tasks.traces(str(marker)) == 1


@pytest.mark.timeout(300)  # the venv of the other Python is made first
def test_a_host_of_another_python_version_is_refused_with_both_versions(
    login, loopback, other_python_venv
):
    # as a spawner of another Python (test_spawner_service): the agent says
    # hello with its Python's version, and the pool refuses the host then
    theirs = subprocess.check_output(
        [other_python_venv, "-c", "import sys; print(sys.version.split()[0])"], text=True
    ).strip()
    message = refusal(login("other-python", loopback.known, remote_python=other_python_venv))
    ours = sys.version.split()[0]
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert message.startswith(f"ssh://loop runs Python {theirs}, this client Python {ours}: ")
    assert message.endswith(
        f"name a Python {minor} there that has distex_zmq with "
        f"Pool(..., remote_python=...) (now {other_python_venv!r})"
    )


def test_a_tunnel_whose_ssh_connection_closed_under_it_ends_its_links_quietly(
    loopback, monkeypatch
):
    # a link of the reverse tunnel ends (the pool's end of it closed) as
    # the SSH connection closes (the host lost, its agent killed): the
    # close of its channel, sent on a closed connection, raised EOFError in
    # the tunnel's thread before paramiko had marked the channel closed
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1", loopback.port, "root", key_filename=str(loopback.key),
        allow_agent=False, look_for_keys=False, timeout=10,
    )  # fmt: skip
    target = socket.create_server(("127.0.0.1", 0))
    try:
        transport = client.get_transport()
        assert transport is not None
        tunnel = ReverseTunnel(transport, target.getsockname(), "loop")
        outside = socket.create_connection(("127.0.0.1", tunnel.remote_port), timeout=10)
        target.settimeout(10)
        inside, _ = target.accept()
        outside.sendall(b"through")
        assert inside.recv(7) == b"through"
        transport.packetizer.close()  # nothing more goes out on it
        inside.close()  # the link's end here: its thread closes the channel
        time.sleep(0.5)
        outside.close()
        tunnel.close()
    finally:
        target.close()
        client.close()
    assert not errors, [e.exc_value for e in errors]
