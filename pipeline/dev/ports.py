"""Free TCP ports on 127.0.0.1 for servers this machine starts (tests, the bench, local clusters)."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free right now. Every probe stays bound until all are read: closed one
    by one, the kernel may hand the same port out twice (a 12-port cluster drew a duplicate in about
    one set of 300), and two nodes would then share a port."""
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def free_port() -> int:
    """One port free right now."""
    return free_ports(1)[0]
