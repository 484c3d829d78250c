"""The direct path's Redis work: two scripts per item, the same rules as the calls they replace.

Real Redis, the simulator over HTTP, the reference SQL journal and the producer run in-process;
round trips are counted by a connection class handed to the client's pool (one send is one round
trip: a script, a pipeline or a single command).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from consumers.erp import Entry
from consumers.erp_sql import SqlJournal
from consumers.item_records import ItemRecords
from consumers.payloads import PayloadCache
from consumers.reporting import Reporter
from consumers.results import success_update
from consumers.worker import process_item
from contract.celery_app import make_app
from contract.keys import erp_down_key, final_key, flushed_key, outbox_key, results_key
from contract.ledger import Ledger
from contract.message import ItemMessage
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from pleo.client import PleoClient, make_http_client
from producer.components import produce
from tests.support.clock import ManualClock
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration

JOB = "5b0d7c1e-3f5a-4e0b-9a51-2f1c7d9e8a01"


class CountingConnection(redis.Connection):
    """A connection that counts what it sends: one send, one round trip."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(rdb: redis.Redis) -> Iterator[redis.Redis]:
    """A client of the test database whose round trips are counted."""
    kwargs = dict(rdb.connection_pool.connection_kwargs)
    pool = redis.ConnectionPool(connection_class=CountingConnection, **kwargs)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()


def update(entry: str) -> dict[str, Any]:
    return success_update(entry, f"JE-{entry}", None, "2026-01-01T00:00:00Z")


def test_before_reads_the_final_event_and_the_outcome(rdb: redis.Redis) -> None:
    """One read says whether the job ended and whether the entry already has its outcome."""
    records = ItemRecords(rdb, dedup_ttl=60)
    first = records.before(JOB, "e1")
    assert (first.final_event, first.recorded) == (None, False)
    records.after(JOB, update("e1"), attempt=1, interval=2.0)
    assert records.before(JOB, "e1").recorded
    assert not records.before(JOB, "e2").recorded
    rdb.set(final_key(JOB), "completed")
    assert records.before(JOB, "e2").final_event == "completed"


def test_after_keeps_the_first_outcome_and_decides_the_write_back_as_request_flush(
    rdb: redis.Redis,
) -> None:
    """First result schedules a flush, the next ones wait, an overdue one flushes now; a repeat
    is a duplicate that changes nothing; an earlier ERP outage is forgotten."""
    clock = ManualClock(start=1_000.0)
    records = ItemRecords(rdb, dedup_ttl=60, clock=clock)
    rdb.set(erp_down_key(JOB), "999.0")
    assert records.after(JOB, update("e1"), attempt=1, interval=2.0).flush == "schedule"
    assert rdb.get(erp_down_key(JOB)) is None
    second = records.after(JOB, update("e2"), attempt=2, interval=2.0)
    assert (second.waiting, second.flush) == (2, "none")
    clock.advance(2.0)
    assert records.after(JOB, update("e3"), attempt=1, interval=2.0).flush == "now"
    again = records.after(JOB, {**update("e1"), "externalId": "other"}, attempt=3, interval=2.0)
    assert (again.waiting, again.flush) == (0, "none")
    assert b'"JE-e1"' in (rdb.hget(results_key(JOB), "e1") or b"")
    assert b'"erpAttempts": 2' in (rdb.hget(results_key(JOB), "e2") or b"")
    assert rdb.hlen(outbox_key(JOB)) == 3


def test_a_full_batch_waiting_flushes_now(rdb: redis.Redis) -> None:
    """With 100 results waiting (a full PUT), the item that made them 100 flushes at once."""
    records = ItemRecords(rdb, dedup_ttl=60)
    decisions = [
        records.after(JOB, update(f"e{n}"), attempt=1, interval=60.0).flush for n in range(100)
    ]
    assert decisions[0] == "schedule"
    assert set(decisions[1:99]) == {"none"}
    assert decisions[99] == "now"


def test_an_item_costs_two_round_trips_after_the_first_of_its_job(
    settings: Settings, sim_state: SimState, counted: redis.Redis
) -> None:
    """Before the ERP call one read, after it one write: the job's expiry figures are kept."""
    job_id = sim_state.add_job(JobSpec(items=4, item_statuses={"pending": 1.0}))
    assert produce(job_id, settings=settings, app=make_app(settings)).status == "enqueued"
    messages = [ItemMessage.parse(m.kwargs) for m in redis_queue(counted)]
    with make_http_client(settings) as http, SqlJournal(settings.erp_database_url) as journal:
        pleo = PleoClient(http, settings)
        reporter = Reporter(
            counted,
            pleo,
            Ledger(counted, lease_ttl=2.0, dedup_ttl=3600),
            dedup_ttl=3600,
            max_attempts=2,
            request_timeout=1.0,
            retry_budget=1.0,
        )
        payloads = PayloadCache(counted, pleo, dedup_ttl=3600)
        costs, statuses = [], []
        for message in messages + messages[:1]:
            before = CountingConnection.sent
            outcome = process_item(
                Entry.from_message(message),
                erp=journal,
                reporter=reporter,
                payloads=payloads,
                report_interval=2.0,
            )
            costs.append(CountingConnection.sent - before)
            statuses.append(outcome.status)
    assert statuses == ["successful"] * 4 + ["duplicate"]
    # The first item also loads both scripts and reads the job's expiry figures once.
    assert costs[1:] == [2, 2, 2, 1]


def test_decisions_follow_the_clock_not_the_call_count(rdb: redis.Redis) -> None:
    """A write-back stamp more recent than the interval keeps the decision at ``none``."""
    clock = ManualClock(start=time.time())
    records = ItemRecords(rdb, dedup_ttl=60, clock=clock)
    assert records.after(JOB, update("a"), attempt=1, interval=5.0).flush == "schedule"
    clock.advance(4.0)
    rdb.set(flushed_key(JOB), repr(clock()))
    clock.advance(4.0)
    assert records.after(JOB, update("b"), attempt=1, interval=5.0).flush == "none"
    clock.advance(1.5)
    assert records.after(JOB, update("c"), attempt=1, interval=5.0).flush == "now"
