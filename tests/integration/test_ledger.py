"""The Redis ledger: leases with fencing tokens, atomic marks, progress records."""

from __future__ import annotations

import time

import pytest
import redis

from producer.errors import LeaseHeld, LeaseLost
from producer.keys import marks_key
from producer.ledger import Ledger

pytestmark = pytest.mark.integration
JOB = "3f2c1a52-4a0e-4a43-9d4e-1f6b1b0f7a10"


def make(rdb: redis.Redis, *, lease_ttl: float = 1.0) -> Ledger:
    return Ledger(rdb, lease_ttl=lease_ttl, dedup_ttl=3600)


def test_second_run_waits_then_steps_aside(rdb: redis.Redis) -> None:
    """While one run holds the lease, another waits about lease_wait and raises LeaseHeld."""
    ledger = make(rdb, lease_ttl=5)
    ledger.acquire(JOB, wait=0)
    started = time.monotonic()
    with pytest.raises(LeaseHeld):
        ledger.acquire(JOB, wait=0.3)
    assert 0.25 <= time.monotonic() - started < 3


def test_crashed_runs_lease_expires_and_fence_grows(rdb: redis.Redis) -> None:
    """A lease never released (the run was killed) frees itself after its TTL, with a new fence."""
    ledger = make(rdb, lease_ttl=1)
    first = ledger.acquire(JOB, wait=0)
    second = ledger.acquire(JOB, wait=3)
    assert second.fence == first.fence + 1


def test_stale_lease_cannot_publish(rdb: redis.Redis) -> None:
    """A run whose lease was taken over writes nothing: the script checks the fencing token."""
    ledger = make(rdb, lease_ttl=1)
    stale = ledger.acquire(JOB, wait=0)
    ledger.acquire(JOB, wait=3)
    with pytest.raises(LeaseLost):
        ledger.publish_batch(stale, "q", [("e1", b"m1")])
    assert rdb.llen("q") == 0
    assert rdb.hlen(marks_key(JOB)) == 0


def test_heartbeat_keeps_a_long_run_leased(rdb: redis.Redis) -> None:
    """A run held longer than the lease TTL keeps its lease thanks to the heartbeat."""
    ledger = make(rdb, lease_ttl=1)
    with ledger.held(JOB, wait=0) as lease:
        time.sleep(2.2)
        assert ledger.publish_batch(lease, "q", [("e1", b"m1")]) == 1
    assert ledger.acquire(JOB, wait=0).fence == lease.fence + 1


def test_publish_batch_skips_marked_entries_atomically(rdb: redis.Redis) -> None:
    """Entries already marked are not pushed again; counters count both kinds."""
    ledger = make(rdb, lease_ttl=5)
    lease = ledger.acquire(JOB, wait=0)
    ledger.start_run(JOB, lease.fence)
    assert ledger.publish_batch(lease, "q", [("e1", b"m1"), ("e2", b"m2")]) == 2
    assert ledger.publish_batch(lease, "q", [("e2", b"m2"), ("e3", b"m3")]) == 1
    assert rdb.lrange("q", 0, -1) == [b"m3", b"m2", b"m1"]
    progress = ledger.progress(JOB)
    assert (progress["enqueued"], progress["already_enqueued"]) == ("3", "1")
    assert 0 < rdb.pttl(marks_key(JOB)) <= 3600 * 1000


def test_reserve_then_confirm(rdb: redis.Redis) -> None:
    """Reserved-but-unconfirmed entries are offered again; confirmed ones are not."""
    ledger = make(rdb, lease_ttl=5)
    lease = ledger.acquire(JOB, wait=0)
    assert ledger.reserve(lease, ["a", "b", "c"]) == ["a", "b", "c"]
    ledger.confirm(JOB, ["a"], already=0)
    assert ledger.reserve(lease, ["a", "b", "c", "d"]) == ["b", "c", "d"]
    assert ledger.marks(JOB) == {"a": "p", "b": "r", "c": "r", "d": "r"}
