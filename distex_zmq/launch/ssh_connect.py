"""SSH connections to remote hosts with paramiko, honouring what ``ssh`` would.

``connect`` reads ``~/.ssh/config`` (Host aliases, HostName, User, Port,
IdentityFile, IdentitiesOnly, IdentityAgent, UserKnownHostsFile, StrictHostKeyChecking,
HashKnownHosts, HostKeyAlias, ConnectTimeout, ProxyCommand, ProxyJump, and the files
it includes), authenticates with the SSH agent, the config's identity files and the
default key files (never a password), and checks the host key against
every key ``known_hosts`` lists for the host. Every failure
becomes a ``HostConnectionError`` that says what failed, on which host, and
what to do; every step is bounded in time, so a dead or silent host cannot
hang the pool. A ``ProxyJump`` host is reached as any other, and the
connection goes on from there in a ``direct-tcpip`` channel, as ``ssh -J``.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import glob
import hashlib
import hmac
import logging
import os
import re
import select
import shlex
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import paramiko

from distex_zmq.errors import HostConnectionError
from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.remote import DEFAULT_CONNECT_TIMEOUT
from distex_zmq.reachability import UNREACHABLE

#: ``ssh``'s ``GlobalKnownHostsFile`` where the config gives none
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


@dataclasses.dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect, once the SSH config has been applied."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: tuple[str, ...]
    accept_new_hosts: bool
    timeout: float
    proxy_command: str | None
    #: ``ProxyJump``: the hosts to go through, comma-separated, the first first
    proxy_jump: str | None = None
    #: the pool trusts new hosts (``ssh_accept_new_hosts``), its jump hosts too
    pool_accepts_new_hosts: bool = False
    #: the pool's ``connect_timeout``, if it was given one: it wins over the
    #: ``ConnectTimeout`` of its jump hosts too
    pool_timeout: float | None = None
    #: ``HashKnownHosts``: a new host's name is written to known_hosts hashed
    hash_known_hosts: bool = False
    #: where ``timeout`` comes from, for messages
    timeout_source: str = "connect_timeout"
    #: ``IdentitiesOnly``: of the agent's keys, only those of ``key_files``
    identities_only: bool = False
    #: ``HostKeyAlias``: the name the host's key is listed under in known_hosts
    host_key_alias: str | None = None
    #: the socket of the SSH agent to ask for keys (None: none), and what named it
    agent: str | None = None
    agent_source: str = "SSH_AUTH_SOCK"
    #: the host's options that the pool does not read (``UNREAD``), each with
    #: what the pool does instead, for the errors of its login
    unread: tuple[str, ...] = ()
    #: ``GlobalKnownHostsFile``: the system's known hosts, read before the user's
    global_known_hosts: tuple[str, ...] = GLOBAL_KNOWN_HOSTS

    def __str__(self) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        name = self.alias if self.alias == self.hostname else f"{self.alias} ({self.hostname})"
        return f"{self.user}@{name}{port}"


def known_hosts_name(target: SSHTarget) -> str:
    """The name known_hosts lists the host by (and ``ssh-keygen -R`` takes):
    its ``HostKeyAlias`` as it is, as ``ssh`` takes it; else the name paramiko
    gives it, ``[host]:port`` on a port other than 22."""
    if target.host_key_alias:
        return target.host_key_alias
    if target.port == 22:
        return target.hostname
    return f"[{target.hostname}]:{target.port}"


def resolve(
    spec: HostSpec,
    accept_new_hosts: bool = False,
    timeout: float | None = None,
    config_path: str = "~/.ssh/config",
) -> SSHTarget:
    """Apply ``~/.ssh/config`` to a host spec; what is in the spec wins, and
    a ``timeout`` wins over the config's ``ConnectTimeout`` (as ``ssh -o``
    does); without either, ``DEFAULT_CONNECT_TIMEOUT``."""
    config: dict[str, Any] = {}
    path = os.path.expanduser(config_path)
    if os.path.exists(path):
        try:
            config = paramiko.SSHConfig.from_text(_config_text(path)).lookup(spec.host)
        except Exception as e:  # noqa: BLE001 - paramiko raises several kinds
            raise HostConnectionError(f"cannot read the SSH config {path}: {e}") from e
    known = config.get("userknownhostsfile", "~/.ssh/known_hosts").split()
    # "none": no known_hosts file of the user's, so none is written either
    known = [path for path in known if path.lower() != "none"]
    system = config.get("globalknownhostsfile", " ".join(GLOBAL_KNOWN_HOSTS)).split()
    system = [path for path in system if path.lower() != "none"]
    strict = config.get("stricthostkeychecking", "ask").lower()
    connect_timeout = timeout
    if connect_timeout is None and "connecttimeout" in config:
        connect_timeout = _seconds(config["connecttimeout"])
        if connect_timeout is None:
            raise HostConnectionError(
                f"the SSH config {path} gives {spec.host} ConnectTimeout "
                f"{config['connecttimeout']}, which is not a positive time (such as 10 or 1m)"
            )
    jump = config.get("proxyjump")
    return SSHTarget(
        alias=spec.host,
        hostname=config.get("hostname", spec.host),
        port=spec.port or int(config.get("port", 22)),
        user=spec.user or config.get("user") or getpass.getuser(),
        key_files=tuple(os.path.expanduser(f) for f in config.get("identityfile", [])),
        known_hosts=tuple(os.path.expanduser(f) for f in known),
        global_known_hosts=tuple(os.path.expanduser(f) for f in system),
        accept_new_hosts=accept_new_hosts or strict in ("accept-new", "no", "off"),
        timeout=DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        proxy_command=config.get("proxycommand"),
        proxy_jump=None if not jump or jump.lower() == "none" else jump,
        pool_accepts_new_hosts=accept_new_hosts,
        pool_timeout=timeout,
        hash_known_hosts=config.get("hashknownhosts", "no").lower() == "yes",
        identities_only=config.get("identitiesonly", "no").lower() == "yes",
        host_key_alias=config.get("hostkeyalias"),
        agent=_agent_socket(config.get("identityagent")),
        agent_source=(
            "SSH_AUTH_SOCK"
            if config.get("identityagent", "SSH_AUTH_SOCK") == "SSH_AUTH_SOCK"
            else f"IdentityAgent in {config_path}"
        ),
        unread=tuple(
            f"{option} {config[option.lower()]} (the pool {instead})"
            for option, instead in UNREAD.items()
            if option.lower() in config
        ),
        timeout_source=(
            "connect_timeout"
            if timeout is not None
            else "the default connect_timeout"
            if connect_timeout is None
            else f"ConnectTimeout in {config_path}"
        ),
    )


#: options of ``~/.ssh/config`` that change a login and that the pool does not
#: read, and what it does instead
UNREAD = {
    "CertificateFile": "logs in with keys, not certificates",
    "PKCS11Provider": "reaches a token's keys through the SSH agent only",
}


def _agent_socket(option: str | None) -> str | None:
    """The socket of the SSH agent that ``IdentityAgent option`` names, as
    ``ssh`` reads it: ``SSH_AUTH_SOCK`` (and no option) that variable's,
    ``$NAME`` that of the variable ``NAME``, ``none`` no agent, else a path
    (``~`` and ``${NAME}`` expanded)."""
    if option is None or option == "SSH_AUTH_SOCK":
        return os.environ.get("SSH_AUTH_SOCK") or None
    if option.lower() == "none":
        return None
    if option.startswith("$") and not option.startswith("${"):
        return os.environ.get(option[1:]) or None
    return os.path.expanduser(os.path.expandvars(option))


_TIME = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _seconds(value: str) -> float | None:
    """A time as ``ssh_config`` writes it (``30``, ``1m``, ``1h30m``) in
    seconds; None if it is not one, or not positive."""
    parts = _TIME.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    seconds = sum(int(n) * _UNIT[u.lower()] for n, u in parts)
    return float(seconds) if seconds > 0 else None


#: how deep ``Include`` directives may nest, as in OpenSSH
_INCLUDE_DEPTH = 16
_KEYWORD = re.compile(r"\s*(\w+)(?:\s*=\s*|\s+)(.*)")


def _config_text(path: str, depth: int = 0) -> str:
    """The SSH config file ``path`` with its ``Include`` directives replaced by
    the files they name, in the order ``ssh`` reads them (paramiko ignores them).

    A relative pattern is under ``~/.ssh``; after the included text comes the
    ``Host`` or ``Match`` line the ``Include`` stood under again, so that what
    follows it applies where it did.
    """
    if depth > _INCLUDE_DEPTH:
        raise ValueError(f"Include nested more than {_INCLUDE_DEPTH} deep at {path}")
    lines = []
    block = "Host *"
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            match = _KEYWORD.match(line)
            keyword = match.group(1).lower() if match else ""
            if keyword in ("host", "match"):
                block = line
            if keyword != "include" or match is None:
                lines.append(line)
                continue
            for pattern in shlex.split(match.group(2), comments=True):
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):
                    pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
                for included in sorted(glob.glob(pattern)):
                    lines.append(_config_text(included, depth + 1))
            lines.append(block)
    return "\n".join(lines) + "\n"


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it (``SHA256:...``)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _revoked_error(t: SSHTarget, key: paramiko.PKey) -> HostConnectionError:
    return HostConnectionError(
        f"SSH to {t}: the host's {key.get_name()} key {fingerprint(key)} is marked "
        "@revoked in known_hosts, so the connection was refused"
    )


@dataclasses.dataclass
class KnownHosts:
    """What the ``known_hosts`` files say: every key of each host (a host
    may have several of one type, such as an old one and its successor: as
    with ``ssh``, any of them will do), and the keys marked ``@revoked``."""

    entries: list[paramiko.hostkeys.HostKeyEntry] = dataclasses.field(default_factory=list)
    revoked: list[paramiko.PKey] = dataclasses.field(default_factory=list)
    #: the file and line of each entry
    places: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def keys_of(self, name: str) -> list[paramiko.PKey]:
        """The keys listed for the host ``name`` (``host`` or ``[host]:port``),
        under its name or hashed (``HashKnownHosts``)."""
        return [entry.key for entry, _ in self._listing(name)]

    def places_of(self, name: str) -> list[tuple[str, int]]:
        """The files and lines that list keys for the host ``name``."""
        return [place for _, place in self._listing(name)]

    def _listing(self, name: str) -> list[tuple[paramiko.hostkeys.HostKeyEntry, tuple[str, int]]]:
        return [
            (entry, place)
            for entry, place in zip(self.entries, self.places, strict=True)
            if any(_is_host(listed, name) for listed in entry.hostnames)
        ]


def _is_host(listed: str, name: str) -> bool:
    """Whether a host name of a ``known_hosts`` line, hashed or not, is ``name``."""
    if not listed.startswith("|1|"):
        return listed == name
    try:
        return hmac.compare_digest(paramiko.HostKeys.hash_host(name, listed), listed)
    except (ValueError, AssertionError):  # not a hash paramiko can read
        return False


#: the signature algorithms an RSA key is asked for by
_RSA_SIGNATURES = {"rsa-sha2-512": "ssh-rsa", "rsa-sha2-256": "ssh-rsa"}


#: the logger of the pool's SSH transports: a child of paramiko's, so that a
#: logging set-up that shows paramiko's records shows these too
TRANSPORT_LOG = "paramiko.transport.distex_zmq"


class _ThreadErrorsAsDebug(logging.Filter):
    """Logs the errors of a transport's thread at DEBUG: the exception that
    ended it, and its traceback, one record a line. The pool raises or reports
    each such end as an error of its own (a ``HostConnectionError``, a host
    lost), and without a logging set-up Python prints errors to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger(TRANSPORT_LOG).addFilter(_ThreadErrorsAsDebug())


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ``ProxyCommand`` that ends where the command's output ends
    (paramiko's reads on until its timeout) and reaps the command when closed."""

    #: the command's output or input has ended: it ended the connection
    broke = False

    def send(self, content: bytes) -> int:
        try:
            return int(super().send(content))
        except paramiko.ProxyCommandFailure:
            self.broke = True
            raise

    def recv(self, size: int) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError()
        try:
            data = os.read(stdout.fileno(), size)
        except OSError as e:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), e.strerror) from e
        self.broke = not data  # b"": paramiko's EOFError
        return data

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(PROXY_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._said = self._stderr()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def ended(self) -> str | None:
        """How the command ended the connection (its output or input
        ended), with what it wrote to its stderr; None if it did not."""
        if not self.broke:
            return None
        try:
            how = f"exit status {self.process.wait(PROXY_EXIT_TIMEOUT)}"
        except subprocess.TimeoutExpired:
            how = "its output ended"
        text = self._stderr().decode(errors="replace").strip() or "(nothing)"
        return f"{how}; its error output: {text}"

    def _stderr(self) -> bytes:
        """What the command wrote to its stderr (the start of it), read once
        it has ended, or when it was closed (the transport's thread may close
        it first)."""
        stderr = self.process.stderr
        if stderr is None or stderr.closed:
            return getattr(self, "_said", b"")
        os.set_blocking(stderr.fileno(), False)
        try:
            return os.read(stderr.fileno(), 2000)
        except OSError:
            return b""


#: seconds a ProxyCommand has to end once told to, before it is killed
PROXY_EXIT_TIMEOUT = 2.0


class _Transport(paramiko.Transport):
    """paramiko's transport, which keeps the lines the server sent before
    its SSH greeting (``said``): there sshd says why it refuses the
    connection ("Not allowed at this time"), which paramiko only logs."""

    #: lines kept at most
    SAID_LINES = 5

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.said: list[str] = []

    def _log(self, level: int, msg: Any, *args: Any) -> None:
        # (paramiko's _check_banner logs each line before the greeting so)
        before_greeting = not self.remote_version and len(self.said) < self.SAID_LINES
        if before_greeting and isinstance(msg, str) and msg.startswith("Banner: "):
            self.said.append(msg.removeprefix("Banner: ").strip())
        super()._log(level, msg, *args)


def _key_type_order(name: str, known: KnownHosts) -> Callable[..., paramiko.Transport]:
    """A transport maker for paramiko (``transport_factory``) whose transport
    asks for a key of the types known for the host ``name`` first, as
    ``ssh`` does: a host that has keys of several types then shows the one
    that ``known_hosts`` lists."""
    types = {key.get_name() for key in known.keys_of(name)}

    def transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
        made = _Transport(sock, **kwargs)
        made.set_log_channel(TRANSPORT_LOG)
        options = made.get_security_options()
        first = [t for t in options.key_types if _RSA_SIGNATURES.get(t, t) in types]
        options.key_types = first + [t for t in options.key_types if t not in first]
        return made

    return transport


class _CheckHostKey(paramiko.MissingHostKeyPolicy):
    """Checks the host's key against all that ``known_hosts`` lists for it
    (paramiko compares it with one key of its type only: it is given none,
    so it leaves the check to this); a host it lists none for is new. The
    host's name there is ``known_hosts_name`` (its ``HostKeyAlias``, if it
    has one), not the one paramiko gives it."""

    def __init__(self, target: SSHTarget, known: KnownHosts):
        self._target = target
        self._known = known

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        if key in self._known.revoked:
            raise _revoked_error(self._target, key)
        hostname = known_hosts_name(self._target)
        keys = self._known.keys_of(hostname)
        if key in keys:
            return
        if keys:  # _explain says what this means
            same_type = [k for k in keys if k.get_name() == key.get_name()]
            error = paramiko.BadHostKeyException(hostname, key, (same_type or keys)[0])
            error.places = self._known.places_of(hostname)
            raise error
        self.new_host(hostname, key)

    def new_host(self, hostname: str, key: paramiko.PKey) -> None:
        raise NotImplementedError


class _RefuseUnknownHost(_CheckHostKey):
    def new_host(self, hostname: str, key: paramiko.PKey) -> None:
        t = self._target
        known = t.known_hosts[0] if t.known_hosts else "~/.ssh/known_hosts"
        port = f"-p {t.port} " if t.port != 22 else ""
        alias = f" under its HostKeyAlias {hostname}" if t.host_key_alias else ""
        # ssh-keyscan lists the key under the host's name: the alias replaces it
        rename = f" | sed 's/^[^ ]*/{hostname}/'" if t.host_key_alias else ""
        raise HostConnectionError(
            f"SSH to {t}: the host's {key.get_name()} key {fingerprint(key)} is not in "
            f"{', '.join(t.known_hosts) or 'any known_hosts file'}{alias}, so the connection "
            "was refused. Compare the fingerprint with the host's own (ssh-keygen -lf "
            "/etc/ssh/ssh_host_*_key.pub there); if they match, add the key "
            f"(ssh-keyscan {port}{t.hostname}{rename} >> {known}) or connect once with ssh; "
            "or let the pool trust new hosts with Pool(..., ssh_accept_new_hosts=True)"
        )


class _AcceptNewHost(_CheckHostKey):
    """OpenSSH's ``StrictHostKeyChecking accept-new``: trust and remember new hosts."""

    def new_host(self, hostname: str, key: paramiko.PKey) -> None:
        t = self._target
        if t.known_hosts:
            path = t.known_hosts[0]
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            name = paramiko.HostKeys.hash_host(hostname) if t.hash_known_hosts else hostname
            with open(path, "a") as f:
                f.write(f"{name} {key.get_name()} {key.get_base64()}\n")


class _Agent(paramiko.Agent):
    """The SSH agent at ``path`` (paramiko's own asks the one of
    ``SSH_AUTH_SOCK``), asked for its keys once they are needed, as paramiko
    asks its own: a login with a key file that works never waits for it."""

    def __init__(self, path: str):
        paramiko.agent.AgentSSH.__init__(self)
        self._path = path
        self._asked = False

    def get_keys(self) -> tuple[Any, ...]:
        if not self._asked:
            self._asked = True
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self._path)
            except OSError:  # as paramiko: no agent listens there, so there is none
                conn.close()
            else:
                self._connect(conn)
        return tuple(super().get_keys())


def _agent_state(t: SSHTarget) -> str:
    """Why the pool found no SSH agent for ``t``, if it found none, for a
    login that needed one: ``""`` if an agent answers at its socket."""
    if t.agent is None:
        return f" (there is none now: {t.agent_source} is not set)"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(2)
        conn.connect(t.agent)
    except OSError as e:
        return (
            f" (there is none now: {t.agent_source} names {t.agent}, where "
            f"{e.strerror or e}; start one with eval $(ssh-agent), then ssh-add)"
        )
    finally:
        conn.close()
    return ""


class _Client(paramiko.SSHClient):
    """An SSH client that closes its jump host's connection with its own."""

    jump: paramiko.SSHClient | None = None

    def close(self) -> None:
        super().close()
        if self.jump is not None:
            self.jump.close()


#: jump hosts a connection may go through, at most
MAX_JUMPS = 8


def connect(target: SSHTarget, jumps: int = 0) -> paramiko.SSHClient:
    """An authenticated SSH connection to ``target`` (blocking, bounded by its
    timeout); ``jumps``: how many jump hosts lead to it."""
    client = _Client()
    known = KnownHosts()
    for path in (*target.global_known_hosts, *target.known_hosts):
        if os.path.exists(path):
            try:
                _load_known_hosts(known, path)
            except OSError as e:
                raise HostConnectionError(f"cannot read known hosts file {path}: {e}") from e
    # the client's own host keys stay empty: the policy checks every host's key
    policy = _AcceptNewHost if target.accept_new_hosts else _RefuseUnknownHost
    client.set_missing_host_key_policy(policy(target, known))
    name = known_hosts_name(target)
    sock: Any = None
    if target.proxy_command:
        try:
            sock = _ProxyCommand(target.proxy_command)
        except OSError as e:
            raise HostConnectionError(
                f"SSH to {target}: its ProxyCommand in ~/.ssh/config cannot run here "
                f"({target.proxy_command!r}: {e.strerror or e}); is its program installed?"
            ) from e
    elif target.proxy_jump:
        client.jump, sock = _through_jump(target, jumps + 1)
    t = target.timeout
    # as ssh, go on without an IdentityFile that does not exist
    key_files = [f for f in target.key_files if os.path.exists(f)]
    only = target.identities_only
    agent = _Agent(target.agent) if target.agent else None
    try:
        # paramiko asks the agent its client holds, else makes one of SSH_AUTH_SOCK's
        client._agent = None if only else agent
        client.connect(
            target.hostname,
            port=target.port,
            username=target.user,
            key_filename=key_files or None,
            # IdentitiesOnly: the agent's copy of an identity, no other of its keys
            pkey=_agent_key_of(agent, key_files or _DEFAULT_KEYS) if only and agent else None,
            allow_agent=not only and agent is not None,
            look_for_keys=not (only and key_files),
            timeout=t,
            banner_timeout=t,
            auth_timeout=t,
            channel_timeout=t,
            sock=sock,
            transport_factory=_key_type_order(name, known),
        )
    except HostConnectionError as e:
        client.close()
        if not target.unread:
            raise
        raise HostConnectionError(f"{e}{_unread_note(target)}") from e
    except BaseException as e:
        # (before the close, which ends the command and the transport)
        ended = sock.ended() if isinstance(sock, _ProxyCommand) else None
        stage = _stage(client)
        said = _said_before_greeting(client) if stage == "greeting" else ""
        client.close()
        if ended is not None:
            raise HostConnectionError(
                f"SSH to {target}: its ProxyCommand in ~/.ssh/config ended before the login "
                f"did ({target.proxy_command!r}: {ended}); does it reach the host? "
                f"Try it with ssh -v {target.alias}"
            ) from e
        raise HostConnectionError(_explain(target, e, stage, said) + _unread_note(target)) from e
    finally:
        if agent is not None:
            agent.close()
    return client


def _unread_note(target: SSHTarget) -> str:
    """What a login error adds about the host's options that the pool does
    not read, and ``ssh`` would have followed."""
    if not target.unread:
        return ""
    unread = "; ".join(target.unread)
    return f". Note: ~/.ssh/config gives {target.alias} options the pool does not read: {unread}"


def _agent_key_of(agent: paramiko.Agent, key_files: Sequence[str]) -> paramiko.PKey | None:
    """The first key of the SSH agent that one of ``key_files`` is the private
    key of (by its ``.pub`` file, as ``ssh`` with ``IdentitiesOnly`` finds it:
    a key with a passphrase is used through the agent); None if none is."""
    wanted = set()
    for path in key_files:
        try:
            with open(f"{path}.pub") as f:
                wanted.add(base64.b64decode(f.read().split()[1]))
        except (OSError, IndexError, ValueError):
            continue
    return next((key for key in agent.get_keys() if key.asbytes() in wanted), None)


def _through_jump(target: SSHTarget, jumps: int) -> tuple[paramiko.SSHClient, paramiko.Channel]:
    """A connection to the last host of ``target``'s ``ProxyJump`` (itself
    through the ones before it) and a channel from there to ``target``."""
    if jumps > MAX_JUMPS:
        raise HostConnectionError(
            f"SSH to {target}: more than {MAX_JUMPS} ProxyJump hosts lead to it; does a "
            "jump host's own entry in ~/.ssh/config name a ProxyJump that leads back? "
            "(give that host ProxyJump none)"
        )
    *before, last = [hop.strip() for hop in (target.proxy_jump or "").split(",")]
    spec = HostSpec(f"ssh://{last.removeprefix('ssh://')}/1")
    # the host's own StrictHostKeyChecking is not its jump host's
    hop = resolve(spec, target.pool_accepts_new_hosts, target.pool_timeout)
    if before:  # as ssh -J: the hosts before it are its jump hosts
        hop = dataclasses.replace(hop, proxy_command=None, proxy_jump=",".join(before))
    try:
        jump = connect(hop, jumps)
    except HostConnectionError as e:
        if jumps > 1:  # said once, by the outermost jump
            raise
        raise HostConnectionError(f"SSH to {target} through ProxyJump {last}: {e}") from e
    transport = jump.get_transport()
    try:
        assert transport is not None
        channel = transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0), target.timeout
        )
    except Exception as e:  # noqa: BLE001 - paramiko raises several kinds
        jump.close()
        why = getattr(e, "text", "") or repr(e)  # a ChannelException's own words
        raise HostConnectionError(
            f"SSH to {target}: its ProxyJump host {hop} cannot connect to "
            f"{target.hostname} port {target.port} ({why})"
        ) from e
    return jump, channel


def _load_known_hosts(known: KnownHosts, path: str) -> None:
    """Add the host keys of a ``known_hosts`` file to ``known``, and the keys
    it marks ``@revoked`` to its revoked ones.

    Lines paramiko cannot read are skipped, as ``ssh`` skips them: markers
    such as ``@cert-authority`` (a host that only a certificate vouches for
    is then unknown), key types paramiko lacks, lines that are not entries.
    """
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            marker = ""
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                line = line.strip()
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
            except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
                continue
            if entry is None or entry.key is None:
                continue
            if marker == "@revoked":
                known.revoked.append(entry.key)
            elif not marker:
                known.entries.append(entry)
                known.places.append((path, number))


def _said_before_greeting(client: paramiko.SSHClient) -> str:
    """What the server sent before its SSH greeting (``_Transport.said``),
    on one line; empty if nothing."""
    transport = client.get_transport()
    said = getattr(transport, "said", None) or []
    return " ".join(line for line in said if line)


def _stage(client: paramiko.SSHClient) -> str:
    """How far a connection that failed got: ``"greeting"`` (no SSH banner
    came), ``"kex"`` (the key exchange did not finish) or ``"login"``."""
    transport = client.get_transport()
    if transport is None or not transport.remote_version:
        return "greeting"
    return "login" if transport.initial_kex_done else "kex"


#: paramiko's words for a banner it could not read, before the reason
_BANNER_ERROR = "Error reading SSH protocol banner"
#: what sshd sends before it closes a connection from an address it
#: penalizes (OpenSSH 9.8 and later), or when it has too many unauthenticated
#: connections (MaxStartups)
_PENALTY = "Not allowed at this time"


def _explain(t: SSHTarget, e: BaseException, stage: str = "login", said: str = "") -> str:
    """What went wrong while connecting (``stage``: see ``_stage``; ``said``:
    what the server sent before its greeting, if it sent none), and what to
    do about it."""
    if isinstance(e, socket.gaierror):
        return (
            f"SSH to {t}: cannot resolve the host name {t.hostname!r} ({e.strerror}); "
            "check the name, or give its address with HostName in ~/.ssh/config"
        )
    if isinstance(e, (socket.timeout, TimeoutError)):
        return (
            f"SSH to {t}: no answer within {t.timeout:g} s; is the host up and "
            f"is sshd listening on port {t.port}?"
        )
    if isinstance(e, paramiko.BadHostKeyException):
        places: list[tuple[str, int]] = getattr(e, "places", [])
        listed = ", ".join(f"{path}:{line}" for path, line in places)
        files = list(dict.fromkeys(path for path, _ in places)) or list(t.known_hosts[:1])
        removals = " and ".join(f"ssh-keygen -f '{f}' -R '{known_hosts_name(t)}'" for f in files)
        return (
            f"SSH to {t}: the host key {fingerprint(e.key)} does NOT match the one in "
            f"known_hosts{f' ({listed})' if listed else ''}: someone may be intercepting "
            "the connection. If the host's key changed for a good reason, remove the old "
            f"one with {removals or f'ssh-keygen -R {known_hosts_name(t)!r}'}"
        )
    missing = [path for path in t.key_files if not os.path.exists(path)]
    if isinstance(e, paramiko.AuthenticationException):
        keys = ", ".join(t.key_files) or "the SSH agent's keys and ~/.ssh/id_*"
        if missing:
            keys += f" ({', '.join(missing)} does not exist)"
        locked = [path for path in t.key_files or _DEFAULT_KEYS if _needs_passphrase(path)]
        if locked:
            return (
                f"SSH to {t}: authentication as {t.user!r} failed ({e}); tried {keys}. "
                f"{', '.join(locked)} needs a passphrase, which the pool cannot ask for: "
                f"add it to your SSH agent (ssh-add {locked[0]}) where the pool runs, "
                f"so that SSH_AUTH_SOCK reaches the agent{_agent_state(t)}"
            )
        return (
            f"SSH to {t}: authentication as {t.user!r} failed ({e}); tried {keys}. "
            f"Add your public key to ~{t.user}/.ssh/authorized_keys on {t.hostname}, "
            "or name the right key with IdentityFile in ~/.ssh/config "
            "(passwords are not supported)"
        )
    if isinstance(e, paramiko.SSHException) and "No authentication methods" in str(e):
        # paramiko found no key at all: no IdentityFile, no agent, no ~/.ssh/id_*
        named = (
            f"the IdentityFile {', '.join(missing)} does not exist"
            if missing
            else f"~/.ssh/config names no IdentityFile for {t.alias}"
        )
        return (
            f"SSH to {t}: no key to log in with: {named}, no SSH agent answers "
            "(SSH_AUTH_SOCK), and there is no ~/.ssh/id_* key; name the key with "
            "IdentityFile in ~/.ssh/config or add it to the agent (passwords are not supported)"
        )
    if isinstance(e, paramiko.SSHException) and stage != "login":
        # paramiko says "No existing session" also when the greeting or the
        # key exchange did not come within its timeout
        detail = str(e).removeprefix(_BANNER_ERROR).strip()
        cause = e.__context__  # paramiko raises its own in its except block
        if isinstance(cause, (EOFError, ConnectionError)):
            # a close comes as either, as the pool's own greeting went first or not
            detail = "the connection was closed"
        timed_out = not detail or detail == "No existing session" or "timed out" in detail
        if stage == "greeting" and said.startswith(_PENALTY):
            return (
                f"SSH to {t}: sshd refused the connection ({said!r}): it refuses this "
                "address for a while after failed logins or connections that did not log "
                "in (OpenSSH 9.8 and later: PerSourcePenalties in sshd_config, from which "
                "PerSourcePenaltyExemptList exempts addresses), or while too many "
                "connections have not logged in yet (MaxStartups); try again in a minute, "
                f"and check the login with ssh -v {t.alias}"
            )
        if stage == "greeting" and said:
            return (
                f"SSH to {t}: the server at port {t.port} sent no SSH greeting, only "
                f"{said!r}, and closed the connection; is sshd listening on port {t.port}?"
            )
        if stage == "greeting":
            what = f"within {t.timeout:g} s" if timed_out else f"({detail})"
            return (
                f"SSH to {t}: no SSH greeting came from port {t.port} {what}: what takes "
                f"connections there is not sshd, or sshd hangs; is sshd listening on port "
                f"{t.port}?"
            )
        if timed_out:
            return (
                f"SSH to {t}: sshd answered, but the key exchange did not finish within "
                f"{t.timeout:g} s; is the host overloaded? Try ssh -v {t.alias}"
            )
        return (
            f"SSH to {t}: the key exchange with sshd failed ({detail}); the host's sshd "
            f"may offer no algorithm that paramiko knows. Try ssh -v {t.alias}"
        )
    if isinstance(e, paramiko.SSHException) and "No existing session" in str(e):
        # sshd hung up during the login: mostly once a key too many was offered
        return (
            f"SSH to {t}: the host closed the connection while the pool offered it keys "
            f"for {t.user!r}; sshd takes a few only (MaxAuthTries, 6 by default), and the "
            "SSH agent may hold more: name the key with IdentityFile and IdentitiesOnly yes "
            "in ~/.ssh/config"
        )
    if isinstance(e, paramiko.SSHException):
        return f"SSH to {t}: {e}"
    if isinstance(e, OSError):
        if _errnos(e) & UNREACHABLE:
            return (
                f"SSH to {t}: cannot connect ({e.strerror or e}): there is no route to "
                f"{t.hostname}; is the host up, and on a network this machine reaches?"
            )
        return (
            f"SSH to {t}: cannot connect ({e.strerror or e}); is sshd listening on port {t.port}?"
        )
    return f"SSH to {t}: {type(e).__name__}: {e}"


#: the key files that paramiko tries when ~/.ssh/config names none
_DEFAULT_KEYS = tuple(
    os.path.expanduser(f"~/.ssh/id_{kind}") for kind in ("rsa", "dsa", "ecdsa", "ed25519")
)
#: what an OpenSSH private key file holds first
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def _needs_passphrase(path: str) -> bool:
    """Whether the private key file ``path`` is encrypted (PEM or OpenSSH format)."""
    try:
        with open(path) as f:
            text = f.read(1 << 16)
    except (OSError, UnicodeDecodeError):
        return False
    if "ENCRYPTED" in text:  # PEM: "Proc-Type: 4,ENCRYPTED", "BEGIN ENCRYPTED PRIVATE KEY"
        return True
    if "BEGIN OPENSSH PRIVATE KEY" not in text:
        return False
    body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
    try:
        blob = base64.b64decode(body)
    except ValueError:
        return False
    if not blob.startswith(_OPENSSH_MAGIC):
        return False
    # then the name of the cipher, a string with its length first: "none" if not encrypted
    start = len(_OPENSSH_MAGIC) + 4
    length = int.from_bytes(blob[start - 4 : start], "big")
    return blob[start : start + length] != b"none"


def _errnos(e: OSError) -> set[int]:
    """The errnos of ``e``, and of each address paramiko tried
    (``NoValidConnectionsError.errors``)."""
    found = {e.errno} if e.errno is not None else set()
    for error in getattr(e, "errors", {}).values():
        if isinstance(error, OSError) and error.errno is not None:
            found.add(error.errno)
    return found
