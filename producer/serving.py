"""Sockets and uvicorn for the HTTP servers this package runs (webhook, enqueue API, simulator)."""

from __future__ import annotations

import contextlib
import socket
from typing import Final

import uvicorn
from starlette.applications import Starlette

from contract.errors import BadInput, cause

_GRACEFUL_SHUTDOWN_SECONDS: Final = 2


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


def server_config(app: Starlette) -> uvicorn.Config:
    """uvicorn settings for our apps; the host process keeps its own logging configuration."""
    return uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C (for a command, a normal stop)."""
    # uvicorn re-raises the Ctrl-C it handled.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(server_config(app)).run(sockets=[sock])
