"""The shared ERP budget and the staged entries, against a real Redis and real processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid

import pytest
import redis

from consumers.budget import DEFAULT_SLOTS, Budget, governed, limits_for
from consumers.erp import UNLIMITED, ERPLimits
from consumers.erp_calls import MAX_WAIT, drain_limit
from consumers.erp_sql import SqlJournal
from consumers.ready import ReadyEntries
from contract.keys import next_sequence_key, ready_items_key, results_key
from contract.message import ItemMessage
from contract.settings import Settings

pytestmark = pytest.mark.integration
JOB = "5d0c6a3e-7f1b-4c2d-9e8a-0b1c2d3e4f50"
COMPANY = "c0ffee00-0000-4000-8000-000000000001"


def budget(rdb: redis.Redis, **limits: object) -> Budget:
    return Budget(rdb, ERPLimits(**limits), connection="test", lease_ttl=2.0)  # type: ignore[arg-type]


def message(sequence: int, *, job: str = JOB, entry: str | None = None) -> ItemMessage:
    return ItemMessage(
        job_id=job,
        company_id=COMPANY,
        accounting_entry_id=entry or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job}/{sequence}")),
        sequence=sequence,
        total=100,
        status_at_fetch="pending",
        booked_at=None,
        export_item=None,
    )


def test_limits_are_the_adapters_with_the_settings_overrides() -> None:
    """The SQL journal's declaration, each override applied, and what counts as governed."""
    journal = SqlJournal("sqlite://")
    try:
        declared = limits_for(journal, Settings())
        assert declared == ERPLimits(batch_size=500, idempotency_key=True)
        overridden = limits_for(
            journal, Settings(erp_calls=60, erp_period=60.0, erp_concurrency=5, erp_ordered=True)
        )
    finally:
        journal.close()
    assert overridden == ERPLimits(
        calls=60, period=60.0, concurrency=5, batch_size=500, idempotency_key=True, ordered=True
    )
    assert limits_for(object(), Settings()) == UNLIMITED
    assert not governed(UNLIMITED)
    assert not governed(ERPLimits(idempotency_key=True))
    assert governed(ERPLimits(calls=1))
    assert governed(ERPLimits(batch_size=2))
    assert governed(ERPLimits(ordered=True))


def test_the_bucket_gives_its_burst_then_one_call_per_interval(rdb: redis.Redis) -> None:
    """Two workers' budgets share one bucket: 2 at once, then a wait of about 1/rate."""
    first, second = budget(rdb, calls=4, period=1.0, burst=2), budget(rdb, calls=4, burst=2)
    began = time.monotonic()
    waits = [(first if i % 2 else second).wait_for_call(COMPANY) for i in range(2)]
    assert waits == [0.0] * 2
    wait = first.wait_for_call(COMPANY)
    took = time.monotonic() - began
    # The bucket refills at 4 - 2 = 2 a second (so that no second sees more than 4): 1/2 s for a
    # whole token, less whatever refilled since the burst began (the script rounds up to whole
    # milliseconds). A half-second interval, so a loaded machine's pause does not refill it.
    assert 0.5 - took - 0.001 <= wait <= 0.5 + 0.001
    assert wait > 0
    time.sleep(wait)
    assert second.wait_for_call(COMPANY) == 0.0
    # Another company has a bucket of its own.
    assert first.wait_for_call("c0ffee00-0000-4000-8000-000000000002") == 0.0


def _spend(url: str, seconds: float, out: multiprocessing.Queue[int]) -> None:
    client = redis.Redis.from_url(url)
    shared = Budget(client, ERPLimits(calls=40, burst=4), connection="test", lease_ttl=2.0)
    taken, ends = 0, time.monotonic() + seconds
    while time.monotonic() < ends:
        wait = shared.wait_for_call(COMPANY)
        if wait == 0:
            taken += 1
        else:
            time.sleep(min(wait, max(0.0, ends - time.monotonic())))
    out.put(taken)


def test_four_processes_together_send_what_the_limit_allows(
    rdb: redis.Redis, redis_url: str
) -> None:
    """Four processes sharing one 40-a-second budget for 2 s take what one would, plus burst."""
    # Spawned, not forked: the test process has threads (pytest-xdist's) a fork could catch
    # holding a lock.
    spawn = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = spawn.Queue()
    spenders = [spawn.Process(target=_spend, args=(redis_url, 2.0, out)) for _ in range(4)]
    started = time.monotonic()
    for p in spenders:
        p.start()
    taken = [out.get(timeout=120) for _ in spenders]
    elapsed = time.monotonic() - started
    for p in spenders:
        p.join(10)
    total = sum(taken)
    # Each process spends for 2 s, starting within ``elapsed``: the bucket can have refilled
    # for at most ``elapsed`` seconds, on top of its burst of 4.
    assert total <= 4 + 40 * elapsed + 1, (taken, elapsed)
    assert total >= 40 * 2.0 * 0.8, (taken, elapsed)
    assert all(t > 0 for t in taken), taken


def test_a_pause_holds_every_call_and_is_never_shortened(rdb: redis.Redis) -> None:
    """A 429's pause: the next call waits it out; a shorter pause after it changes nothing."""
    shared = budget(rdb)  # no rate limit: only the pause holds calls
    assert shared.wait_for_call(COMPANY) == 0.0
    assert shared.pause(COMPANY, 3.0) == pytest.approx(3.0, abs=0.01)
    assert shared.pause(COMPANY, 0.5) > 2.5
    assert 2.5 < shared.wait_for_call(COMPANY) <= 3.0
    assert 2.5 < shared.paused_for(COMPANY) <= 3.0
    assert shared.wait_for_call("c0ffee00-0000-4000-8000-000000000002") == 0.0


def _hold_slot(url: str) -> None:
    client = redis.Redis.from_url(url)
    shared = Budget(client, ERPLimits(concurrency=2), connection="test", lease_ttl=30.0)
    assert shared.take_slot(COMPANY, "doomed") is not None
    time.sleep(60)


def test_slots_are_leases_and_a_killed_holders_slot_comes_back(
    rdb: redis.Redis, redis_url: str
) -> None:
    """Two slots: a third taker gets none; a SIGKILLed holder's slot is free at once here."""
    shared = budget(rdb, concurrency=2)
    holder = multiprocessing.get_context("spawn").Process(target=_hold_slot, args=(redis_url,))
    holder.start()
    deadline = time.monotonic() + 60
    while shared.held_slots(COMPANY) < 1:
        assert time.monotonic() < deadline, "the other process took no slot"
        time.sleep(0.02)
    mine = shared.take_slot(COMPANY, "test")
    assert mine is not None
    assert shared.held_slots(COMPANY) == 2
    assert shared.take_slot(COMPANY, "test") is None
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    # Its lease still stands (TTL 30 s), but its holder is a dead process on this machine.
    again = shared.take_slot(COMPANY, "test")
    assert again is not None
    assert again.key != mine.key
    assert budget(rdb).slots == DEFAULT_SLOTS


def test_staging_is_once_and_claims_go_back_when_their_slot_lapses(rdb: redis.Redis) -> None:
    """Stage twice (a redelivery), claim a batch, lose the slot: the entries are claimable again."""
    shared = budget(rdb, concurrency=1, batch_size=3)
    ready = ReadyEntries(rdb, shared, dedup_ttl=3600, reads=frozenset({1, 2}))
    messages = [message(i) for i in range(5)]
    assert [ready.stage(m).status for m in messages] == [1] * 5
    again = ready.stage(messages[2])
    assert (again.status, again.unclaimed, again.staged, again.recorded) == (0, 5, 5, 0)
    assert again.worth_posting(3, 100)
    assert not again.worth_posting(6, 100)
    assert again.worth_posting(6, 5)
    assert ready.jobs(COMPANY) == [JOB]
    slot = shared.take_slot(COMPANY, "test")
    assert slot is not None
    claim = ready.claim(slot, COMPANY, JOB, 3, ordered=False)
    assert [c.message.sequence for c in claim.entries] == [0, 1, 2]
    assert [c.tries for c in claim.entries] == [0, 0, 0]
    assert claim.entries[0].message == messages[0]
    ready.tried(JOB, [c.message.accounting_entry_id for c in claim.entries])
    # Claimed entries are still staged: a redelivered message stages nothing.
    assert ready.stage(messages[0]).status == 0
    # The slot lapses (its holder died elsewhere): its claims go back on the next look.
    rdb.delete(slot.key)
    assert ready.recover(COMPANY) == 3
    other = shared.take_slot(COMPANY, "test")
    assert other is not None
    again = ready.claim(other, COMPANY, JOB, 10, ordered=False)
    assert [c.message.sequence for c in again.entries] == [0, 1, 2, 3, 4]
    assert [c.tries for c in again.entries] == [1, 1, 1, 0, 0]
    assert [c.first_try > 0 for c in again.entries] == [True, True, True, False, False]
    # A slot taken over from a dead holder gives its claims back to its new holder first.
    rdb.delete(other.key)
    newer = shared.take_slot(COMPANY, "test")
    assert newer is not None
    assert newer.key == other.key
    assert ready.recover(COMPANY) == 0  # held again: not for the sweep of lapsed slots
    assert ready.take_over(newer, COMPANY) == 5
    other = newer
    again = ready.claim(other, COMPANY, JOB, 10, ordered=False)
    assert [c.message.sequence for c in again.entries] == [0, 1, 2, 3, 4]
    # A lapsed slot's holder can claim nothing more.
    assert ready.claim(slot, COMPANY, JOB, 10, ordered=False).lost_slot
    # Recorded, then done: gone from the staged entries; the job leaves the index once empty.
    rdb.hset(results_key(JOB), messages[4].accounting_entry_id, "{}")
    ready.done(other, JOB, [m.accounting_entry_id for m in messages[:4]])
    assert rdb.hlen(ready_items_key(JOB)) == 1
    assert ready.jobs(COMPANY) == []
    assert ready.stage(messages[0]).status == 1  # not recorded here: a new stage is allowed


def test_ordered_claims_start_at_the_next_sequence_and_stop_at_a_gap(rdb: redis.Redis) -> None:
    """Ordered: nothing is claimed past a missing sequence; recorded entries are skipped over."""
    shared = budget(rdb, concurrency=1, ordered=True)
    ready = ReadyEntries(rdb, shared, dedup_ttl=3600, reads=frozenset({1, 2}))
    for i in (1, 2, 4):
        ready.stage(message(i))
    slot = shared.take_slot(COMPANY, "test")
    assert slot is not None
    waiting = ready.claim(slot, COMPANY, JOB, 10, ordered=True)
    assert waiting.entries == ()
    assert waiting.waiting_for_gap
    assert waiting.next_sequence == 0
    ready.stage(message(0))
    claim = ready.claim(slot, COMPANY, JOB, 10, ordered=True)
    assert [c.message.sequence for c in claim.entries] == [0, 1, 2]
    assert claim.waiting_for_gap
    assert claim.next_sequence == 3
    ready.done(slot, JOB, [c.message.accounting_entry_id for c in claim.entries])
    ready.advance(JOB, 3)
    # Sequence 3 already has an outcome (a redelivery recorded it): the chain moves past it.
    third = message(3)
    ready.stage(third)
    rdb.hset(results_key(JOB), third.accounting_entry_id, "{}")
    last = ready.claim(slot, COMPANY, JOB, 10, ordered=True)
    assert [c.message.sequence for c in last.entries] == [4]
    assert rdb.get(next_sequence_key(JOB)) == b"4"


def test_at_the_defaults_a_poster_acks_its_message_long_before_a_redelivery() -> None:
    """The e2e tests shorten the visibility timeout to 5 s; at the defaults (3,600 s) a drain
    lasts at most 60 s, plus one batch's ERP call (the HTTP adapter's 10 s timeout) and a token's
    wait (MAX_WAIT, 5 s): 75 s, a twentieth of the time before kombu would deliver it again."""
    defaults = Settings()
    assert defaults.visibility_timeout == 3600
    longest = drain_limit(defaults.visibility_timeout) + defaults.erp_http_timeout + MAX_WAIT
    assert longest == 75.0
    assert longest < defaults.visibility_timeout / 20
    # ... and with the tests' 5 s: a drain of 5/3 s, still under the timeout with its call.
    assert drain_limit(5) + 2 + MAX_WAIT > 5  # why the e2e tests give the adapter 2 s
    assert drain_limit(5) < 5
