"""Stopping servers without waiting for them: a test's teardown hands the stop to a thread pool."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundStops:
    """Runs stop calls on a thread pool; ``join()`` waits for all and raises the first failure."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._stops: list[Future[None]] = []

    def stop(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` in the background."""
        self._stops.append(self._pool.submit(stop))

    def join(self) -> None:
        """Wait for every stop so far; re-raise what the first failing one raised."""
        for stop in self._stops:
            stop.result()
