"""The kick thread: posters started again for staged entries nobody is posting.

Posters leave when the budget makes them wait longer than ``erp_calls.MAX_WAIT`` (a long
``Retry-After``, an empty bucket), when the ERP is down, when their drain is up, or when an
ordered job waits for a late message; a poster can also die. Every ERP worker pool process runs
one kick thread (started when the process starts, ``worker_process_init``) that looks every
``KICK_INTERVAL`` seconds: it gives back the claims of slots whose lease lapsed (a poster killed
with entries in hand), and for each company of its connection with staged entries, a free slot and
no pause, it starts that process's idle posters. No message is sent for it: it lives as long as
the pool process does, and it cannot be lost in a queue.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from consumers.budget import Budget
from consumers.ready import ReadyEntries
from contract.errors import PleoExportError

log = logging.getLogger(__name__)

KICK_INTERVAL = 2.0


class Kicker:
    """Looks for staged entries nobody posts, and starts this process's posters on them."""

    def __init__(
        self,
        ready: ReadyEntries,
        budget: Budget,
        start_posters: Callable[[str | None], int],
        *,
        interval: float = KICK_INTERVAL,
    ) -> None:
        self._ready = ready
        self._budget = budget
        self._start_posters = start_posters
        self._interval = interval

    def look(self) -> int:
        """One look over the connection's companies; returns the posters started."""
        started = 0
        for company in self._ready.companies():
            # Claims of a slot whose lease lapsed (its holder killed) are staged again here,
            # even when no poster would come to take that slot.
            self._ready.recover(company)
            if self._budget.paused_for(company):
                continue
            if self._budget.held_slots(company) >= self._budget.slots:
                continue
            if not self._ready.jobs(company):
                continue
            now = self._start_posters(company)
            if now:
                log.info("poster_kicked company=%s posters=%d", company or "-", now)
            started += now
        return started

    def run(self, stop: threading.Event) -> None:
        """Look every interval (jittered, so a fleet's processes do not look at once)."""
        while not stop.wait(self._interval * random.uniform(0.75, 1.25)):
            try:
                self.look()
            except PleoExportError as exc:
                # Redis unreachable now: the next look tries again.
                log.warning("poster_kick_failed error=%s", exc.message)
            except Exception:
                log.exception("poster_kick_crashed")

    def start(self) -> threading.Event:
        """Run in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="poster-kick", daemon=True).start()
        return stop
