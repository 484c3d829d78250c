"""A simulator's ASGI app on a real socket: from a daemon thread for tests, or blocking for the CLI.

The Pleo simulator (``devtools/simulator/server.py``) and the ERP simulator
(``devtools/erp_simulator/server.py``) both serve this way; each names itself (``what``) in its
errors, its thread and its log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import uvicorn

from producer.serving import bind, url_of

logger = logging.getLogger(__name__)

# A request held by a timeout fault must not hold up shutdown for its whole delay.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 2

S = TypeVar("S")


class RunningServer(Generic[S]):
    """An app serving ``state`` from a daemon thread; ``stop()`` it, or use it in a ``with``."""

    what = "server"

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, url: str, state: S
    ) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.state = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and wait (up to ``timeout`` seconds) for its thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.what} at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


R = TypeVar("R", bound=RunningServer[Any])


def start_in_thread(
    running: type[R], app: Any, state: Any, *, host: str, port: int, startup_timeout: float
) -> R:
    """Serve ``app`` on ``host:port`` (0: any free port) from a daemon thread, once it accepts."""
    what = running.what
    sock = bind(host, port)
    url = url_of(sock)
    server = uvicorn.Server(config(app, access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=what.replace(" ", "-"), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"{what} at {url} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"{what} at {url} did not start within {startup_timeout} s")
        time.sleep(0.01)
    return running(server, thread, url, state)


def serve_blocking(
    app: Any,
    host: str,
    port: int,
    *,
    on_listening: Callable[[str], None] | None,
    on_bound: Callable[[str], None],
    on_stopped: Callable[[str], None],
) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (what the CLI runs).

    ``on_listening`` hears the URL once the socket is bound, so nothing is announced for a port
    that could not be taken.
    """
    sock = bind(host, port)
    url = url_of(sock)
    if on_listening is not None:
        on_listening(url)
    on_bound(url)
    try:
        uvicorn.Server(config(app, access_log=True)).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled; for the CLI that is a normal stop, not an error.
        on_stopped(url)


def config(app: Any, *, access_log: bool) -> uvicorn.Config:
    """uvicorn's config for a simulator; log_config=None leaves the host process's logging alone
    (tests and the CLI configure their own)."""
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
