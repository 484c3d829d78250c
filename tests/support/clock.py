"""A clock a test moves by hand, for code that takes an injectable ``clock`` (epoch seconds)."""

from __future__ import annotations

import threading

# 2026-01-01T00:00:00Z: a round start makes the expected timestamps easy to read.
START = 1_767_225_600.0


class ManualClock:
    """Epoch seconds that change only when the test calls ``advance``; safe across threads."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Stand-in for ``time.sleep``: the clock moves on by ``seconds``, at once."""
        self.advance(seconds)
