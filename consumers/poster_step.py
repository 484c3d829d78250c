"""The kick timer: a poster is sent again for staged entries nobody is posting.

Posters leave when the budget makes them wait longer than ``poster.MAX_WAIT`` (a long
``Retry-After``, an empty bucket), when the ERP is down, or when an ordered job waits for a late
message; a poster can also die. Every ERP worker's main process looks every ``KICK_INTERVAL``
seconds: for each company of its connection with staged entries, a free slot and no pause, it sends
one ``consumers.post_entries`` task (at most one pending per company: the ``kick`` key, cleared
when that task starts). As with the repair sweep, it is a timer in the worker and not a task on
the queue, so it lives as long as any ERP worker does.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, closing
from typing import Any

import redis
from celery import bootsteps

from consumers.adapters import build_adapter, close_adapter
from consumers.budget import Budget, governed, limits_for
from consumers.ready import ReadyEntries
from contract.celery_app import app_settings
from contract.errors import PleoExportError
from contract.names import ITEMS_QUEUE, POST_TASK
from contract.store import ledger_client, redis_call

log = logging.getLogger(__name__)

KICK_INTERVAL = 2.0
# How long one kick stands before another may be sent for the same company (if its task never
# ran: lost, or behind a long queue).
KICK_TTL_MS = 10_000


def claim_kick(client: redis.Redis, key: str) -> bool:
    """Whether this timer may send the company's kick (none pending)."""
    return bool(redis_call(lambda: client.set(key, "1", nx=True, px=KICK_TTL_MS), "a kick"))


class PosterKick(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: send a poster where staged entries wait with nobody posting them."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._resources = ExitStack()

    def start(self, parent: Any) -> None:
        """Look every ``KICK_INTERVAL`` seconds, if the connection is governed."""
        app = parent.app
        settings = app_settings(app)
        adapter = build_adapter(settings)
        try:
            limits = limits_for(adapter, settings)
        finally:
            close_adapter(adapter)
        if not governed(limits):
            return
        client = self._resources.enter_context(closing(ledger_client(settings)))
        budget = Budget(
            client, limits, connection=settings.erp_connection, lease_ttl=settings.lease_ttl
        )
        ready = ReadyEntries(
            client, budget, dedup_ttl=settings.dedup_ttl, reads=settings.reads_schemas
        )

        def kick() -> None:
            try:
                for company in ready.companies():
                    if budget.paused_for(company) or budget.held_slots(company) >= budget.slots:
                        continue
                    if not ready.jobs(company):
                        continue
                    if claim_kick(client, budget.key(company, "kick")):
                        app.send_task(POST_TASK, args=[company], queue=ITEMS_QUEUE)
                        log.info("poster_kicked company=%s", company or "-")
            except PleoExportError as exc:
                log.warning("poster_kick_failed error=%s", exc.message)
            except Exception:
                log.exception("poster_kick_crashed")

        self._timer_entry = parent.timer.call_repeatedly(KICK_INTERVAL, kick)
        log.info("poster_kick_started connection=%s limits=%s", settings.erp_connection, limits)

    def stop(self, parent: Any) -> None:
        """Stop looking."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        self._resources.close()
