"""Command line of the spawner: ``python -m distex_zmq.spawner [options]`` serves,
``python -m distex_zmq.spawner status [HOST[:PORT]]`` asks a running one."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import errno
import json
import logging
import os
import signal
import sys

import zmq

from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT
from distex_zmq.loops import new_event_loop
from distex_zmq.security import ClusterKeys, load_secret, secret_source
from distex_zmq.spawner.daemon import Spawner, is_loopback
from distex_zmq.spawner.status import (
    DEFAULT_TIMEOUT,
    StatusError,
    format_status,
    query,
    split_address,
)
from distex_zmq.version import __version__

_logger = logging.getLogger("distex_zmq.spawner")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distex_zmq.spawner",
        description="Start distex_zmq workers on this host for the pools that ask. "
        "Pools and spawner share a secret: the DISTEX_ZMQ_SECRET environment variable "
        "or --secret-file.",
        epilog="`%(prog)s status [HOST[:PORT]]` asks a running spawner what it serves "
        "(see `%(prog)s status --help`).",
    )
    parser.add_argument("--version", action="version", version=f"distex_zmq {__version__}")
    parser.add_argument(
        "--host",
        help="address to listen on (default: all addresses with a secret, 127.0.0.1 without one)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_SPAWNER_PORT,
        help="TCP port to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--secret-file",
        help="file holding the cluster's shared secret (default: the DISTEX_ZMQ_SECRET "
        "environment variable)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=max(os.cpu_count() or 1, 1) * 4,
        help="workers this host runs at most, for all pools (default: 4 per CPU, here %(default)s)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without a secret: anyone who reaches "
        "the port can run any code here (default: off)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every request (default: off)"
    )
    args = parser.parse_args(argv)
    if args.max_workers < 1:
        parser.error("--max-workers must be at least 1")
    if not 0 < args.port < 65536:
        # libzmq would take the port modulo 65536 and listen elsewhere
        parser.error(f"--port must be from 1 to 65535, not {args.port}")
    if args.host is not None and ":" in args.host:
        # as in a pool's host specifications; libzmq would call it no address
        parser.error(
            f"--host {args.host}: IPv6 addresses are not supported; use an IPv4 "
            "address or a host name"
        )
    return args


def _status(argv: list[str]) -> None:
    """``status [HOST[:PORT]]``: print what a running spawner serves, or exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m distex_zmq.spawner status",
        description="Ask a running spawner (over its CURVE channel, with the shared secret "
        "from DISTEX_ZMQ_SECRET or --secret-file) for the pools it serves, their workers "
        "with pids and ages, and its uptime. Changes nothing. Exits with 1 when the "
        "spawner does not answer or refuses.",
    )
    parser.add_argument(
        "address",
        nargs="?",
        default=f"127.0.0.1:{DEFAULT_SPAWNER_PORT}",
        metavar="HOST[:PORT]",
        help="where the spawner listens (default: %(default)s)",
    )
    parser.add_argument(
        "--secret-file",
        help="file holding the cluster's shared secret (default: the DISTEX_ZMQ_SECRET "
        "environment variable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for the answer (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the reply as JSON (default: off)"
    )
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout must be more than 0 seconds, not {args.timeout:g}")
    try:
        host, port = split_address(args.address)
    except ValueError as e:
        parser.error(str(e))
    try:
        secret = load_secret(secret_file=args.secret_file)
        keys = (
            ClusterKeys.from_secret(secret, secret_source(secret_file=args.secret_file))
            if secret is not None
            else None
        )
        reply = query(host, port, keys, args.timeout)
    except (ValueError, StatusError) as e:
        sys.exit(f"distex_zmq spawner status: {e}")
    if args.json:
        print(json.dumps(reply.body(), indent=2))
    else:
        print(format_status(f"{host}:{port}", reply))


class _LogFormatter(logging.Formatter):
    """Log lines stamped in ISO 8601 with the zone's offset
    (``2026-12-01T20:39:18.702+00:00``): the logs of hosts in other time
    zones, or of a host whose zone changed, line up."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = datetime.datetime.fromtimestamp(record.created).astimezone()
        return stamp.isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["status"]:
        _status(argv[1:])
        return
    args = _parse(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        # as OpenSSH with a private key: no secret file that others may read
        secret = load_secret(secret_file=args.secret_file, refuse_exposed=True)
        keys = (
            ClusterKeys.from_secret(secret, secret_source(secret_file=args.secret_file))
            if secret is not None
            else None
        )
    except ValueError as e:
        sys.exit(f"distex_zmq spawner: {e}")
    host = args.host or ("0.0.0.0" if keys is not None else "127.0.0.1")
    if keys is None and not is_loopback(host):
        if not args.insecure:
            sys.exit(
                f"distex_zmq spawner: refusing to listen on {host} without a secret: anyone "
                "who reaches the port could run any code here. Set DISTEX_ZMQ_SECRET or "
                "--secret-file (and the same secret for the pools), or pass --insecure on a "
                "network you trust entirely."
            )
        _logger.warning(
            "INSECURE: listening on %s without a secret; anyone who reaches "
            "the port can run any code on this host",
            host,
        )
    elif keys is None and os.geteuid() == 0:
        _logger.warning(
            "running as root without a secret: every user of this machine can run any "
            "code as root through this spawner; start it as an unprivileged user, or set "
            "DISTEX_ZMQ_SECRET or --secret-file (and the same secret for the pools)"
        )
    # what stops it; a signal ignored when it started stays ignored, as
    # nohup asks of SIGHUP and a shell of a background job's SIGINT
    stop_signals = [
        sig
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if sig == signal.SIGTERM or signal.getsignal(sig) != signal.SIG_IGN
    ]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # handled on the loop below
    # and held until the loop runs: uvloop drops a signal that comes between
    # add_signal_handler and the start of the loop (systemd's stop of a
    # spawner just started)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        spawner = Spawner(loop, host, args.port, keys, args.max_workers)
    except zmq.ZMQError as e:
        hint = ""
        if e.errno == errno.ENODEV:  # libzmq's word for a name it cannot resolve
            hint = f" ({host!r} is not an address, a host name known here, or a network interface)"
        elif e.errno == errno.EADDRINUSE:
            here = "127.0.0.1" if host == "0.0.0.0" else host
            hint = (
                f": another process listens on port {args.port} (another spawner? "
                f"`python -m distex_zmq.spawner status {here}:{args.port}` asks it); stop it, "
                "or choose another --port"
            )
        elif e.errno == errno.EADDRNOTAVAIL:
            hint = f" ({host} is no address of this host: give one of its own, or 0.0.0.0 for all)"
        sys.exit(f"distex_zmq spawner: cannot listen on {host}:{args.port}: {e}{hint}")
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        spawner.stop(f"got {sig.name}")

    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig)

    def serving() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        _logger.info(
            "distex_zmq %s spawner (pid %d) on %s, %s, at most %d workers",
            __version__,
            os.getpid(),
            spawner.endpoint,
            "CURVE with the shared secret" if keys else "NO authentication",
            args.max_workers,
        )

    loop.call_soon(serving)
    try:
        reason = loop.run_until_complete(spawner.serve())
    finally:
        loop.close()
    _logger.info("stopped: %s", reason)
    if received and received[0] == signal.SIGINT:
        # as a Python program that Ctrl-C ends: killed by SIGINT, so that a
        # shell loop that restarts the spawner ends too, instead of starting
        # it again as after a clean exit
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    main()
