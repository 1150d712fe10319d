"""Starts and supervises the workers of one pool on one SSH host.

::

    pool loop                       SSH connection              remote host
    ---------                       --------------              -----------
    SSHLauncher  --commands-->      session channel   -->       python -m distex_zmq.agent
                 <--events---                                    |  starts workers,
                 <--stderr---                                    |  reports exits
    Broker (TCP on 127.0.0.1) <--   reverse tunnel    <--       workers (DEALER)

The launcher connects with paramiko (``launch/ssh_connect.py``), opens the
reverse tunnel (``launch/ssh_tunnel.py``) or, in direct mode, tells the
workers the broker's own TCP address, and starts the agent with the remote
interpreter. From then on it is a ``RemoteLauncher`` (``launch/remote.py``):
spawn, kill, stop, exits and heartbeats, as control messages
(``wire/control.py``) one per line; an agent that hears nothing for
``heartbeat_timeout`` stops its workers and exits, as a pool that hears
nothing from it loses the host. The agent learns the workers' CURVE keys to
the broker in the first command, never on a command line, and only once it
has said hello: what the login shell's start-up files run before it (a
``~/.bashrc`` that reads stdin) finds nothing on stdin to eat. paramiko objects block,
so reading and writing the session happen on threads of their own and reach
the pool loop with ``call_soon_threadsafe``; nothing on the pool loop ever
waits for the network.
"""

from __future__ import annotations

import asyncio
import queue
import shlex
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import paramiko

from distex_zmq.errors import HostConnectionError, ProtocolError
from distex_zmq.hostspec import HostSpec, tcp_host
from distex_zmq.launch import ssh_connect as ssh
from distex_zmq.launch.remote import RemoteLauncher, RemoteOutput, RemoteSettings
from distex_zmq.launch.ssh_tunnel import ReverseTunnel
from distex_zmq.version import __version__
from distex_zmq.wire import control

#: The login as a whole (connection, host key, authentication, the agent's
#: session) may take this many times ``connect_timeout``; each network step
#: has ``connect_timeout`` of its own, but an SSH agent that does not answer
#: has none.
LOGIN_TIMEOUT_FACTOR = 2
#: How the agent's hello line starts (``control.encode_line``): where it begins
#: when a remote shell's start-up file printed text with no end of line first.
HELLO_START = b'{"v": '
#: Seconds the agent's end waits for the reader of its stderr to take in the
#: last lines (a process it left may hold its stderr open).
STDERR_DRAIN_TIMEOUT = 2.0

#: Lines of the agent's stderr kept for error messages.
STDERR_TAIL_LINES = 20


#: What runs the agent on the host, as ``python -m distex_zmq.agent`` would
#: but for the directory it starts in (the SSH user's home, or where
#: ``remote_python`` goes with ``cd``): ``-m`` puts that first on the path,
#: where a learner's ``queue.py`` or ``random.py`` stands in for the module
#: of the standard library that the agent imports, and the agent does not
#: start. The code moves it last before any import: a module only there still
#: imports, in the workers' tasks too, but shadows nothing installed. (``-P``
#: keeps it off from Python 3.11, but the host's version is known only from
#: the agent's hello.)
START_AGENT = "-c " + shlex.quote(
    "import sys; sys.path[:1] == [''] and sys.path.append(sys.path.pop(0)); import runpy; "
    "runpy.run_module('distex_zmq.agent', run_name='__main__', alter_sys=True)"
)


class SSHLauncher(RemoteLauncher):
    """The workers of one pool on one SSH host, through an agent there."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: HostSpec,
        settings: RemoteSettings,
        broker_port: int,
        worker_args: list[str],
        worker_keys: dict[str, str],
        on_exit: Callable[[bytes, int, int | None, str], None],
        on_lost: Callable[[SSHLauncher, str, set[bytes]], None],
        on_output: RemoteOutput | None = None,
    ):
        super().__init__(loop, spec, settings.heartbeat_timeout, on_exit, on_lost, on_output)
        self._settings = settings
        self._broker_port = broker_port
        self._worker_args = worker_args
        self._worker_keys = worker_keys
        self.label = f"ssh-{spec.host}"
        #: where its workers run, for messages
        self.where = f"ssh://{spec.host}"
        self.python = settings.python_for(spec.host)
        self._client: paramiko.SSHClient | None = None
        self._tunnel: ReverseTunnel | None = None
        self._command_line = ""
        self._commands: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed: asyncio.Future[None] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    # start-up

    async def start(self) -> None:
        """Connect, open the tunnel, start the agent and wait for its hello."""
        settings = self._settings
        # ~/.ssh/config: its ConnectTimeout bounds the login too, unless the pool has one
        try:
            target = ssh.resolve(self.spec, settings.accept_new_hosts, settings.connect_timeout)
        except HostConnectionError:
            raise
        except Exception as e:  # noqa: BLE001 - a value of the config it cannot use
            raise HostConnectionError(f"cannot start workers on {self.where}: {e}") from e
        opened: asyncio.Future[None] = self._loop.create_future()
        connecting = self._thread(self._open, opened, target, name="connect")
        login_timeout = LOGIN_TIMEOUT_FACTOR * target.timeout
        try:
            try:
                # (cancelled on the timeout: what the thread ends with then is dropped)
                await asyncio.wait_for(opened, login_timeout)
            except asyncio.TimeoutError:
                # its thread waits in a call without a timeout; once that
                # returns, it closes what it opened (``_open``): no need to wait
                self._threads.remove(connecting)
                raise self._login_error(login_timeout, target) from None
            await asyncio.wait_for(asyncio.shield(self._hello), settings.agent_start_timeout)
        except asyncio.TimeoutError:
            await self._close()
            raise HostConnectionError(
                f"the distex_zmq agent on {self.where} did not start within "
                f"{settings.agent_start_timeout:g} s ({self._command_line}): the SSH user's login "
                "shell runs its start-up files (~/.bashrc) first, then the interpreter imports "
                "distex_zmq; is one of them slow, or waiting there (for input on stdin, which "
                "the pool sends only to the agent)? If it is only slow, give it more time with "
                "Pool(..., agent_start_timeout=...). Its stderr:\n" + self._tail()
            ) from None
        except BaseException:
            if (opened.cancelled() or not opened.done()) and connecting in self._threads:
                # cancelled as it connects (a host removed or a pool shut
                # down as it reconnects): as on the timeout, the thread
                # closes what it opens once its call returns; waiting for
                # that call would hold the caller up to the connect timeout
                self._threads.remove(connecting)
            await self._close()
            raise
        # the workers' keys to the broker, through the encrypted session, to
        # the agent itself: the shell's start-up files have run by its hello
        self._send(control.Keys(self._worker_keys))
        self._start_heartbeats()

    def _login_error(self, timeout: float, target: ssh.SSHTarget) -> HostConnectionError:
        """The error of a login to ``target`` that did not finish within ``timeout``."""
        agent = target.agent
        if target.agent_source == "SSH_AUTH_SOCK":
            named, check, instead = f"SSH_AUTH_SOCK={agent}", "", "unset SSH_AUTH_SOCK"
        else:
            named = f"{agent}, the {target.agent_source}"
            check, instead = f"SSH_AUTH_SOCK={agent} ", f"give {target.alias} IdentityAgent none"
        suspect = (
            f"the SSH agent ({named}) may be waiting for a confirmation or the touch of a "
            f"security key, or be stuck: check it with {check}ssh-add -l, or {instead} and "
            "name the key with IdentityFile in ~/.ssh/config"
            if agent
            else "the host stopped answering in the middle of it"
        )
        return HostConnectionError(
            f"{self.where}: the SSH login did not finish within {timeout:g} s "
            f"({LOGIN_TIMEOUT_FACTOR} x {target.timeout_source}); {suspect}"
        )

    def _open(self, opened: asyncio.Future[None], target: ssh.SSHTarget) -> None:
        """Connect to ``target`` and start the agent (on a thread of its own:
        paramiko blocks)."""
        try:
            settings = self._settings
            self._client = client = ssh.connect(target)
            if self._closing:  # the login took too long, or the pool stopped meanwhile
                client.close()
                raise HostConnectionError(f"{self.where}: the pool stopped connecting")
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(max(1, int(settings.heartbeat_timeout / 2)))
            if settings.tunnel:
                try:
                    self._tunnel = ReverseTunnel(
                        transport, ("127.0.0.1", self._broker_port), self.spec.host
                    )
                except paramiko.SSHException as e:
                    raise HostConnectionError(
                        f"{self.where}: its sshd refuses the reverse tunnel that the workers "
                        f"reach the pool through ({e}); allow it there (AllowTcpForwarding "
                        "yes or remote in sshd_config), or let the workers connect straight "
                        "to this machine with Pool(..., ssh_tunnel=False)"
                    ) from e
                endpoint = f"tcp://127.0.0.1:{self._tunnel.remote_port}"
            else:
                endpoint = f"tcp://{tcp_host(self._direct_address(transport))}:{self._broker_port}"
            self._command_line = " ".join(
                [
                    self.python,
                    START_AGENT,
                    f"--connect {endpoint}",
                    f"--heartbeat-timeout {settings.heartbeat_timeout:g}",
                    *map(shlex.quote, self._worker_args),
                ]
            )
            chan = transport.open_session(timeout=target.timeout)
            chan.exec_command(self._command_line)
        except BaseException as e:  # noqa: BLE001 - handed to the pool loop
            if not isinstance(e, HostConnectionError):
                e = HostConnectionError(f"cannot start workers on {self.where}: {e}")
            self._call_soon(_set_exception, opened, e)
            return
        stderr = self._thread(self._read_stderr, chan, name="stderr")
        self._thread(self._read_events, chan, stderr, name="events")
        self._thread(self._write_commands, chan, name="commands")
        self._call_soon(_set_result, opened, None)

    def _direct_address(self, transport: paramiko.Transport) -> str:
        if self._settings.localhost:
            return self._settings.localhost
        try:
            return str(transport.sock.getsockname()[0])
        except (AttributeError, OSError):
            raise HostConnectionError(
                f"{self.where}: cannot tell which address of this machine the host reaches "
                "(a ProxyCommand or ProxyJump connection); give it with "
                "Pool(..., localhost=ADDRESS)"
            ) from None

    def _thread(self, target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
        thread = threading.Thread(
            target=target,
            args=args,
            name=f"distex_zmq ssh {self.spec.host} {name}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()
        return thread

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the pool loop is closed: nobody is listening
            pass

    # the session's threads

    def _read_events(self, chan: paramiko.Channel, stderr: threading.Thread) -> None:
        try:
            for line in chan.makefile("rb"):
                self._call_soon(self._on_event, line)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        status = chan.recv_exit_status()
        # the end's error quotes the agent's last stderr lines: sshd sends them
        # before its exit status, but their reader may not have taken them in
        stderr.join(STDERR_DRAIN_TIMEOUT)
        self._call_soon(self._on_end, status)

    def _read_stderr(self, chan: paramiko.Channel) -> None:
        prefix = f"[{self.spec.host}] "
        try:
            for raw in chan.makefile_stderr("rb"):
                line = raw.decode(errors="replace").rstrip("\n")
                self._stderr_tail.append(line)
                try:
                    sys.stderr.write(prefix + line + "\n")
                except (OSError, ValueError):
                    pass
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _write_commands(self, chan: paramiko.Channel) -> None:
        while (data := self._commands.get()) is not None:
            try:
                chan.sendall(data)
            except (OSError, EOFError, paramiko.SSHException):
                return

    def _tail(self) -> str:
        """The last lines of the agent's stderr, for an error: control
        characters escaped (a start-up file's terminal title would set the
        client's, and its status would keep it)."""
        lines = [_printable(line) for line in self._stderr_tail]
        return "\n".join(lines) or "(nothing)"

    # on the pool loop

    def _send(self, command: control.Command) -> None:
        self._commands.put(control.encode_line(command))

    def _on_event(self, line: bytes) -> None:
        try:
            event = control.decode_line(line, control.POOL_READS)
        except control.VersionError as e:
            self._on_bad_message(e)
        except ProtocolError as e:
            if self._hello.done():
                self._on_bad_message(e)
            else:  # not the agent's: a remote shell's start-up file printed something
                # (with no end of line, it runs into the agent's hello: that is read on)
                start = line.find(HELLO_START, 1)
                printed = line if start < 0 else line[:start]
                self._stderr_tail.append(printed.decode(errors="replace").rstrip("\n"))
                if start > 0:
                    self._on_event(line[start:])
        else:
            self._on_message(event)

    def _on_message(self, event: control.Message) -> None:
        if isinstance(event, control.Stopped):
            return  # it has stopped once its process has exited: ``_on_end``
        started = self._hello.done()
        super()._on_message(event)
        if not started and self._hello.done():
            # what the remote shell's start-up files printed before the agent
            # ran says nothing of why the agent ends later
            self._stderr_tail.clear()

    def _on_end(self, status: int) -> None:
        self._end()
        if self._closing or self.lost:
            return
        if not self._hello.done():
            self._hello.set_exception(self._start_error(status))
        else:
            self._lose(
                f"its agent ended ({_describe_status(status)}); its last stderr lines:\n"
                + self._tail()
            )

    def _python_hint(self, minor: str) -> str:
        return (
            f"name a Python {minor} there that has distex_zmq with "
            f"Pool(..., remote_python=...) (now {self.python!r})"
        )

    def _install_hint(self) -> str:
        return (
            f"install the client's version for {self.python!r} there (pip install "
            f"distex_zmq=={__version__}), or name an interpreter that has it with "
            "Pool(..., remote_python=...)"
        )

    def _start_error(self, status: int) -> HostConnectionError:
        tail = self._tail()
        hint = ""
        if "No module named distex_zmq" in tail or "No module named 'distex_zmq'" in tail:
            hint = (
                f" distex_zmq is not installed for {self.python!r} there: install this "
                f"client's version (pip install distex_zmq=={__version__}) or name an "
                "interpreter that has it with Pool(..., remote_python=...)."
            )
        elif status == 127:
            hint = f" {self.python!r} is not a command there; set Pool(..., remote_python=...)."
        elif status == 126:
            hint = (
                f" {self.python!r} cannot run there as the SSH user (not executable, or in "
                "a directory it may not enter); set Pool(..., remote_python=...)."
            )
        elif not self._stderr_tail:
            hint = (
                " It ended before the agent said hello, and said nothing: does the SSH user's "
                "login shell run commands (not /bin/false), and do its start-up files "
                "(~/.bashrc) go on to them (no exit, no exec of another shell)?"
            )
        return HostConnectionError(
            f"could not start distex_zmq on {self.where} ({_describe_status(status)}) with "
            f"`{self._command_line}`.{hint} Its error output:\n{tail}"
        )

    async def _close(self) -> None:
        """Disconnect (idempotent): the agent, the tunnel, the connection, the threads."""
        self._closing = True
        if self._closed is None:
            self._closed = self._loop.create_future()
            self._thread(self._disconnect, self._closed, name="close")
        await asyncio.shield(self._closed)

    def _disconnect(self, closed: asyncio.Future[None]) -> None:
        self._commands.put(None)
        if self._client is not None:
            self._client.close()
        if self._tunnel is not None:
            self._tunnel.close()
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(5.0)
        self._call_soon(_set_result, closed, None)


def _printable(line: str) -> str:
    """``line`` with its control characters (but tabs) escaped."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in line)


def _describe_status(status: int) -> str:
    if status < 0:  # sshd sends none for a process a signal ended, nor when it is gone
        return "no exit status: it was killed, or the SSH connection closed (sshd stopped?)"
    return f"exit status {status}"


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)
