"""Loopback ports for the tests that start servers of their own (a Ray head, a second node)."""

from __future__ import annotations

import socket

__all__ = ["free_ports"]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` a moment ago (held together, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
