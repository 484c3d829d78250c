"""ERP workers and Pleo's job expiry: no ERP post for a job Pleo expired, and the reason recorded.

Real Redis, the simulator over HTTP, the reference SQL journal, the producer run in-process and
``process_item`` on the messages it published. One ``ManualClock`` is the simulator's and the
Reporter's time; it starts at the real time because the producer stamps its claim by the wall
clock, and the tests move it by Pleo's default ``expiresIn`` of 3600 s instead of waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from consumers.erp import Entry
from consumers.erp_sql import SqlJournal
from consumers.payloads import PayloadCache
from consumers.reporting import Reporter
from consumers.results import success_update
from consumers.worker import process_item
from contract.celery_app import make_app
from contract.keys import items_key, pleo_action_key, progress_key
from contract.ledger import Ledger
from contract.message import ItemMessage
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from devtools.simulator.records import Call
from pleo.client import PleoClient, make_http_client
from producer.components import produce
from producer.status import job_status
from tests.conftest import TEST_TOKEN
from tests.support.clock import ManualClock
from tests.support.local import journal_ids
from tests.support.queues import redis_queue

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
    return Reporter(
        rdb,
        pleo,
        ledger,
        dedup_ttl=3600,
        max_attempts=2,
        request_timeout=1.0,
        retry_budget=1.0,
        clock=clock,
        sleep=clock.sleep,
    )


@dataclass
class Worker:
    """What one ERP worker process holds, and ``process_item`` over the producer's messages."""

    rdb: redis.Redis
    reporter: Reporter
    journal: SqlJournal
    pleo: PleoClient
    payloads: PayloadCache

    def run(self, message: int) -> str:
        """Process the queue's message number ``message``; its outcome's status."""
        entry = Entry.from_message(ItemMessage.parse(redis_queue(self.rdb)[message].kwargs))
        return process_item(
            entry,
            erp=self.journal,
            reporter=self.reporter,
            payloads=self.payloads,
            report_interval=2.0,
        ).status

    def run_all(self) -> list[str]:
        """Process every message the producer left on the queue, in order."""
        return [self.run(n) for n in range(len(redis_queue(self.rdb)))]


@pytest.fixture
def worker(
    settings: Settings, rdb: redis.Redis, reporter: Reporter, pleo: PleoClient
) -> Iterator[Worker]:
    """An ERP worker's parts: the Reporter, the reference SQL journal, the payload cache."""
    with SqlJournal(settings.erp_database_url) as journal:
        yield Worker(rdb, reporter, journal, pleo, PayloadCache(rdb, pleo, dedup_ttl=3600))


def publish(settings: Settings, state: SimState, items: int) -> str:
    """A pending job of ``items`` entries, claimed and published by the real producer."""
    job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    assert produce(job_id, settings=settings, app=make_app(settings)).status == "enqueued"
    return job_id


def job_reads(calls: list[Call]) -> int:
    return sum(1 for c in calls if c.endpoint == "job")


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


def test_no_erp_post_for_a_job_pleo_expired(
    settings: Settings,
    sim_state: SimState,
    clock: ManualClock,
    worker: Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An hour of silence: Pleo expires the job, its messages post nothing, job_expired recorded."""
    job_id = publish(settings, sim_state, 5)
    clock.advance(PAST_EXPIRY)
    sim_state.clear_calls()

    with caplog.at_level(logging.WARNING, logger="consumers.finished"):
        statuses = worker.run_all()

    assert statuses == ["job_finished"] * 5
    assert journal_ids(settings) == []
    calls = sim_state.calls
    assert job_reads(calls) == 1  # the first message asked; the rest read the final event
    assert not [c for c in calls if c.method == "PUT"]
    raw = worker.rdb.hgetall(items_key(job_id))
    items = {k.decode(): v.decode() for k, v in raw.items()}
    assert items["final_event"] == "already_finished"
    assert items["finished_by_pleo"] == "failed"
    assert items["pleo_failure_reason_type"] == "job_expired"
    assert items["pleo_failure_reason"] == "The export job was not updated within 3600 seconds."
    assert job_status(worker.rdb, job_id)["pleo_failure_reason_type"] == "job_expired"
    assert f"job_expired_in_pleo job_id={job_id}" in caplog.text
    assert sim_state.item_counts(job_id) == {"abandoned": 5}


def test_a_fresh_job_costs_pleo_no_request(
    settings: Settings, sim_state: SimState, clock: ManualClock, worker: Worker
) -> None:
    """Just short of expiresIn since the claim, every entry is posted and Pleo is not asked."""
    publish(settings, sim_state, 4)
    clock.advance(EXPIRES_IN - 60)
    sim_state.clear_calls()
    assert worker.run_all() == ["successful"] * 4
    assert len(journal_ids(settings)) == 4
    assert sim_state.calls == []


def test_a_quiet_job_still_open_in_pleo_is_asked_about_at_most_every_30_s(
    settings: Settings, sim_state: SimState, clock: ManualClock, worker: Worker
) -> None:
    """Our stamp is old but Pleo saw a later action: one read per 30 s, and the entries posted."""
    job_id = publish(settings, sim_state, 4)
    entries = [i.accounting_entry_id for i in sim_state.items(job_id)]
    clock.advance(EXPIRES_IN - 60)
    # An action we did not stamp (another integration, say): Pleo's expiry clock restarts.
    done = success_update(entries[0], "JE-0", None, "2026-01-01T00:00:00Z")
    worker.pleo.update_job_items(job_id, [done])
    clock.advance(120)
    sim_state.clear_calls()

    statuses = [worker.run(0), worker.run(1)]
    clock.advance(29)
    statuses.append(worker.run(2))
    assert job_reads(sim_state.calls) == 1
    clock.advance(2)
    statuses.append(worker.run(3))
    assert job_reads(sim_state.calls) == 2
    assert statuses == ["successful"] * 4
    assert len(journal_ids(settings)) == 4


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
    items = rdb.hgetall(items_key(job_id))
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
    items = rdb.hgetall(items_key(job_id))
    assert items[b"final_event"] == b"already_finished"
    assert items[b"finished_by_pleo"] == b"failed"
    assert items[b"pleo_failure_reason_type"] == b"canceled_by_user"
    assert items[b"pleo_failure_reason"] == b"Canceled in Pleo."


def test_accepted_puts_and_final_event_stamp_our_last_action(
    sim_state: SimState, rdb: redis.Redis, clock: ManualClock, reporter: Reporter
) -> None:
    """An accepted PUT and the final event move ``:pleo-action-at``; a PUT Pleo refused does not."""
    job_id = sim_state.add_job(JobSpec(items=2, status="in_progress"))
    entries = [i.accounting_entry_id for i in sim_state.items(job_id)]
    reporter.record(job_id, success_update(entries[0], "JE-1", None, "2026-01-01T00:00:00Z"))
    reporter.flush(job_id)
    assert float(rdb.get(pleo_action_key(job_id)) or 0) == clock()

    clock.advance(10)
    unknown = "00000000-0000-4000-8000-000000000000"
    reporter.record(job_id, success_update(unknown, "JE-X", None, "2026-01-01T00:00:00Z"))
    reporter.flush(job_id)
    assert float(rdb.get(pleo_action_key(job_id)) or 0) == clock() - 10

    clock.advance(10)
    assert reporter.send_final(job_id, "completed") == "completed"
    assert float(rdb.get(pleo_action_key(job_id)) or 0) == clock()
