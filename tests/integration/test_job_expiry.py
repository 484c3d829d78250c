"""Pleo's job expiry from our side: what the producer records, how workers explain a refusal.

Real Redis, the simulator over HTTP, the producer run in-process. One ``ManualClock`` is the
simulator's and the Reporter's time; it starts at the real time because the producer stamps its
claim by the wall clock, and the tests move it by Pleo's default ``expiresIn`` of 3600 s instead
of waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from consumers.reporting import Reporter, success_update
from producer.celery_app import make_app
from producer.components import produce
from producer.config import Settings
from producer.keys import job_key, pleo_action_key, progress_key
from producer.ledger import Ledger
from producer.pleo import PleoClient, make_http_client
from producer.simulator import JobSpec, SimState
from tests.conftest import TEST_TOKEN
from tests.support.clock import ManualClock

pytestmark = pytest.mark.integration

EXPIRES_IN = 3600  # Pleo's default, and the simulator's
# Past the deadline by more than the producer's run could take on the real clock.
PAST_EXPIRY = EXPIRES_IN + 60


@pytest.fixture
def clock() -> ManualClock:
    """The simulator's and the Reporter's time, from now on moved only by the test."""
    return ManualClock(start=time.time())


@pytest.fixture
def sim_state(clock: ManualClock) -> SimState:
    """The conftest simulator state, on the manual clock."""
    return SimState(token=TEST_TOKEN, max_page_size=1000, seed=7, clock=clock)


@pytest.fixture
def pleo(settings: Settings) -> Iterator[PleoClient]:
    """A Pleo client of the simulator, as an ERP worker process has one."""
    with make_http_client(settings) as http:
        yield PleoClient(http, settings)


@pytest.fixture
def reporter(rdb: redis.Redis, pleo: PleoClient, clock: ManualClock) -> Reporter:
    """The ERP worker's Reporter on the test Redis and the manual clock."""
    ledger = Ledger(rdb, lease_ttl=2.0, dedup_ttl=3600)
    return Reporter(rdb, pleo, ledger, dedup_ttl=3600, max_attempts=2, clock=clock)


def publish(settings: Settings, state: SimState, items: int) -> str:
    """A pending job of ``items`` entries, claimed and published by the real producer."""
    job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    assert produce(job_id, settings=settings, app=make_app(settings)).status == "enqueued"
    return job_id


def test_producer_records_expires_in_and_its_claim(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """The claim leaves the job's expiresIn in its progress and stamps the started event's time."""
    before = time.time()
    job_id = publish(settings, sim_state, 3)
    stamp = float(rdb.get(pleo_action_key(job_id)) or 0)
    assert before <= stamp <= time.time()
    assert rdb.hget(progress_key(job_id), "expires_in") == b"3600"

    rdb.delete(pleo_action_key(job_id))
    produce(job_id, settings=settings, app=make_app(settings))  # a recovery run: no new event
    assert rdb.get(pleo_action_key(job_id)) is None


def test_write_back_refused_by_an_expired_job_records_why(
    sim_state: SimState,
    rdb: redis.Redis,
    clock: ManualClock,
    reporter: Reporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PUT answered 422 because the job expired: the job is read once and job_expired noted."""
    job_id = sim_state.add_job(JobSpec(items=2, status="in_progress"))
    entry = sim_state.items(job_id)[0].accounting_entry_id
    reporter.record(job_id, success_update(entry, "JE-1", None, "2026-01-01T00:00:00Z"))
    clock.advance(PAST_EXPIRY)
    sim_state.clear_calls()

    with caplog.at_level(logging.WARNING, logger="consumers.finished"):
        result = reporter.flush(job_id)

    assert (result.accepted, result.refused) == (0, 1)
    assert reporter.final_event(job_id) == "already_finished"
    assert [(c.endpoint, c.status) for c in sim_state.calls] == [
        ("job_items_put", 422),
        ("job", 200),
    ]
    items = rdb.hgetall(job_key(job_id, "items"))
    assert items[b"finished_by_pleo"] == b"failed"
    assert items[b"pleo_failure_reason_type"] == b"job_expired"
    assert f"job_expired_in_pleo job_id={job_id}" in caplog.text


def test_final_event_refused_by_a_job_finished_elsewhere_records_how(
    sim_state: SimState, rdb: redis.Redis, reporter: Reporter
) -> None:
    """A final event answered 422 (a user cancelled the job): its status and reason are noted."""
    job_id = sim_state.add_job(JobSpec(items=1, status="in_progress"))
    sim_state.post_event(job_id, "failed", "Canceled in Pleo.", "canceled_by_user")
    assert reporter.send_final(job_id, "completed") is None
    items = rdb.hgetall(job_key(job_id, "items"))
    assert items[b"final_event"] == b"already_finished"
    assert items[b"finished_by_pleo"] == b"failed"
    assert items[b"pleo_failure_reason_type"] == b"canceled_by_user"
    assert items[b"pleo_failure_reason"] == b"Canceled in Pleo."
