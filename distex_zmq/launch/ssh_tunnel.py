"""A reverse tunnel: a port on the remote host that leads to a local TCP port.

Remote workers connect to ``127.0.0.1:remote_port`` on their own host; sshd
there forwards each connection over the pool's SSH connection (encrypted,
and it works when the host cannot reach the client), and the tunnel joins
it to the broker's local TCP endpoint. paramiko has no Unix-socket
forwarding, hence TCP on loopback at both ends.

Each forwarded connection is pumped by two threads, one per direction: a
paramiko channel is a blocking object, and a thread blocked on one
connection must not hold up the others.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import paramiko

_logger = logging.getLogger("distex_zmq.launch.ssh_tunnel")

#: Bytes moved per read, either way.
CHUNK = 1 << 18


class ReverseTunnel:
    """Forwards ``127.0.0.1:remote_port`` on the remote host to ``target`` here."""

    def __init__(self, transport: paramiko.Transport, target: tuple[str, int], label: str):
        self._target = target
        self._label = label
        self._lock = threading.Lock()
        self._links: list[tuple[paramiko.Channel, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.remote_port: int = transport.request_port_forward(
            "127.0.0.1", 0, handler=self._on_channel
        )

    def _on_channel(self, chan: paramiko.Channel, origin: Any, server: Any) -> None:
        # called on paramiko's transport thread, which must not block
        self._start_thread(self._link, chan)

    def _start_thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"distex_zmq tunnel {self._label}", daemon=True
        )
        with self._lock:
            if self._closed:
                for arg in args:
                    if isinstance(arg, paramiko.Channel):
                        _close_channel(arg)
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _link(self, chan: paramiko.Channel) -> None:
        try:
            sock = socket.create_connection(self._target, timeout=5)
        except OSError as e:
            _logger.warning("tunnel from %s: cannot reach %s: %s", self._label, self._target, e)
            _close_channel(chan)
            return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                _close_channel(chan)
                sock.close()
                return
            self._links.append((chan, sock))
        self._start_thread(_pump, sock.recv, chan.sendall, lambda: _close_channel(chan))
        _pump(chan.recv, sock.sendall, lambda: self._unlink(chan, sock))

    def _unlink(self, chan: paramiko.Channel, sock: socket.socket) -> None:
        _close_channel(chan)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        with self._lock:
            if (chan, sock) in self._links:
                self._links.remove((chan, sock))

    def close(self, join_timeout: float = 5.0) -> None:
        """End every link (blocking; not on an event loop).

        The remote port itself closes with the SSH connection; cancelling it
        here would wait for an answer that a cut-off host never gives.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links, threads = list(self._links), list(self._threads)
        for chan, sock in links:
            self._unlink(chan, sock)
        for thread in threads:
            thread.join(join_timeout)


def _close_channel(chan: paramiko.Channel) -> None:
    """Close ``chan``. Its transport may have closed under it (the host
    lost, its agent or sshd gone) before paramiko marked the channel
    closed: paramiko then raises ``EOFError`` (or ``SSHException``,
    ``OSError``) as it sends the close, and there is nothing left to close."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.close()


def _pump(
    recv: Callable[[int], bytes], send: Callable[[bytes], Any], done: Callable[[], Any]
) -> None:
    """Move bytes from ``recv`` to ``send`` until either side ends; then ``done()``.

    A paramiko channel whose transport has closed (a host declared lost)
    raises ``EOFError`` or ``SSHException`` rather than ``OSError``: those
    end the link as quietly.
    """
    try:
        while data := recv(CHUNK):
            send(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        done()
