"""Closing finished jobs: their records get the retention expiry, their working state goes.

The final event (``pleo/final_event.py``) deletes the job's export items at once and puts the job
in ``pleo-export:closing``, in one transaction. Every ERP worker's main process then runs the
closing step on its own timer (a bootstep, like the repair sweep's; one worker of the fleet at a
time, under the ``pleo-export:closer`` lease). For each job waiting there, oldest first:

1. ``before_retention(job_id)`` runs: by default it writes the job's audit manifest
   (``consumers/audit.py``).
   If it raises, the job stays in the set, untouched, and the next step tries again;
2. one Lua script deletes what only a live job needs (``contract.keys.DROPPED_AT_CLOSE``), gives
   what is kept (``contract.keys.RETAINED``: ids, outcomes, counts, the final event) the
   retention expiry (``PLEO_RETENTION``; 0 deletes them as well), keeps each fencing counter at
   least as long as its lease still lives, and removes the job from the set.

A crash anywhere leaves the job in the set (or already closed): closing is safe to repeat. A late
redelivery of one of the job's messages finds ``:final`` and is skipped while it is retained;
after that, the ERP adapter's idempotency (``post`` on ``accounting_entry_id``) still books the
entry once, and Pleo's 422 on its write-back closes the job again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import Any

import redis
from celery import bootsteps

from contract.celery_app import app_settings
from contract.dead_letters import forget as forget_parked
from contract.errors import LeaseHeld, PleoExportError
from contract.keys import (
    CLOSER_KEY,
    CLOSING_KEY,
    dropped_keys,
    fence_of,
    lease_pairs,
    retained_keys,
)
from contract.lease import Leases
from contract.settings import Settings
from contract.store import ledger_client, redis_call

log = logging.getLogger(__name__)

# Jobs closed per step at most: a backlog is worked off over a few steps, none of them long.
BATCH = 100

# KEYS[1] the closing set, then the keys to delete, then the keys to keep, then (lease, fence)
# pairs; ARGV[1] job id, ARGV[2] retention ms (0: delete), ARGV[3] how many to delete,
# ARGV[4] how many to keep. Returns how many keys were deleted and how many got the expiry.
_CLOSE = """
local ms = tonumber(ARGV[2])
local i = 2
local deleted, kept = 0, 0
for _ = 1, tonumber(ARGV[3]) do
  deleted = deleted + redis.call('DEL', KEYS[i])
  i = i + 1
end
for _ = 1, tonumber(ARGV[4]) do
  if ms > 0 then
    kept = kept + redis.call('PEXPIRE', KEYS[i], ms)
  else
    deleted = deleted + redis.call('DEL', KEYS[i])
  end
  i = i + 1
end
while i < #KEYS do
  -- A lease keeps its own expiry; its fencing counter lives at least as long as it does.
  local keep = math.max(ms, redis.call('PTTL', KEYS[i]))
  if keep > 0 then
    kept = kept + redis.call('PEXPIRE', KEYS[i + 1], keep)
  else
    deleted = deleted + redis.call('DEL', KEYS[i + 1])
  end
  i = i + 2
end
redis.call('ZREM', KEYS[1], ARGV[1])
return {deleted, kept}
"""


def no_audit(job_id: str) -> None:
    """The default ``before_retention``: nothing to write before a job's records expire."""


class Closer:
    """Closes the jobs waiting in ``pleo-export:closing``; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention: int,
        leases: Leases,
        before_retention: Callable[[str], object] = no_audit,
    ) -> None:
        self._r = client
        self._retention_ms = retention * 1000
        self._leases = leases
        self._before_retention = before_retention
        self._close = client.register_script(_CLOSE)

    def step(self) -> list[str]:
        """Close up to ``BATCH`` waiting jobs unless another worker is closing now; the closed."""
        try:
            with self._leases.held(
                CLOSER_KEY, fence_of(CLOSER_KEY), who="closing step", wait=0, patient=False
            ):
                waiting = self._call(lambda: self._r.zrange(CLOSING_KEY, 0, BATCH - 1))
                return [job for job in map(_text, waiting) if self.close(job)]
        except LeaseHeld:
            return []

    def close(self, job_id: str) -> bool:
        """Run ``before_retention`` for the job, then expire its records; False if it raised."""
        try:
            self._before_retention(job_id)
        except Exception:
            # The job stays in the set with every record intact: the next step tries again.
            log.exception("job_close_deferred job_id=%s (before_retention failed)", job_id)
            return False
        dropped, kept = dropped_keys(job_id), retained_keys(job_id)
        keys = [CLOSING_KEY, *dropped, *kept, *lease_pairs(job_id)]
        args: list[str | int] = [job_id, self._retention_ms, len(dropped), len(kept)]
        deleted, expiring = self._call(lambda: self._close(keys=keys, args=args))
        # Parked copies of its messages carry export items and can help no one now.
        deleted += forget_parked(self._r, job_id)
        log.info(
            "job_closed job_id=%s deleted=%d kept=%d retention=%ds",
            job_id,
            deleted,
            expiring,
            self._retention_ms // 1000,
        )
        return True

    def waiting(self) -> list[str]:
        """The jobs waiting to be closed, oldest first."""
        return [_text(job) for job in self._call(lambda: self._r.zrange(CLOSING_KEY, 0, -1))]

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "closing jobs")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def open_closer(
    settings: Settings, *, before_retention: Callable[[str], object] | None = None
) -> Iterator[Closer]:
    """A Closer with its own Redis client (none shared with the pool), closed after.

    ``before_retention`` defaults to writing the job's audit manifest (``consumers/audit.py``).
    """
    from consumers.audit import manifest_before_retention

    with closing(ledger_client(settings)) as client:
        leases = Leases(client, ttl=max(settings.lease_ttl, 3 * settings.close_interval))
        yield Closer(
            client,
            retention=settings.retention,
            leases=leases,
            before_retention=before_retention or manifest_before_retention(client, settings),
        )


class ClosingStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: the closing step every ``PLEO_CLOSE_INTERVAL`` on the worker's timer.

    In the main process, not a thread, for the reason ``consumers/watchdog.py`` gives. The
    ``before_retention`` it calls is the class attribute ``before_retention``; None (the default):
    the audit manifest's writer.
    """

    requires = ("celery.worker.components:Timer",)
    before_retention: Callable[[str], object] | None = None

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._resources = ExitStack()

    def start(self, parent: Any) -> None:
        """Schedule the closing step."""
        settings = app_settings(parent.app)
        closer = self._resources.enter_context(
            open_closer(settings, before_retention=type(self).before_retention)
        )

        def tick() -> None:
            started = time.monotonic()
            try:
                closed = closer.step()
            except PleoExportError as exc:
                # Redis unreachable now: the next step tries again.
                log.warning("closing_step_failed error=%s", exc.message)
                return
            if closed:
                log.info(
                    "closing_step jobs=%d seconds=%.3f", len(closed), time.monotonic() - started
                )

        self._timer_entry = parent.timer.call_repeatedly(settings.close_interval, tick)
        log.info(
            "closing_step_started interval=%.1f retention=%d",
            settings.close_interval,
            settings.retention,
        )

    def stop(self, parent: Any) -> None:
        """Stop closing."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        self._resources.close()
