"""Command line of the agent: ``python -m distex_zmq.agent``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from distex_zmq.agent.daemon import STOPPED, Agent
from distex_zmq.loops import new_event_loop


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m distex_zmq.agent",
        description="Supervises the workers of one distex_zmq pool on this host; "
        "pools start it over SSH, not users.",
    )
    parser.add_argument("--connect", required=True, help="the broker endpoint, seen from here")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    args, worker_args = parser.parse_known_args(argv)
    if args.heartbeat_timeout <= 0:
        parser.error("--heartbeat-timeout must be positive")
    return args, worker_args


def main(argv: list[str] | None = None) -> None:
    args, worker_args = _parse(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The event stream gets a descriptor of its own; stdout then points at
    # stderr, so that nothing printed by accident can garble the stream.
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    agent = Agent(loop, args.connect, worker_args, args.heartbeat_timeout, events_fd)
    try:
        reason = loop.run_until_complete(agent.run())
    finally:
        loop.close()
    if reason != STOPPED:
        print(f"distex_zmq agent on {socket.gethostname()}: exiting, {reason}", file=sys.stderr)


if __name__ == "__main__":
    main()
