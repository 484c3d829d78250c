"""Sockets and uvicorn for the HTTP servers this package runs (webhook, enqueue API, simulator)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from contract.errors import BadInput, cause

log = logging.getLogger(__name__)

_GRACEFUL_SHUTDOWN_SECONDS: Final = 2
# The longest request head (request line and headers) the servers read: h11's default limit.
MAX_HEAD_BYTES: Final = 16 * 1024


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


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering 431 (not 400) to a request whose head is too large.

    h11 refuses a head past its incomplete-event limit (16 KiB) as a protocol error, which
    uvicorn answers with a bare 400; RFC 6585 has a status for it. ``tests/integration/
    test_webhook_edges.py`` fails loudly if a uvicorn release stops calling this hook.
    """

    def send_400_response(self, msg: str) -> None:
        head, _closed = self.conn.trailing_data
        if b"\r\n\r\n" in head or len(head) < MAX_HEAD_BYTES:
            super().send_400_response(msg)
            return
        reason = b"Request Header Fields Too Large"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        body = b"the request's headers are larger than 16 KiB"
        self.transport.write(
            self.conn.send(h11.Response(status_code=431, headers=headers, reason=reason))
        )
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def server_config(app: Starlette) -> uvicorn.Config:
    """uvicorn settings for our apps; the host process keeps its own logging configuration."""
    return uvicorn.Config(
        app,
        lifespan="on",
        http=_Protocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )


def serve(
    make_app: Callable[[], Starlette],
    host: str,
    port: int,
    *,
    name: str,
    path: str,
    fields: str = "job_id=-",
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Bind ``host:port``, build the app, say where it listens, serve until SIGTERM or Ctrl-C.

    The socket is bound first, so nothing is announced for a port that could not be taken.
    ``name`` and ``fields`` make the log events (``{name}_serving``, ``{name}_stopped``).
    """
    sock = bind(host, port)
    url = url_of(sock)
    app = make_app()
    if on_listening is not None:
        on_listening(f"{url}{path}")
    log.info("%s_serving url=%s%s %s", name, url, path, fields)
    run(app, sock)
    log.info("%s_stopped url=%s %s", name, url, fields)


def run(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C (for a command, a normal stop)."""
    # uvicorn re-raises the Ctrl-C it handled.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(server_config(app)).run(sockets=[sock])
