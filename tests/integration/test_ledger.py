"""The Redis ledger: leases with fencing tokens, atomic marks, progress records."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import redis

from contract.errors import LeaseHeld, LeaseLost
from contract.keys import fence_key, lease_key, marks_key, placed_key
from contract.lease import Holder
from contract.ledger import Ledger

pytestmark = pytest.mark.integration
JOB = "3f2c1a52-4a0e-4a43-9d4e-1f6b1b0f7a10"


def make(rdb: redis.Redis, *, lease_ttl: float = 1.0) -> Ledger:
    return Ledger(rdb, lease_ttl=lease_ttl, dedup_ttl=3600)


def _holder_value(fence: int, *, node: str | None, pid: int, started: str | None) -> str:
    holder = Holder("pleo-export run", "elsewhere", pid, node, started)
    return f"{fence}:{'0' * 32}|{holder.encode()}"


def test_a_live_holder_makes_a_second_run_step_aside_naming_it(rdb: redis.Redis) -> None:
    """A heartbeating holder is seen renewing; the second run waits ``wait``, then steps aside."""
    ledger = make(rdb, lease_ttl=1.5)
    with ledger.held(JOB, wait=0, who="task abc") as lease:
        started = time.monotonic()
        with pytest.raises(LeaseHeld) as held:
            ledger.acquire(JOB, wait=0.3)
        waited = time.monotonic() - started
        assert ledger.renew(lease)
    # Proving the holder alive takes one heartbeat (a third of the TTL) at most, plus polling.
    assert 0.3 <= waited < 1.5 / 3 + 0.3 + 0.5
    assert f"task abc (pid {os.getpid()} on {socket.gethostname()})" in held.value.message


def test_a_lease_nobody_renews_is_waited_out_not_stepped_aside_from(rdb: redis.Redis) -> None:
    """A holder that stopped renewing (dead on another host) is waited out, then taken over.

    The wait is the lease's remaining TTL, at most ``lease_ttl``: at the default 10 s the rerun
    resumes within 10 s; here 1.2 s shows the same shape.
    """
    ledger = make(rdb, lease_ttl=1.2)
    rdb.set(lease_key(JOB), _holder_value(7, node="another-host", pid=1, started="1"), px=1200)
    started = time.monotonic()
    lease = ledger.acquire(JOB, wait=0.1)
    waited = time.monotonic() - started
    assert 1.0 <= waited < 1.2 + 0.5
    assert lease.fence == 1


def test_a_dead_local_holder_is_taken_over_at_once_with_a_new_fence(rdb: redis.Redis) -> None:
    """A holder process on this machine that is gone is dead: no wait, the fence moves on."""
    gone = _dead_pid()
    node = Holder.here("me").node
    if node is None:
        pytest.skip("this platform has no /proc: only the heartbeat can tell a dead holder")
    rdb.set(fence_key(JOB), 41)
    rdb.set(lease_key(JOB), _holder_value(41, node=node, pid=gone, started="1"), px=600_000)
    started = time.monotonic()
    lease = make(rdb, lease_ttl=10).acquire(JOB, wait=3)
    assert time.monotonic() - started < 0.5
    assert lease.fence == 42


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_flusher_steps_aside_at_once_from_any_holder(rdb: redis.Redis) -> None:
    """The write-back lease is not patient: a held lease means someone else is flushing now."""
    ledger = make(rdb, lease_ttl=5)
    ledger.acquire(JOB, wait=0, name="flush")
    started = time.monotonic()
    with pytest.raises(LeaseHeld):
        ledger.acquire(JOB, wait=0, name="flush")
    assert time.monotonic() - started < 0.2


def test_stale_lease_cannot_publish(rdb: redis.Redis) -> None:
    """A run whose lease was taken over writes nothing: the script checks the fencing token."""
    ledger = make(rdb, lease_ttl=1)
    stale = ledger.acquire(JOB, wait=0)
    ledger.acquire(JOB, wait=3)
    with pytest.raises(LeaseLost):
        ledger.publish_batch(stale, "q", [("e1", b"m1", '[0,1,"pending",null]')])
    assert rdb.llen("q") == 0
    assert rdb.hlen(marks_key(JOB)) == 0


def test_heartbeat_keeps_a_long_run_leased(rdb: redis.Redis) -> None:
    """A run held longer than the lease TTL keeps its lease thanks to the heartbeat."""
    ledger = make(rdb, lease_ttl=1)
    with ledger.held(JOB, wait=0) as lease:
        # A quarter of a TTL past the moment the lease would be gone without its heartbeat
        # (Redis expires a PX key on time, to the millisecond): enough to tell the two apart.
        time.sleep(1.25)
        assert ledger.publish_batch(lease, "q", [("e1", b"m1", '[0,1,"pending",null]')]) == 1
    assert ledger.acquire(JOB, wait=0).fence == lease.fence + 1


def test_publish_batch_skips_marked_entries_atomically(rdb: redis.Redis) -> None:
    """Entries already marked are not pushed again; counters count both kinds."""
    ledger = make(rdb, lease_ttl=5)
    lease = ledger.acquire(JOB, wait=0)
    ledger.start_run(JOB, lease.fence)
    assert ledger.publish_batch(lease, "q", [("e1", b"m1", "p1"), ("e2", b"m2", "p2")]) == 2
    assert ledger.publish_batch(lease, "q", [("e2", b"m2", "p2"), ("e3", b"m3", "p3")]) == 1
    assert rdb.lrange("q", 0, -1) == [b"m3", b"m2", b"m1"]
    # Each new entry's placement is recorded once, with the message: what repair rebuilds from.
    assert rdb.hgetall(placed_key(JOB)) == {b"e1": b"p1", b"e2": b"p2", b"e3": b"p3"}
    progress = ledger.progress(JOB)
    assert (progress["enqueued"], progress["already_enqueued"]) == ("3", "1")
    assert 0 < rdb.pttl(marks_key(JOB)) <= 3600 * 1000


def test_reserve_then_confirm(rdb: redis.Redis) -> None:
    """Reserved-but-unconfirmed entries are offered again; confirmed ones are not."""
    ledger = make(rdb, lease_ttl=5)
    lease = ledger.acquire(JOB, wait=0)
    assert ledger.reserve(lease, ["a", "b", "c"]) == ["a", "b", "c"]
    ledger.confirm(JOB, {"a": '[0,1,"pending",null]'}, already=0)
    assert ledger.reserve(lease, ["a", "b", "c", "d"]) == ["b", "c", "d"]
    assert ledger.marks(JOB) == {"a": "p", "b": "r", "c": "r", "d": "r"}
    assert rdb.hgetall(placed_key(JOB)) == {b"a": b'[0,1,"pending",null]'}
