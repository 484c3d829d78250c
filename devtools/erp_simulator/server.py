"""The ERP simulator on a real socket: in a daemon thread for tests, or blocking for the CLI."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

import uvicorn

from devtools.erp_simulator.app import create_app
from devtools.erp_simulator.state import ErpSimState
from producer.serving import bind, url_of

logger = logging.getLogger(__name__)

# A call held by a timeout fault must not hold up shutdown for its whole hang.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 2


class RunningErpSimulator:
    """An ERP simulator serving from a daemon thread; ``stop()`` it, or use it in a ``with``."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, url: str, state: ErpSimState
    ) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.state = state

    def __repr__(self) -> str:
        return f"RunningErpSimulator(url={self.url!r})"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and wait (up to ``timeout`` seconds) for its thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"ERP simulator at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> RunningErpSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    state: ErpSimState, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningErpSimulator:
    """Serve ``state`` on ``host:port`` (0: any free port) from a daemon thread, once it accepts."""
    sock = bind(host, port)
    url = url_of(sock)
    server = uvicorn.Server(_config(state, access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="erp-simulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"ERP simulator at {url} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"ERP simulator at {url} did not start within {startup_timeout} s")
        time.sleep(0.01)
    logger.info("erp_sim_started url=%s", url)
    return RunningErpSimulator(server, thread, url, state)


def serve(
    state: ErpSimState,
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve ``state`` on ``host:port`` until interrupted (what ``pleo-export simulate-erp`` runs).

    ``on_listening`` hears the URL once the socket is bound.
    """
    sock = bind(host, port)
    url = url_of(sock)
    if on_listening is not None:
        on_listening(url)
    logger.info("erp_sim_serving url=%s", url)
    try:
        uvicorn.Server(_config(state, access_log=True)).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled; for the CLI that is a normal stop.
        logger.info("erp_sim_stopped url=%s", url)


def _config(state: ErpSimState, *, access_log: bool) -> uvicorn.Config:
    # log_config=None: leave the host process's logging alone (tests, the CLI configure their own).
    return uvicorn.Config(
        create_app(state),
        lifespan="off",
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
