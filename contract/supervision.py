"""Runs the supervisor inside every worker (producer and ERP): nothing extra to deploy.

A Celery worker bootstep puts ``tick`` on the worker's own timer, in its main process (not a
thread: the prefork pool forks at any time, and a fork taken while a thread holds a lock can hang
the child). Each tick keeps or seeks the fleet-wide supervisor lease (``contract/lease.py``, not
patient: a held lease means another worker leads); the leader then looks at the active jobs. A
leader that dies stops renewing, and another worker leads within the lease's TTL (three ticks).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import bootsteps

from contract.celery_app import app_settings
from contract.errors import LeaseHeld, PleoExportError
from contract.keys import SUPERVISOR_KEY, fence_of
from contract.lease import Lease, Leases
from contract.store import ledger_client
from contract.supervisor import Supervisor

log = logging.getLogger(__name__)


class Leadership:
    """Holds the supervisor lease across ticks: acquire once, then renew on every tick."""

    def __init__(self, leases: Leases, who: str) -> None:
        self._leases = leases
        self._who = who
        self._lease: Lease | None = None

    def leading(self) -> bool:
        """True while this worker holds the lease (taking it when it is free)."""
        if self._lease is not None and self._leases.renew(self._lease):
            return True
        if self._lease is not None:
            log.warning("supervisor_lease_lost who=%s", self._who)
            self._lease = None
        try:
            self._lease = self._leases.acquire(
                SUPERVISOR_KEY, fence_of(SUPERVISOR_KEY), who=self._who, wait=0, patient=False
            )
        except LeaseHeld:
            return False
        log.info("supervisor_leading who=%s fence=%d", self._who, self._lease.fence)
        return True

    def resign(self) -> None:
        """Give the lease back (a worker's warm shutdown), so another leads at once."""
        if self._lease is not None:
            self._leases.release(self._lease)
            self._lease = None


class SupervisorStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: the supervisor's tick on the worker's timer."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._leadership: Leadership | None = None
        self._client: Any = None

    def start(self, parent: Any) -> None:
        """Tick every ``PLEO_SUPERVISE_INTERVAL`` seconds."""
        settings = app_settings(parent.app)
        self._client = ledger_client(settings)
        interval = settings.supervise_interval
        leases = Leases(self._client, ttl=3 * interval)
        who = f"supervisor {parent.hostname or socket.gethostname()}"
        self._leadership = leadership = Leadership(leases, who)
        supervisor = Supervisor(self._client, parent.app, settings)

        def tick() -> None:
            try:
                if leadership.leading():
                    supervisor.look()
            except PleoExportError as exc:
                # Redis unreachable now: the next tick tries again.
                log.warning("supervisor_tick_failed error=%s", exc.message)
            except Exception:
                log.exception("supervisor_tick_crashed")

        self._timer_entry = parent.timer.call_repeatedly(interval, tick)
        log.info(
            "supervisor_started interval=%.1f dead_run_after=%.1f",
            interval,
            settings.dead_run_after,
        )

    def stop(self, parent: Any) -> None:
        """Stop ticking and hand the leadership on."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        if self._leadership is not None:
            try:
                self._leadership.resign()
            except PleoExportError:
                log.warning("supervisor_resign_failed (the lease lapses by itself)")
        if self._client is not None:
            self._client.close()
