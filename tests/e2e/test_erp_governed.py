"""ERP workers within what the ERP takes: the ERP simulator's limits, four real workers, kills.

Real Redis, the Pleo simulator and the ERP simulator over HTTP, real ``celery -A consumers
worker`` processes posting through the reference HTTP adapter (``consumers/erp_http.py``). The
simulator counts what it booked and in which order; those counts are what these tests check.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from consumers.budget import Budget
from consumers.erp import ERPLimits
from contract.celery_app import make_app
from contract.keys import KombuKeys, placed_key, ready_items_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.erp_simulator import RunningErpSimulator
from devtools.processes import signal_group
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for
from tests.support.local import worker_log

pytestmark = [pytest.mark.integration, pytest.mark.worker]

# The ERP: 50 calls a second, 5 at once, 50 ms an answer.
CALLS, CONCURRENCY, LATENCY = 50, 5, 0.05
_RECEIVED = re.compile(r"Task consumers\.export_item\[([0-9a-f-]{36})\] received")


def erp_env(erp: RunningErpSimulator, **extra: str) -> dict[str, str]:
    """A worker posting to the simulator through the HTTP adapter, with the ERP's limits."""
    return {
        "ERP_ADAPTER": "consumers.erp_http:from_settings",
        "ERP_HTTP_URL": erp.url,
        "ERP_CALLS": str(CALLS),
        "ERP_PERIOD": "1",
        "ERP_CONCURRENCY": str(CONCURRENCY),
        "ERP_HTTP_TIMEOUT": "2",
        # Closing would drop the plan's placements, which the order test compares with.
        "PLEO_CLOSE_INTERVAL": "3600",
        **extra,
    }


def finished(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def await_end(
    state: SimState,
    rdb: redis.Redis,
    erp: RunningErpSimulator,
    job_id: str,
    *,
    timeout: float,
    what: str = "the job to finish",
) -> str:
    """The job's terminal status in Pleo once it has one (its progress and the ERP's counts
    shown if it does not within ``timeout``)."""
    status: str = wait_for(
        lambda: finished(state, job_id),
        timeout=timeout,
        what=what,
        explain=lambda: (job_status(rdb, job_id), erp.state.stats()),
    )
    return status


def plan_order(rdb: redis.Redis, job_id: str) -> list[str]:
    """The job's entries in the plan's sequence order, as the producer recorded them."""
    placed = {e.decode(): json.loads(p)[0] for e, p in rdb.hgetall(placed_key(job_id)).items()}
    return sorted(placed, key=placed.__getitem__)


def assert_booked_and_reported_once(state: SimState, erp: RunningErpSimulator, job_id: str) -> None:
    """Every entry booked once by the ERP's own count, every one reported once, one final event."""
    planned = {i.accounting_entry_id for i in state.items(job_id)}
    booked = Counter(b.accounting_entry_id for b in erp.state.bookings())
    successful = {i.accounting_entry_id for i in state.items(job_id) if i.status == "successful"}
    assert set(booked) == successful
    assert set(booked.values()) == {1}
    assert erp.state.stats()["duplicateBookings"] == 0
    assert state.update_counts(job_id) == dict.fromkeys(planned, 1)
    finals = [e.event for e in state.events(job_id) if e.event != "started"]
    assert len(finals) == 1


@contextmanager
def sampling_outside(rdb: redis.Redis) -> Iterator[list[int]]:
    """Sample, every 20 ms, how many item messages are outside the queue (kombu's unacked)."""
    samples: list[int] = []
    stop = threading.Event()
    unacked = KombuKeys.of(None).unacked

    def sample() -> None:
        client = redis.Redis(connection_pool=rdb.connection_pool)
        while not stop.wait(0.02):
            samples.append(int(client.hlen(unacked)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.timeout(240)
def test_four_workers_keep_the_erps_limits_and_survive_kills(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """2,000 entries, 50 calls/s, 5 at once, 50 ms: four workers, two SIGKILLed mid-run and
    replaced; every entry booked once, 429s under 2 % of calls, none failed, slots all back."""
    erp = erp_sim(calls=CALLS, period=1.0, concurrency=CONCURRENCY, latency=LATENCY)
    job_id = sim_state.add_job(JobSpec(items=2000, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    workers = [start_worker("consumers", ITEMS_QUEUE, **erp_env(erp)) for _ in range(4)]
    wait_for(lambda: len(erp.state.bookings()) >= 500, timeout=60, what="500 bookings")
    for victim in workers[:2]:
        signal_group(victim, signal.SIGKILL)
        victim.wait()
    for _ in range(2):
        start_worker("consumers", ITEMS_QUEUE, **erp_env(erp))
    status = await_end(sim_state, rdb, erp, job_id, timeout=150, what="the job to finish")
    stats = erp.state.stats()
    print("ERP simulator stats:", stats)
    assert status == "completed"
    assert_booked_and_reported_once(sim_state, erp, job_id)
    assert Counter(i.status for i in sim_state.items(job_id)) == {"successful": 2000}
    calls = sum(stats["calls"].values())
    assert stats["rateLimited"] < 0.02 * calls, stats
    assert stats["maxInFlight"] <= CONCURRENCY
    # The killed workers' slots came back (their leases lapsed or were taken over), nothing is
    # left staged or claimed.
    budget = Budget(rdb, ERPLimits(concurrency=CONCURRENCY), connection="default", lease_ttl=10)
    company = sim_state.jobs[job_id].company_id
    wait_for(lambda: budget.held_slots(company) == 0, timeout=15, what="every slot given back")
    assert rdb.hlen(ready_items_key(job_id)) == 0
    assert not list(rdb.scan_iter(budget.key(company, "slot:*:claimed")))


@pytest.mark.timeout(120)
def test_a_retry_after_longer_than_the_visibility_timeout_delivers_nothing_twice(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """The ERP answers 429 with Retry-After 8 s, the visibility timeout is 5 s (1.6 times it).

    At the defaults the ratio is the same kind (a Retry-After of hours against an hour's
    visibility timeout): nothing here depends on the two numbers, because a message is acked
    once its entry is staged, before any wait; the waits are the budget's, in Redis. So: no
    message is delivered twice, and at most (concurrency + batch size) are out of the queue.
    """
    assert settings.visibility_timeout == 5
    erp = erp_sim(calls=CALLS, period=1.0, concurrency=CONCURRENCY)
    job_id = sim_state.add_job(JobSpec(items=300, item_statuses={"pending": 1.0}))
    with sampling_outside(rdb) as samples:
        for _ in range(2):
            start_worker("consumers", ITEMS_QUEUE, **erp_env(erp))
        for i in range(2):
            wait_for(lambda i=i: " ready." in worker_log(tmp_path, i), timeout=30, what="ready")
        httpx.post(f"{erp.url}/_sim/pause", json={"retry_after": 8, "seconds": 8}, timeout=5)
        paused_at = time.monotonic()
        produce(job_id, settings=settings, app=make_app(settings))
        status = await_end(
            sim_state, rdb, erp, job_id, timeout=90, what="the job to finish after the pause"
        )
    took = time.monotonic() - paused_at
    assert status == "completed"
    assert took >= 8 - 0.5  # it did wait the pause out
    assert_booked_and_reported_once(sim_state, erp, job_id)
    received = Counter(
        task for i in range(2) for task in _RECEIVED.findall(worker_log(tmp_path, i))
    )
    assert len(received) == 300
    assert set(received.values()) == {1}
    assert max(samples) <= CONCURRENCY + 1, max(samples)
    assert erp.state.stats()["rateLimited"] >= 1
    logs = worker_log(tmp_path, 0) + worker_log(tmp_path, 1)
    assert "erp_paused" in logs


@pytest.mark.timeout(180)
def test_ordered_mode_books_in_plan_order_through_kills(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """ERP_ORDERED=1: the ERP's booking order is the plan's, with workers killed mid-run."""
    erp = erp_sim(calls=CALLS, period=1.0, concurrency=CONCURRENCY, latency=0.01)
    job_id = sim_state.add_job(JobSpec(items=400, item_statuses={"pending": 1.0}, seed=11))
    produce(job_id, settings=settings, app=make_app(settings))
    env = erp_env(erp, ERP_ORDERED="1")
    workers = [start_worker("consumers", ITEMS_QUEUE, **env) for _ in range(3)]
    wait_for(lambda: len(erp.state.bookings()) >= 100, timeout=60, what="100 bookings")
    signal_group(workers[0], signal.SIGKILL)
    wait_for(lambda: len(erp.state.bookings()) >= 200, timeout=60, what="200 bookings")
    signal_group(workers[1], signal.SIGKILL)
    start_worker("consumers", ITEMS_QUEUE, **env)
    status = await_end(sim_state, rdb, erp, job_id, timeout=120, what="the job to finish")
    assert status == "completed"
    assert_booked_and_reported_once(sim_state, erp, job_id)
    assert [b.accounting_entry_id for b in erp.state.bookings()] == plan_order(rdb, job_id)


@pytest.mark.timeout(120)
def test_batches_with_partial_failures_and_lost_answers_book_each_entry_once(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Batches of 50: unknown accounts refused entry by entry, and batch answers lost after the
    ERP booked them (a timeout) retried with the same keys: nothing booked twice."""
    job_id = sim_state.add_job(JobSpec(items=300, item_statuses={"pending": 1.0}, seed=5))
    produce(job_id, settings=settings, app=make_app(settings))
    codes = Counter(
        line["account"]["code"]
        for raw in sim_state.export_items(job_id)
        for line in raw["accountingEntryLines"]
        if isinstance(line.get("account"), dict)
    )
    unknown = codes.most_common()[-1][0]
    erp = erp_sim(
        calls=None,
        batch_max=50,
        unknown_accounts=frozenset({unknown}),
        timeout_rate=0.3,
        timeout_books=True,
        hang=1.5,
        seed=3,
    )
    for _ in range(2):
        start_worker(
            "consumers", ITEMS_QUEUE, **erp_env(erp, ERP_HTTP_BATCH="50", ERP_HTTP_TIMEOUT="1")
        )
    status = await_end(sim_state, rdb, erp, job_id, timeout=90, what="the job to finish")
    stats = erp.state.stats()
    assert status == "completed_with_errors"
    assert stats["faults"], stats  # some answers were lost
    assert stats["replays"] >= 1, stats  # ... and their batches replayed by key
    assert_booked_and_reported_once(sim_state, erp, job_id)
    failed = [i for i in sim_state.items(job_id) if i.status == "failed"]
    assert failed
    assert {i.failure_reason_type for i in failed} <= {"account_unknown", "missing_configuration"}
    assert any(i.failure_reason_type == "account_unknown" for i in failed)
    assert stats["calls"].get("batch", 0) < 300 / 10


@pytest.mark.timeout(120)
def test_a_replay_after_the_erps_key_window_looks_the_entry_up_instead(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """The ERP forgets keys after 0.2 s; answers are lost after booking: each retried entry is
    looked up by its accountingEntryId and found, never booked a second time."""
    erp = erp_sim(
        calls=None, key_window=0.2, timeout_rate=0.3, timeout_books=True, hang=1.5, seed=9
    )
    job_id = sim_state.add_job(JobSpec(items=25, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    start_worker(
        "consumers",
        ITEMS_QUEUE,
        **erp_env(
            erp,
            ERP_KEY_WINDOW="0.2",
            ERP_HTTP_TIMEOUT="1",
            # A drain of 10 s (a third of it), not the 5 s timeout's 1.7 s: fewer hand-overs.
            PLEO_VISIBILITY_TIMEOUT="30",
        ),
    )
    status = await_end(sim_state, rdb, erp, job_id, timeout=90, what="the job to finish")
    assert status == "completed"
    assert_booked_and_reported_once(sim_state, erp, job_id)
    assert "item_found_before_repost" in worker_log(tmp_path)
    assert erp.state.stats()["faults"]


@pytest.mark.timeout(120)
def test_a_rate_limit_that_outlasts_the_job_fails_it_after_reporting_what_was_booked(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """A job with 120 s to live; after 20 bookings the ERP holds calls for 10 minutes (a daily
    limit, say): the job is failed with accounting_system_rate_limit, the 20 reported first."""
    erp = erp_sim(calls=None, latency=0.02)
    job_id = sim_state.add_job(JobSpec(items=200, item_statuses={"pending": 1.0}, expires_in=120))
    produce(job_id, settings=settings, app=make_app(settings))
    start_worker("consumers", ITEMS_QUEUE, **erp_env(erp, ERP_CALLS="20", ERP_PERIOD="1"))
    wait_for(lambda: len(erp.state.bookings()) >= 20, timeout=30, what="20 bookings")
    httpx.post(f"{erp.url}/_sim/pause", json={"retry_after": 600, "seconds": 600}, timeout=5)
    status = await_end(sim_state, rdb, erp, job_id, timeout=60, what="the job to be failed")
    assert status == "failed"
    final = [e for e in sim_state.events(job_id) if e.event != "started"]
    assert [e.failure_reason_type for e in final] == ["accounting_system_rate_limit"]
    booked = {b.accounting_entry_id for b in erp.state.bookings()}
    assert 20 <= len(booked) < 200
    updates = sim_state.update_counts(job_id)
    assert set(updates) == booked
    assert set(updates.values()) == {1}


@pytest.mark.timeout(120)
def test_a_threads_worker_takes_back_what_a_killed_solo_worker_had_claimed(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """The threads pool runs tasks in the worker's own process and sends no
    ``worker_process_init``; its kick thread starts once the worker is ready. Here it is the
    only way on: every message was staged and acked before the solo worker was killed, so the
    threads worker that replaces it receives none, and only its kick thread finds the job."""
    erp = erp_sim(calls=CALLS, period=1.0, concurrency=CONCURRENCY, latency=LATENCY)
    job_id = sim_state.add_job(JobSpec(items=300, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    # Paused (as a 429 would) until every message is staged, so the job cannot end first
    # however slowly a loaded machine stages; then posting starts, and the worker is killed.
    budget = Budget(rdb, ERPLimits(concurrency=CONCURRENCY), connection="default", lease_ttl=10)
    company = sim_state.jobs[job_id].company_id
    budget.pause(company, 120)
    solo = start_worker("consumers", ITEMS_QUEUE, pool="solo", **erp_env(erp))
    kombu = KombuKeys.of(None)
    wait_for(
        lambda: (
            rdb.hlen(ready_items_key(job_id)) == 300
            and rdb.llen(kombu.queue(ITEMS_QUEUE)) == 0
            and rdb.hlen(kombu.unacked) == 0
        ),
        timeout=60,
        what="every message staged and acked",
    )
    rdb.delete(budget.key(company, "paused"))
    wait_for(lambda: len(erp.state.bookings()) >= 20, timeout=30, what="20 entries booked")
    signal_group(solo, signal.SIGKILL)
    solo.wait()
    booked_by_the_first = len(erp.state.bookings())
    assert booked_by_the_first < 300, "the job ended before the kill"
    start_worker("consumers", ITEMS_QUEUE, pool="threads", concurrency=2, **erp_env(erp))
    status = await_end(sim_state, rdb, erp, job_id, timeout=60, what="the threads worker to finish")
    assert status == "completed"
    assert_booked_and_reported_once(sim_state, erp, job_id)
    assert "poster_kicked" in worker_log(tmp_path, 1)
    assert "export_item" not in worker_log(tmp_path, 1).split(" ready.", 1)[1]
