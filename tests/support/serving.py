"""An ASGI app (webhook receiver, enqueue API) served by uvicorn from a thread, for tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from producer.serving import bind, server_config, url_of


@dataclass
class Served:
    """An app served by uvicorn from a daemon thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), f"receiver at {self.url} did not stop"


def start_in_thread(app: Starlette) -> Served:
    """Serve ``app`` on a free loopback port; return once it accepts connections."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="webhook", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the receiver thread died during startup"
        assert time.monotonic() < deadline, "the receiver did not start within 10 s"
        time.sleep(0.01)
    return Served(url_of(sock), server, thread)
