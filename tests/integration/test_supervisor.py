"""The supervisor against a real Redis: dead runs resumed once, live and waiting ones left alone."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import redis

from contract.celery_app import make_app
from contract.keys import ACTIVE_JOBS_KEY, final_key, pleo_action_key, progress_key
from contract.ledger import Ledger
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from contract.supervisor import Supervisor
from producer.triggers import enqueue
from tests.support.queues import decode

pytestmark = pytest.mark.integration

DEAD = "4b7d1f7e-5a51-4d1c-9e1b-0c2b3a4d5e6f"
LIVE = "5c8e2a8f-6b62-4e2d-8f2c-1d3c4b5e6f70"
QUEUED = "6d9f3b90-7c73-4f3e-902d-2e4d5c6f7081"
DONE = "7ea04ca1-8d84-4a4f-813e-3f5e6d708192"


def supervisor(settings: Settings, rdb: redis.Redis, now: float) -> Supervisor:
    return Supervisor(rdb, make_app(settings), settings, clock=lambda: now)


def producer_tasks(rdb: redis.Redis) -> list[str]:
    """The job ids of the producer tasks on the queue."""
    return [decode(raw).args[0] for raw in rdb.lrange(PRODUCER_QUEUE, 0, -1)]


def test_only_the_dead_run_is_resumed_and_only_once(settings: Settings, rdb: redis.Redis) -> None:
    """Dead (no lease, quiet) → one new task; live, queued and finished jobs → nothing."""
    now = time.time()
    quiet = now - settings.dead_run_after - 1
    enqueue(QUEUED, settings=settings)
    for job_id in (DEAD, LIVE, QUEUED, DONE):
        # Requested and last updated longer than dead_run_after ago, as a killed run leaves it.
        rdb.zadd(ACTIVE_JOBS_KEY, {job_id: quiet})
        rdb.hset(
            progress_key(job_id),
            mapping={"state": "publishing", "updated_at": _iso(quiet), "requested_at": quiet},
        )
    Ledger(rdb, lease_ttl=10, dedup_ttl=3600).acquire(LIVE, wait=0, who="live run")
    rdb.set(final_key(DONE), "completed")

    first = supervisor(settings, rdb, now).look()
    assert first.verdicts == {DEAD: "dead", LIVE: "running", QUEUED: "waiting", DONE: "finished"}
    assert first.resumed == [DEAD]
    assert sorted(producer_tasks(rdb)) == sorted([QUEUED, DEAD])
    assert rdb.zscore(ACTIVE_JOBS_KEY, DONE) is None
    assert rdb.hget(progress_key(DEAD), "resumed") == b"1"

    # The resumed task now waits on the queue: the next look sends nothing more.
    second = supervisor(settings, rdb, now + 1).look()
    assert second.verdicts[DEAD] == "waiting"
    assert second.resumed == []
    assert len(producer_tasks(rdb)) == 2


def test_a_task_in_a_dead_workers_hands_is_not_taken_for_a_live_one(
    settings: Settings, rdb: redis.Redis
) -> None:
    """A delivery older than dead_run_after with no lease is a dead worker's: resumed."""
    now = time.time()
    enqueue(DEAD, settings=settings)
    raw = rdb.rpop(PRODUCER_QUEUE)
    assert raw is not None
    rdb.hset("unacked", "tag-old", json.dumps([json.loads(raw), "", PRODUCER_QUEUE]))
    rdb.zadd("unacked_index", {"tag-old": now - 60})
    rdb.zadd(ACTIVE_JOBS_KEY, {DEAD: now - 60})
    rdb.hset(progress_key(DEAD), "requested_at", repr(now - 60))
    assert supervisor(settings, rdb, now).look().resumed == [DEAD]
    # The same delivery moments ago is a live worker about to take the lease: left alone.
    rdb.delete(PRODUCER_QUEUE)
    rdb.hdel(progress_key(DEAD), "resumed_at")
    rdb.zadd("unacked_index", {"tag-old": now - 1})
    assert supervisor(settings, rdb, now).look().verdicts[DEAD] == "waiting"


def test_a_job_close_to_pleos_expiry_is_marked(settings: Settings, rdb: redis.Redis) -> None:
    """Less than a fifth of expiresIn left since our last action: near_expiry in the record."""
    now = time.time()
    rdb.zadd(ACTIVE_JOBS_KEY, {LIVE: now})
    rdb.hset(progress_key(LIVE), mapping={"state": "enqueued", "expires_in": 3600})
    rdb.set(pleo_action_key(LIVE), repr(now - 3000))
    report = supervisor(settings, rdb, now).look()
    assert report.near_expiry == [LIVE]
    assert rdb.hget(progress_key(LIVE), "near_expiry") == b"1"
    rdb.set(pleo_action_key(LIVE), repr(now - 60))
    rdb.hdel(progress_key(LIVE), "near_expiry")
    assert supervisor(settings, rdb, now).look().near_expiry == []


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
