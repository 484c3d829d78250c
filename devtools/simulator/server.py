"""Running the simulator on a real socket: in a daemon thread for tests, or blocking for the CLI."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

import uvicorn

from devtools.simulator.app import create_app
from devtools.simulator.state import SimState
from producer.serving import bind, url_of

logger = logging.getLogger(__name__)

# A request held by a ``timeout`` fault must not hold up shutdown for its whole delay.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 2


class RunningSimulator:
    """A simulator serving from a daemon thread; ``stop()`` it or use it as a context manager."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, url: str, state: SimState
    ) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.state = state

    def __repr__(self) -> str:
        return f"RunningSimulator(url={self.url!r})"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and wait (up to ``timeout`` seconds) for its thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"simulator at {self.url} did not stop within {timeout} s")

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    state: SimState, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningSimulator:
    """Serve ``state`` on ``host:port`` (0: any free port) from a daemon thread, once it accepts."""
    sock = bind(host, port)
    url = url_of(sock)
    server = uvicorn.Server(_config(state, access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="pleo-simulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"simulator at {url} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"simulator at {url} did not start within {startup_timeout} s")
        time.sleep(0.01)
    logger.info("sim_started url=%s jobs=%d", url, len(state.jobs))
    return RunningSimulator(server, thread, url, state)


def serve(
    state: SimState,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve ``state`` on ``host:port`` until interrupted (what ``pleo-export simulate`` runs).

    ``on_listening`` hears the URL once the socket is bound, so nothing is announced for a port
    that could not be taken.
    """
    sock = bind(host, port)
    url = url_of(sock)
    if on_listening is not None:
        on_listening(url)
    logger.info("sim_serving url=%s", url)
    for job_id, job in state.jobs.items():
        logger.info("sim_job job_id=%s status=%s items=%d", job_id, job.status, job.number_of_items)
    try:
        uvicorn.Server(_config(state, access_log=True)).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled; for the CLI that is a normal stop, not an error.
        logger.info("sim_stopped url=%s", url)


def _config(state: SimState, *, access_log: bool) -> uvicorn.Config:
    # log_config=None: leave the host process's logging alone (tests, the CLI configure their own).
    return uvicorn.Config(
        create_app(state),
        lifespan="off",
        log_config=None,
        access_log=access_log,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
