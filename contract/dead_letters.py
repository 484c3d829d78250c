"""Parked item messages: what an ERP worker could not read is kept, never acked into nothing.

A worker that meets a message of a schema it does not read (a newer producer during a rolling
upgrade) or one it cannot parse parks it (``park``) in one Redis hash, ``DEAD_LETTER_KEY``, field
``{job_id}:{task_id}``: the kwargs exactly as received, the reason, the task id, when and which
worker. HSETNX makes a redelivered message park once. ``pleo-export status JOB`` counts the job's
parked messages (``parked``); ``pleo-export requeue-parked [--job JOB]`` puts each back on the
items queue after the upgrade (``requeue``).

Requeue is exactly once per parked message: one Lua script per message pushes it onto kombu's
queue and deletes its field, only if the field is still there. A requeue killed midway has moved
some messages and left the rest parked, each wholly in one place; two requeues at once move each
message once. (The broker must be Redis for that: kombu's queue and the parked hash then live in
one Redis. With another broker ``requeue`` refuses, saying so.)

A parked entry also has no outcome, so once its job has been quiet for the stall time the repair
sweep (``consumers/repair.py``) re-sends it rebuilt, in a schema every live worker reads: a job
finishes even if nobody requeues. Requeuing such a message later is harmless (the worker finds
the entry already posted and posts nothing).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from contract.errors import BadInput
from contract.ids import is_uuid
from contract.keys import DEAD_LETTER_KEY, dead_letter_field
from contract.store import redis_call
from contract.wire import MessageEncoder, celery_message

log = logging.getLogger(__name__)

# KEYS[1] the parked hash, KEYS[2] kombu's items queue; ARGV[1] the field, ARGV[2] the message.
# Moves one parked message back onto the queue, once: 1 if moved, 0 if another requeue did.
_REQUEUE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""
# Jobs of messages too malformed to name theirs.
NO_JOB = "-"


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked message, as ``park`` recorded it."""

    field: str
    job_id: str
    task_id: str
    reason: str
    parked_at: float
    worker: str
    kwargs: Mapping[str, Any]


def park(
    client: redis.Redis,
    kwargs: Mapping[str, Any],
    *,
    reason: str,
    task_id: str,
    worker: str,
    ttl: int,
) -> bool:
    """Keep a message this worker cannot read; False if it was already parked (a redelivery)."""
    job = kwargs.get("job_id")
    # Only a real job id names the field: a hostile one stays inside the record's kwargs.
    job_id = job.lower() if isinstance(job, str) and is_uuid(job) else NO_JOB
    field = dead_letter_field(job_id, task_id)
    record = json.dumps(
        {
            "job_id": job_id,
            "task_id": task_id,
            "reason": reason,
            "parked_at": round(time.time(), 3),
            "worker": worker,
            "kwargs": kwargs,
        }
    )

    def write() -> bool:
        with client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(DEAD_LETTER_KEY, field, record)
            pipe.expire(DEAD_LETTER_KEY, ttl)
            added, _ = pipe.execute()
        return bool(added)

    return redis_call(write, "parking a message")


def parked(client: redis.Redis, job_id: str | None = None) -> Iterator[Parked]:
    """The parked messages, of ``job_id`` only when given."""
    match = dead_letter_field(job_id, "*") if job_id else None
    entries = redis_call(
        lambda: list(client.hscan_iter(DEAD_LETTER_KEY, match=match, count=1000)),
        "the parked messages",
    )
    for field, raw in entries:
        record = json.loads(raw)
        yield Parked(
            field=field.decode(),
            job_id=record["job_id"],
            task_id=record["task_id"],
            reason=record["reason"],
            parked_at=record["parked_at"],
            worker=record["worker"],
            kwargs=record["kwargs"],
        )


def parked_count(client: redis.Redis, job_id: str) -> int:
    """How many of ``job_id``'s messages are parked."""
    return sum(1 for _ in parked(client, job_id))


def forget(client: redis.Redis, job_id: str) -> int:
    """Delete ``job_id``'s parked messages (they carry its export items); how many there were.

    For a closed or purged job only: its entries have their outcomes, or it is gone on purpose.
    """
    fields = [record.field for record in parked(client, job_id)]
    if not fields:
        return 0
    return int(redis_call(lambda: client.hdel(DEAD_LETTER_KEY, *fields), "the parked messages"))


def requeue(
    client: redis.Redis, app: Celery, broker_url: str, *, redis_broker: bool, job_id: str | None
) -> int:
    """Move the parked messages (of ``job_id`` only when given) back onto the items queue, once.

    Each message is the Celery task message of its kwargs and task id as parked, so a worker
    that reads its schema now runs it as the original; returns how many were moved.
    """
    if not redis_broker:
        raise BadInput(
            "requeue-parked needs the Redis broker: only there can a message leave the parked"
            " list and join the queue in one step."
        )
    script = client.register_script(_REQUEUE)
    encoder = MessageEncoder(app, broker_url)
    moved = 0
    try:
        for message in sorted(parked(client, job_id), key=lambda m: m.parked_at):
            queue_key, body = encoder.encode(
                celery_message(app, message.task_id, dict(message.kwargs))
            )
            done = redis_call(
                lambda q=queue_key, b=body, f=message.field: script(  # type: ignore[misc]
                    keys=[DEAD_LETTER_KEY, q], args=[f, b]
                ),
                "requeuing a parked message",
            )
            if done:
                moved += 1
                log.info(
                    "parked_message_requeued job_id=%s task_id=%s", message.job_id, message.task_id
                )
    finally:
        encoder.close()
    return moved
