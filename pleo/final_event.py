"""The job's final event (``completed``, ``completed_with_errors``, ``failed``): sent exactly once.

Both sides end jobs: the ERP workers when every entry is reported, the producer when a run fails
for good after the claim. Either way ``:final`` is taken with ``SET NX`` ("sending", for at most
two minutes while the call is under way) before the event is posted, and holds the event's name
once Pleo accepted it; a 422 means Pleo had finished the job already. A job with its final event
leaves the index of active jobs, and, in the same transaction, its copy of the export items
(``:payloads``) is deleted and it joins ``pleo-export:closing``: the ERP workers' closing step
(``consumers/closing.py``) then gives its records their retention expiry. A crash between the two
loses nothing: the job waits in that set until a closing step has done it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from contract import metrics
from contract.errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    ContractViolation,
    JobNotFound,
    PleoExportError,
    RateLimited,
    TransientUpstreamError,
    Unprocessable,
)
from contract.keys import ACTIVE_JOBS_KEY, CLOSING_KEY, final_key, items_key, payloads_key
from contract.store import now_iso, redis_call
from pleo.activity import PleoActivity
from pleo.client import PleoClient

log = logging.getLogger(__name__)

FINAL_EVENTS = frozenset({"completed", "completed_with_errors", "failed", "already_finished"})
SENDING_MS = 120_000


def send_final(
    client: redis.Redis,
    pleo: PleoClient,
    job_id: str,
    event: str,
    *,
    ttl_ms: int,
    failure_reason: str | None = None,
    failure_reason_type: str | None = None,
    activity: PleoActivity | None = None,
    on_refused: Callable[[str], object] | None = None,
    clock: Callable[[], float] = time.time,
) -> str | None:
    """Send the job's final event unless one was sent or is being sent; return it if sent now.

    ``activity`` is stamped with the moment the event was asked for once Pleo accepted it;
    ``on_refused(job_id)`` runs when Pleo answers that the job was finished already.
    """
    final = final_key(job_id)
    if not _redis(lambda: client.set(final, "sending", nx=True, px=SENDING_MS)):
        return None
    asked_at = clock()
    try:
        pleo.post_job_event(
            job_id, event, failure_reason=failure_reason, failure_reason_type=failure_reason_type
        )
    except Unprocessable:
        log.warning("final_event_refused job_id=%s event=%s (job already finished)", job_id, event)
        metrics.final_events.labels("already_finished").inc()
        if on_refused is not None:
            on_refused(job_id)
        record_final(client, job_id, "already_finished", ttl_ms=ttl_ms)
        return None
    except BaseException:
        # Not sent: let the next completion check try again.
        _redis(lambda: client.delete(final))
        raise
    if activity is not None:
        activity.touch(job_id, asked_at)
    record_final(client, job_id, event, ttl_ms=ttl_ms)
    metrics.final_events.labels(event).inc()
    log.info("job_finished job_id=%s event=%s reason_type=%s", job_id, event, failure_reason_type)
    return event


def record_final(client: redis.Redis, job_id: str, event: str, *, ttl_ms: int) -> None:
    """Record the job's final event (or that Pleo had finished it) and drop it from active jobs.

    The export items we hold for it go at once; the job waits in ``pleo-export:closing`` for its
    retention expiry.
    """

    def write() -> None:
        with client.pipeline(transaction=True) as pipe:
            pipe.set(final_key(job_id), event, px=ttl_ms)
            pipe.hset(
                items_key(job_id),
                mapping={"final_event": event, "final_event_at": now_iso()},
            )
            pipe.pexpire(items_key(job_id), ttl_ms)
            pipe.zrem(ACTIVE_JOBS_KEY, job_id)
            pipe.delete(payloads_key(job_id))
            pipe.zadd(CLOSING_KEY, {job_id: time.time()}, nx=True)
            pipe.pexpire(CLOSING_KEY, ttl_ms)
            pipe.execute()

    _redis(write)


# What Pleo is told when a run fails for good, by error class (first match wins); None: no event
# can help (the job is gone, or Pleo finished it already).
_REASON_TYPES: tuple[tuple[type[PleoExportError], str | None], ...] = (
    (JobNotFound, None),
    (Unprocessable, None),
    (AuthenticationFailed, "authentication_failure"),
    (ContractViolation, "validation_failure"),
    (RateLimited, "pleo_rate_limit"),
    (TransientUpstreamError, "service_unreachable"),
    (BrokerUnavailable, "service_unreachable"),
)


def failure_reason_type(exc: PleoExportError) -> str | None:
    """Pleo's ``failureReasonType`` for a run that failed for good with ``exc``, or None."""
    for kind, reason_type in _REASON_TYPES:
        if isinstance(exc, kind):
            return reason_type
    return "invalid_configuration"


def _redis(fn: Callable[[], Any]) -> Any:
    return redis_call(fn, "the final event")
