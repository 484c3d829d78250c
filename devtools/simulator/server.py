"""Running the simulator on a real socket: in a daemon thread for tests, or blocking for the CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable

from devtools import served
from devtools.simulator.app import create_app
from devtools.simulator.state import SimState

logger = logging.getLogger(__name__)


class RunningSimulator(served.RunningServer[SimState]):
    """A simulator serving from a daemon thread; ``stop()`` it or use it as a context manager."""

    what = "simulator"


def start_in_thread(
    state: SimState, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningSimulator:
    """Serve ``state`` on ``host:port`` (0: any free port) from a daemon thread, once it accepts."""
    app = create_app(state)
    running = served.start_in_thread(
        RunningSimulator, app, state, host=host, port=port, startup_timeout=startup_timeout
    )
    logger.info("sim_started url=%s jobs=%d", running.url, len(state.jobs))
    return running


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

    def bound(url: str) -> None:
        logger.info("sim_serving url=%s", url)
        for job_id, job in state.jobs.items():
            logger.info(
                "sim_job job_id=%s status=%s items=%d", job_id, job.status, job.number_of_items
            )

    served.serve_blocking(
        create_app(state),
        host,
        port,
        on_listening=on_listening,
        on_bound=bound,
        on_stopped=lambda url: logger.info("sim_stopped url=%s", url),
    )
