"""Jobs Pleo finished behind our back: how we learn it, and how we record why.

Two ways in: Pleo refuses a write with 422 because the job is finished (the Reporter then reads
the job once, ``explain``), or a worker finds, before posting an entry, that a job quiet for longer
than its ``expiresIn`` is finished (``check``, via ``ExpiryCheck``). Either way the job's
``:items`` hash gets ``finished_by_pleo`` (its status in Pleo), ``pleo_failure_reason_type`` and
``pleo_failure_reason`` beside ``final_event=already_finished``, and an expiry is logged as
``job_expired_in_pleo`` at WARNING.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from redis.typing import EncodableT, FieldT

from consumers.expiry import ExpiryCheck
from contract.errors import PleoExportError
from contract.keys import items_key
from contract.store import redis_call
from pleo.activity import PleoActivity
from pleo.client import PleoClient
from pleo.models import ExportJob

log = logging.getLogger(__name__)

# Pleo's failureReason is free text from the network: kept, but never more than this.
_REASON_CHARS = 500


def finish_fields(job: ExportJob) -> dict[str, str]:
    """The ``:items`` fields that say how Pleo finished ``job``: status, reason type, reason."""
    fields = {"finished_by_pleo": job.status}
    if job.failure_reason_type is not None:
        fields["pleo_failure_reason_type"] = job.failure_reason_type
    if job.failure_reason is not None:
        fields["pleo_failure_reason"] = job.failure_reason[:_REASON_CHARS]
    return fields


class FinishedInPleo:
    """Finds and explains jobs Pleo finished itself, into the job's ``:items`` hash."""

    def __init__(
        self,
        client: redis.Redis,
        pleo: PleoClient,
        activity: PleoActivity,
        *,
        dedup_ttl: int,
        recheck: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._pleo = pleo
        self._ttl_ms = dedup_ttl * 1000
        self._expiry = ExpiryCheck(activity, pleo, recheck=recheck, clock=clock)

    def check(self, job_id: str) -> bool:
        """Whether Pleo finished the job while we were quiet; if so, how is recorded."""
        job = self._expiry.finished_job(job_id)
        if job is None:
            return False
        self._note(job)
        return True

    def explain(self, job_id: str) -> None:
        """Pleo refused a write because the job is finished: read it once and record how."""
        try:
            job = self._pleo.get_job(job_id)
        except PleoExportError as exc:
            # The refusal stands either way; only its explanation is missing.
            log.warning("finished_job_unreadable job_id=%s error=%s", job_id, exc.message)
            return
        self._note(job)

    def _note(self, job: ExportJob) -> None:
        if job.failure_reason_type == "job_expired":
            log.warning(
                "job_expired_in_pleo job_id=%s expires_in=%d expired_at=%s",
                job.id,
                job.expires_in,
                job.raw.get("expiredAt"),
            )
        else:
            log.warning(
                "job_finished_in_pleo job_id=%s status=%s reason_type=%s",
                job.id,
                job.status,
                job.failure_reason_type,
            )
        items = items_key(job.id)
        fields: dict[FieldT, EncodableT] = {}
        fields.update(finish_fields(job).items())

        def write() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(items, mapping=fields)
                pipe.pexpire(items, self._ttl_ms)
                pipe.execute()

        redis_call(write, "reporting")
