"""Sockets for the HTTP servers this package runs (webhook receiver, simulator) on uvicorn."""

from __future__ import annotations

import socket

from contract.errors import BadInput, cause


def bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket on ``host:port`` (0: any free port), so the URL is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only disables Nagle on sockets whose proto says TCP
    # (without it every request on loopback waited ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInput(f"Cannot listen on {host}:{port}: {cause(exc)}.") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
