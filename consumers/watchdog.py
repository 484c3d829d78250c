"""Runs the repair sweep from every ERP worker's main process: no extra daemon to deploy.

The worker's own timer, in its main process (a Celery worker bootstep), calls
``Repairer.sweep`` every ``interval`` seconds; a Redis key held for one interval lets one worker
of the fleet sweep at a time. It is not a task on the queue on purpose: a task message can be
lost in the very window the sweep repairs, while this timer lives as long as any ERP worker does.

Settings (``contract/settings.py``):

    ERP_REPAIR_STALL     seconds a published, unfinished job may stay quiet (no write-back, no
                         producer update) before its lost messages are looked for; default 60
                         (a lost message is re-sent within stall + interval + the sweep, ~85 s)
    ERP_REPAIR_INTERVAL  seconds between sweeps; default a third of the stall time, 1 to 60 (20)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, bootsteps

from consumers.repair import Repairer
from consumers.reporting import Reporter
from contract.celery_app import app_settings
from contract.errors import PleoExportError
from contract.ledger import Ledger
from contract.schemas import SchemaChoice
from contract.settings import Settings
from contract.store import ledger_client
from pleo.client import PleoClient, make_http_client

log = logging.getLogger(__name__)

DEFAULT_STALL = 60.0


@dataclass(frozen=True, slots=True)
class RepairSettings:
    """How long a job may stay quiet before it is repaired, and how often workers look."""

    stall: float = DEFAULT_STALL
    interval: float = DEFAULT_STALL / 3
    # How long an unacked message counts as held by a live worker, from its delivery or its
    # retry's ETA; None: a minute or the stall time, whichever is longer (consumers/repair.py).
    held_for: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RepairSettings:
        """``ERP_REPAIR_STALL`` and ``ERP_REPAIR_INTERVAL``, as ``Settings`` read them."""
        stall = settings.repair_stall
        interval = settings.repair_interval or max(1.0, min(60.0, stall / 3))
        return cls(stall=stall, interval=interval)


@contextmanager
def open_repairer(settings: Settings, repair: RepairSettings, app: Celery) -> Iterator[Repairer]:
    """A Repairer with its own Redis and Pleo clients (none shared with the pool), then closed."""
    with closing(ledger_client(settings)) as client, make_http_client(settings) as http:
        yield _repairer(client, PleoClient(http, settings), settings, repair, app)


def _repairer(
    client: redis.Redis, pleo: PleoClient, settings: Settings, repair: RepairSettings, app: Celery
) -> Repairer:
    ledger = Ledger(client, lease_ttl=settings.lease_ttl, dedup_ttl=settings.dedup_ttl)
    reporter = Reporter(
        client,
        pleo,
        ledger,
        dedup_ttl=settings.dedup_ttl,
        max_attempts=settings.report_max_attempts,
        request_timeout=settings.http_timeout,
        retry_budget=settings.retry_budget,
    )
    return Repairer(
        client,
        pleo,
        reporter,
        leases=ledger.leases,
        app=app,
        broker_url=settings.broker_url,
        stall=repair.stall,
        held_for=repair.held_for,
        ordering=settings.ordering,
        choose_schema=SchemaChoice(client, app, settings.message_schema).choose,
    )


class RepairWatchdog(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: the sweep runs on the worker's own timer, in its event loop.

    Not in a thread: the prefork pool forks replacement processes at any time, and a fork taken
    while another thread holds a lock can leave the child hung.
    """

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._resources = ExitStack()

    def start(self, parent: Any) -> None:
        """Schedule the sweep every ``interval`` seconds."""
        # The worker's own app, and the settings this worker process was started with.
        app = parent.app
        settings = app_settings(app)
        if not settings.uses_redis_broker:
            # Other brokers (AMQP) redeliver a dead consumer's messages themselves.
            return
        repair = RepairSettings.from_settings(settings)
        repairer = self._resources.enter_context(open_repairer(settings, repair, app))

        def sweep() -> None:
            try:
                repairer.sweep(repair.interval)
            except PleoExportError as exc:
                # Redis or Pleo unreachable now: the next sweep tries again.
                log.warning("repair_sweep_failed error=%s", exc.message)
            except Exception:
                log.exception("repair_sweep_crashed")

        self._timer_entry = parent.timer.call_repeatedly(repair.interval, sweep)
        log.info("repair_watchdog_started stall=%.1f interval=%.1f", repair.stall, repair.interval)

    def stop(self, parent: Any) -> None:
        """Stop sweeping."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        self._resources.close()
