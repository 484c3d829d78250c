"""``GET /metrics``: what a scrape returns, and the small endpoint each worker type can start.

What a scrape returns (``render``): this process's counters, or, in the library's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR`` set before the process started), every process's counters
added up from their files (a prefork worker's main process and all its pool processes, live or
dead), and the gauges about active jobs read from Redis there and then (``contract/job_gauges.py``).

The worker endpoint (``MetricsStep``, a Celery worker bootstep, when ``PLEO_METRICS_PORT`` is set)
listens in the worker's main process and is served from the worker's own timer, not from a
thread: the prefork pool forks replacement processes at any time, and a fork taken while another
thread holds a lock can leave the child hung (the supervisor and the repair sweep run the same
way). A prefork worker started without ``PROMETHEUS_MULTIPROC_DIR`` would count only its main
process, so the step refuses to start it (one sentence, exit 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import redis
from celery import bootsteps
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

import contract.metrics  # noqa: F401 - the counters exist (at 0) in every process that serves
from contract.celery_app import app_settings
from contract.errors import BadInput
from contract.job_gauges import ActiveJobsCollector
from contract.store import ledger_client

log = logging.getLogger(__name__)

# The library's own switch, which it reads from the environment when it is imported; it is not
# a Settings field because it must be set before any process of the worker starts.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Prometheus scrapes from another host or container; the endpoint serves counts, never a secret.
ALL_INTERFACES: Final = ""
POLL_EVERY: Final = 0.1  # seconds between two looks at the socket: a scrape waits at most this
_MAX_REQUEST: Final = 8192
_CLIENT_TIMEOUT: Final = 5.0
_PID = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess mode's directory, when the library runs in that mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(client: redis.Redis) -> tuple[bytes, str]:
    """The text exposition of a scrape now, and its content type."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(ActiveJobsCollector(client))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThisProcess(Collector):
    """The process's default registry (counters, and the library's process metrics)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def remove_stale_files(directory: str, *, alive: Callable[[int], bool]) -> int:
    """Remove the files processes no longer running left in ``directory``; return how many.

    Called before the worker counts anything: what is left is a previous worker's, whose counts
    would otherwise be added to this one's. A pool process that dies later keeps its file (its
    counts stay in the totals).
    """
    removed = 0
    for path in Path(directory).glob("*.db"):
        match = _PID.search(path.name)
        if match and not alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsServer:
    """A minimal HTTP/1.0 server for ``GET /metrics``, advanced by ``poll`` (never blocks long).

    Non-blocking sockets under one selector: ``poll`` accepts, reads each request's head, and
    answers it whole. A client that sends no complete head within five seconds is dropped.
    """

    def __init__(
        self,
        host: str,
        port: int,
        scrape: Callable[[], tuple[bytes, str]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scrape = scrape
        self._clock = clock
        self._listener = socket.create_server((host, port), backlog=16)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._heads: dict[socket.socket, tuple[bytearray, float]] = {}

    @property
    def port(self) -> int:
        """The port it listens on (useful with port 0)."""
        return int(self._listener.getsockname()[1])

    def poll(self) -> None:
        """Serve whatever is ready now."""
        for key, _ in self._selector.select(0):
            if key.fileobj is self._listener:
                self._accept()
            else:
                self._read(key.fileobj)  # type: ignore[arg-type]
        now = self._clock()
        for conn, (_, since) in list(self._heads.items()):
            if now - since > _CLIENT_TIMEOUT:
                self._close(conn)

    def close(self) -> None:
        """Stop listening and drop every open connection."""
        for conn in list(self._heads):
            self._close(conn)
        self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, _ = self._listener.accept()
                conn.setblocking(False)
                self._heads[conn] = (bytearray(), self._clock())
                self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        head, _ = self._heads[conn]
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        head += chunk
        if chunk and b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST:
            return
        self._answer(conn, bytes(head))

    def _answer(self, conn: socket.socket, head: bytes) -> None:
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"GET" and path == b"/metrics":
            try:
                body, kind = self._scrape()
                status = "200 OK"
            except Exception:  # a scrape must never take the worker down
                log.exception("metrics_scrape_failed")
                body, kind, status = b"scrape failed\n", "text/plain", "500 Internal Server Error"
        else:
            body, kind, status = b"not found\n", "text/plain", "404 Not Found"
        header = (
            f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            conn.setblocking(True)
            conn.settimeout(_CLIENT_TIMEOUT)
            conn.sendall(header + body)
        except OSError:
            log.debug("metrics_client_gone", exc_info=True)
        self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        self._heads.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()


class MetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: ``GET /metrics`` on ``PLEO_METRICS_PORT``, served by the main process."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._server: MetricsServer | None = None
        self._client: redis.Redis | None = None
        self._timer_entry: Any = None

    def start(self, parent: Any) -> None:
        """Listen, and look at the socket every ``POLL_EVERY`` seconds on the worker's timer."""
        settings = app_settings(parent.app)
        if not settings.metrics_port:
            return
        directory = multiprocess_dir()
        if directory is None and _forks(parent):
            sys.stderr.write(
                f"Worker not started: PLEO_METRICS_PORT is set but {MULTIPROC_ENV} is not, and a "
                "prefork worker's metrics need the multiprocess mode (see the README, Metrics).\n"
            )
            sys.stderr.flush()
            raise SystemExit(BadInput.exit_code)
        if directory is not None:
            removed = remove_stale_files(directory, alive=pid_alive)
            log.info("metrics_multiprocess dir=%s stale_files_removed=%d", directory, removed)
        self._client = client = ledger_client(settings)
        self._server = server = MetricsServer(
            ALL_INTERFACES, settings.metrics_port, lambda: render(client)
        )
        self._timer_entry = parent.timer.call_repeatedly(POLL_EVERY, server.poll)
        log.info("metrics_endpoint_started port=%d", server.port)

    def stop(self, parent: Any) -> None:
        """Stop serving."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._client is not None:
            self._client.close()


def _forks(worker: Any) -> bool:
    """Whether the worker runs its tasks in child processes (the prefork pool)."""
    return getattr(worker.pool_cls, "__module__", "") == "celery.concurrency.prefork"
