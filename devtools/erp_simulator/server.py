"""The ERP simulator on a real socket: in a daemon thread for tests, or blocking for the CLI."""

from __future__ import annotations

import logging
from collections.abc import Callable

from devtools import served
from devtools.erp_simulator.app import create_app
from devtools.erp_simulator.state import ErpSimState

logger = logging.getLogger(__name__)


class RunningErpSimulator(served.RunningServer[ErpSimState]):
    """An ERP simulator serving from a daemon thread; ``stop()`` it, or use it in a ``with``."""

    what = "ERP simulator"


def start_in_thread(
    state: ErpSimState, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningErpSimulator:
    """Serve ``state`` on ``host:port`` (0: any free port) from a daemon thread, once it accepts."""
    app = create_app(state)
    running = served.start_in_thread(
        RunningErpSimulator, app, state, host=host, port=port, startup_timeout=startup_timeout
    )
    logger.info("erp_sim_started url=%s", running.url)
    return running


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
    served.serve_blocking(
        create_app(state),
        host,
        port,
        on_listening=on_listening,
        on_bound=lambda url: logger.info("erp_sim_serving url=%s", url),
        on_stopped=lambda url: logger.info("erp_sim_stopped url=%s", url),
    )
