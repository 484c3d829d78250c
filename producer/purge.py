"""``pleo-export purge JOB``: a job's data removed from Redis on demand.

Deletes every key the job can have (``contract.keys.job_keys``) and its place in the index of
active jobs and the closing set. Pleo and the ERP are not touched: the job stays as it ended
there, and the ERP keeps what it booked.

A job is *busy* while any of these holds: it is in the index of active jobs (requested, running,
or published and not finished), a live run holds its lease, it waits to be closed (its
``before_retention`` hook, the audit manifest, has not run), or a message of it is on a queue or
in kombu's ``unacked`` hash. A busy job is refused (exit 2) unless ``force``; then its messages
are deleted too (``LREM`` from the queues, ``HDEL``/``ZREM`` from kombu's unacked records, so
nothing of it is delivered again) before its keys. A producer run still holding the lease loses
it and publishes nothing more (every batch checks the lease); an ERP worker in the middle of one
of its entries may finish that entry and record its outcome again, under the usual expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import redis

from contract.celery_app import redis_transport_options
from contract.dead_letters import forget as forget_parked
from contract.errors import BadInput
from contract.keys import ACTIVE_JOBS_KEY, CLOSING_KEY, KombuKeys, job_keys, lease_key
from contract.lease import is_live
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from contract.store import ledger_client, redis_call

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge removed."""

    job_id: str
    keys: int
    queued: int
    unacked: int
    parked: int = 0

    def as_dict(self) -> dict[str, Any]:
        """As ``purge --json`` prints it."""
        return {
            "job_id": self.job_id,
            "keys": self.keys,
            "queued_messages": self.queued,
            "unacked_messages": self.unacked,
            "parked_messages": self.parked,
        }


def purge(settings: Settings, job_id: str, *, force: bool = False) -> Purged:
    """``purge_job`` on the ledger's Redis, with the broker's queues when the broker is Redis."""
    kombu = KombuKeys.of(redis_transport_options(settings) if settings.uses_redis_broker else {})
    queues = (ITEMS_QUEUE, PRODUCER_QUEUE) if settings.uses_redis_broker else ()
    with closing(ledger_client(settings)) as client:
        return purge_job(client, job_id, kombu=kombu, queues=queues, force=force)


def purge_job(
    client: redis.Redis,
    job_id: str,
    *,
    kombu: KombuKeys,
    queues: Iterable[str],
    force: bool = False,
) -> Purged:
    """Remove the job's data from Redis; raise BadInput for a busy job unless ``force``."""
    queue_keys = [kombu.queue(name) for name in queues]
    marker = job_id.encode()
    queued = [(q, raw) for q in queue_keys for raw in _list(client, q) if marker in raw]
    unacked = [tag for tag, raw in _hash(client, kombu.unacked) if marker in raw]
    busy = _why_busy(client, job_id, messages=len(queued) + len(unacked))
    if busy and not force:
        raise BadInput(
            f"Export job {job_id} is busy ({busy}); nothing was removed: "
            "run purge again with --force to delete its messages and records anyway."
        )

    def remove() -> tuple[int, int, int]:
        with client.pipeline(transaction=True) as pipe:
            for queue, raw in queued:
                pipe.lrem(queue, 0, raw.decode())  # kombu writes UTF-8 JSON
            for tag in unacked:
                pipe.hdel(kombu.unacked, tag)
                pipe.zrem(kombu.unacked_index, tag)
            pipe.delete(*job_keys(job_id))
            pipe.zrem(ACTIVE_JOBS_KEY, job_id)
            pipe.zrem(CLOSING_KEY, job_id)
            replies = pipe.execute()
        removed_queued = sum(replies[: len(queued)])
        removed_unacked = sum(replies[len(queued) : len(queued) + 2 * len(unacked) : 2])
        return replies[-3], removed_queued, removed_unacked

    keys, removed_queued, removed_unacked = _call(remove)
    # Parked copies of its messages (contract/dead_letters.py) carry its export items too.
    return Purged(job_id, keys, removed_queued, removed_unacked, forget_parked(client, job_id))


def _why_busy(client: redis.Redis, job_id: str, *, messages: int) -> str:
    """Why the job counts as busy, as a phrase; empty when it is not."""

    def read() -> list[Any]:
        with client.pipeline(transaction=False) as pipe:
            pipe.zscore(ACTIVE_JOBS_KEY, job_id)
            pipe.zscore(CLOSING_KEY, job_id)
            pipe.get(lease_key(job_id))
            return list(pipe.execute())

    active, waiting, lease = _call(read)
    reasons = []
    if is_live(lease):
        reasons.append("a live run holds its lease")
    elif active is not None:
        reasons.append("it is still active")
    if waiting is not None:
        reasons.append("it waits to be closed")
    if messages:
        reasons.append(f"{messages} of its messages are queued or being processed")
    return ", ".join(reasons)


def _list(client: redis.Redis, key: str) -> Iterator[bytes]:
    length = int(_call(lambda: client.llen(key)))
    for start in range(0, length, _CHUNK):
        yield from _call(lambda s=start: client.lrange(key, s, s + _CHUNK - 1))  # type: ignore[misc]


def _hash(client: redis.Redis, key: str) -> Iterator[tuple[bytes, bytes]]:
    yield from _call(lambda: list(client.hscan_iter(key, count=_CHUNK)))


def _call(fn: Callable[[], Any]) -> Any:
    return redis_call(fn, "the purge")
