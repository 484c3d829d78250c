"""One way in for every trigger of a producer run (webhook, CLI, demo): ``enqueue``.

Triggers of the same job within a short window send one ``producer.enqueue_export_job`` task:
Pleo may deliver the same event several times, under several webhook ids, and users click twice.
This only saves work. The producer's lease lets one run per job proceed and its ledger marks stop
a second message per entry, so a duplicate task that slips through (after the window, or across
two Redis instances) is harmless.

Redis keys (on ``settings.ledger_url``; the job's other keys are listed in ``contract/keys.py``):

    pleo-export:active-jobs            every trigger adds the job (ZADD NX, first request time)
                                       and stamps ``requested_at`` in its progress record, in the
                                       same script: what a trigger acknowledged, the supervisor
                                       sees through to a run (contract/supervisor.py)
    pleo-export:job:{job_id}:trigger   the Celery task id last sent for the job; set with
                                       ``NX PX window`` by a Lua script that returns the id already
                                       there, so a claim and its answer are one round trip; deleted
                                       (only if it still holds our id) when the send fails
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from contract.celery_app import make_app
from contract.errors import BrokerUnavailable
from contract.ids import validate_job_id, validate_uuid
from contract.keys import ACTIVE_JOBS_KEY, progress_key, trigger_key
from contract.lease import DELETE_IF_OURS
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.retrying import PUBLISH_RETRY_POLICY
from contract.settings import Settings
from contract.store import ledger_client

log = logging.getLogger(__name__)

# KEYS[1] trigger key, KEYS[2] active jobs, KEYS[3] progress; ARGV[1] our task id, ARGV[2]
# window in ms, ARGV[3] job id, ARGV[4] now (epoch seconds), ARGV[5] records' ttl ms.
# Records the job as active (durably: the supervisor resumes it if its task is lost), then
# returns the task id already holding the trigger key, or nil when ours was stored (and stamped
# as the job's latest request; a deduplicated trigger does not push that stamp on).
_CLAIM = """
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[3], 'requested_at', ARGV[4], 'task_id', ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return nil
"""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What a trigger did: the task now responsible for the job, and whether it was already sent."""

    job_id: str
    task_id: str
    deduplicated: bool


def enqueue(
    job_id: str,
    *,
    company_id: str | None = None,
    settings: Settings | None = None,
    app: Celery | None = None,
    client: redis.Redis | None = None,
    source: str = "api",
    window: float | None = None,
) -> EnqueueResult:
    """Send the producer task for ``job_id`` unless a trigger sent one within ``window`` seconds.

    Raises BadInput for an id that is not a UUID and BrokerUnavailable when Redis or the broker
    cannot be reached (the claim is then released, so a retry sends). The producer's lease makes
    a duplicate that slips through harmless: deduplicating here only saves a worker's time.
    """
    settings = Settings.from_env() if settings is None else settings
    job_id = validate_job_id(job_id)
    if company_id is not None:
        company_id = validate_uuid(company_id, "Company id")
    window_s = settings.trigger_window if window is None else window
    owned_client = client is None
    owned_app = app is None
    redis_ = ledger_client(settings) if client is None else client
    try:
        task_id = str(uuid.uuid4())
        key = trigger_key(job_id)
        try:
            held = redis_.eval(
                _CLAIM,
                3,
                key,
                ACTIVE_JOBS_KEY,
                progress_key(job_id),
                task_id,
                max(1, round(window_s * 1000)),
                job_id,
                repr(time.time()),
                settings.dedup_ttl * 1000,
            )
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis could not be reached to record the trigger of job {job_id}: {exc}",
                job_id=job_id,
            ) from exc
        if held is not None:
            held_id = held.decode() if isinstance(held, bytes) else str(held)
            log.info("trigger_deduplicated job_id=%s task_id=%s source=%s", job_id, held_id, source)
            return EnqueueResult(job_id, held_id, deduplicated=True)
        celery_app = make_app(settings) if app is None else app
        try:
            _send(celery_app, job_id, company_id, task_id)
        except BrokerUnavailable:
            _release(redis_, key, task_id, job_id)
            raise
        finally:
            if owned_app:
                celery_app.close()
        log.info(
            "trigger_enqueued job_id=%s task_id=%s company_id=%s source=%s",
            job_id,
            task_id,
            company_id,
            source,
        )
        return EnqueueResult(job_id, task_id, deduplicated=False)
    finally:
        if owned_client:
            redis_.close()


def _send(app: Celery, job_id: str, company_id: str | None, task_id: str) -> None:
    try:
        app.send_task(
            PRODUCER_TASK,
            args=[job_id],
            kwargs={"company_id": company_id},
            queue=PRODUCER_QUEUE,
            task_id=task_id,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"The broker could not be reached to enqueue job {job_id}: {exc}", job_id=job_id
        ) from exc


def _release(client: redis.Redis, key: str, task_id: str, job_id: str) -> None:
    """Drop our claim after a failed send; if Redis is down too, the claim expires by itself."""
    try:
        client.eval(DELETE_IF_OURS, 1, key, task_id)
    except redis.RedisError:
        log.warning("trigger_release_failed job_id=%s task_id=%s", job_id, task_id)
