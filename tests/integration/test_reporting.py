"""Write-back and completion against the simulator over HTTP and a real Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import redis

from consumers.reporting import FlushResult, Reporter
from consumers.results import failure_update, success_update
from contract.errors import TransientUpstreamError
from contract.keys import (
    flushed_key,
    items_key,
    lease_keys,
    marks_key,
    outbox_key,
    progress_key,
    reported_key,
    sending_key,
)
from contract.ledger import Ledger
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from pleo.client import PleoClient, make_http_client
from pleo.final_event import record_final
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def reporter(settings: Settings, rdb: redis.Redis) -> Iterator[Reporter]:
    """A Reporter wired to the simulator and the test Redis."""
    with make_http_client(settings) as http:
        ledger = Ledger(rdb, lease_ttl=settings.lease_ttl, dedup_ttl=3600)
        yield Reporter(
            rdb,
            PleoClient(http, settings),
            ledger,
            dedup_ttl=3600,
            max_attempts=2,
            request_timeout=settings.http_timeout,
            retry_budget=settings.retry_budget,
        )


def started_job(state: SimState, items: int) -> tuple[str, list[str]]:
    job_id = state.add_job(JobSpec(items=items, status="in_progress", item_statuses={"pending": 1}))
    return job_id, [i.accounting_entry_id for i in state.items(job_id)]


def published(rdb: redis.Redis, job_id: str, entries: list[str]) -> None:
    """Record what the producer would have: every entry published, the run finished."""
    rdb.hset(marks_key(job_id), mapping=dict.fromkeys(entries, "p"))
    rdb.hset(progress_key(job_id), "state", "enqueued")


def test_first_outcome_wins(reporter: Reporter, sim_state: SimState) -> None:
    """A second outcome for the same entry is ignored and nothing more is queued."""
    job_id, entries = started_job(sim_state, 1)
    ok = success_update(entries[0], "JE-1", None, "2026-01-01T00:00:00Z")
    assert reporter.record(job_id, ok) == 1
    assert reporter.record(job_id, failure_update(entries[0], "validation_failure", "x")) == 0
    assert reporter.outcome(job_id, entries[0]) == ok
    assert reporter.pending(job_id) == 1


def test_flush_sends_batches_of_at_most_100(reporter: Reporter, sim_state: SimState) -> None:
    """250 waiting results go out as PUTs of 100, 100 and 50; each entry updated once."""
    job_id, entries = started_job(sim_state, 250)
    for n, entry in enumerate(entries):
        reporter.record(job_id, success_update(entry, f"JE-{n}", None, "2026-01-01T00:00:00Z"))
    result = reporter.flush(job_id)
    assert (result.sent, result.accepted, result.refused) == (250, 250, 0)
    assert sorted(c.items or 0 for c in sim_state.calls if c.method == "PUT") == [50, 100, 100]
    assert set(sim_state.update_counts(job_id).values()) == {1}
    assert reporter.pending(job_id) == 0
    assert reporter.flush(job_id).sent == 0


def test_refused_items_are_offered_again_then_dropped(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Items in errors[] stay waiting; after max_attempts refusals they are dropped and counted."""
    job_id, entries = started_job(sim_state, 30)
    for entry in entries:
        reporter.record(job_id, success_update(entry, "JE", None, "2026-01-01T00:00:00Z"))
    sim_state.add_fault(FaultRule(endpoint="job_items_put", kind="item_errors", times=2))
    first = reporter.flush(job_id)
    assert (first.accepted, first.refused, first.dropped) == (27, 3, 0)
    second = reporter.flush(job_id)
    # The fault refuses every tenth update of a batch: of these 3, only the first again.
    assert (second.sent, second.accepted, second.refused, second.dropped) == (3, 2, 1, 1)
    assert reporter.pending(job_id) == 0
    assert rdb.hget(items_key(job_id), "report_dropped") == b"1"
    assert rdb.hget(items_key(job_id), "reported") == b"29"


def test_completion_waits_for_every_published_entry(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis
) -> None:
    """No final event while an entry is unreported; then `completed_with_errors` once."""
    job_id, entries = started_job(sim_state, 3)
    published(rdb, job_id, entries)
    reporter.record(job_id, success_update(entries[0], "JE-1", None, "2026-01-01T00:00:00Z"))
    reporter.record(job_id, failure_update(entries[1], "missing_configuration", "no account"))
    reporter.flush(job_id)
    assert reporter.maybe_complete(job_id) is None
    reporter.record(job_id, success_update(entries[2], "JE-3", None, "2026-01-01T00:00:00Z"))
    reporter.flush(job_id)
    assert reporter.maybe_complete(job_id) == "completed_with_errors"
    assert reporter.maybe_complete(job_id) is None
    assert [e.event for e in sim_state.events(job_id)] == ["completed_with_errors"]
    assert reporter.final_event(job_id) == "completed_with_errors"


def test_many_workers_finishing_together_send_one_event(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Twelve concurrent completion checks on a finished job send exactly one event."""
    job_id, entries = started_job(sim_state, 5)
    published(rdb, job_id, entries)
    for entry in entries:
        reporter.record(job_id, success_update(entry, "JE", None, "2026-01-01T00:00:00Z"))
    reporter.flush(job_id)
    sent: list[str | None] = []
    barrier = threading.Barrier(12)

    def check() -> None:
        barrier.wait()
        sent.append(reporter.maybe_complete(job_id))

    threads = [threading.Thread(target=check) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sent.count("completed") == 1
    assert sent.count(None) == 11
    assert [e.event for e in sim_state.events(job_id)] == ["completed"]


def test_job_finished_elsewhere_is_not_retried(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A 422 on write-back (job already finished) ends the job's reporting quietly."""
    job_id, entries = started_job(sim_state, 2)
    sim_state.post_event(job_id, "completed")
    reporter.record(job_id, success_update(entries[0], "JE", None, "2026-01-01T00:00:00Z"))
    result = reporter.flush(job_id)
    assert result.accepted == 0
    assert reporter.final_event(job_id) == "already_finished"
    assert reporter.pending(job_id) == 0


def test_failed_final_event_can_be_sent_again(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A final event that failed transiently is not marked sent, so the next check sends it."""
    job_id, entries = started_job(sim_state, 1)
    published(rdb, job_id, entries)
    reporter.record(job_id, success_update(entries[0], "JE", None, "2026-01-01T00:00:00Z"))
    reporter.flush(job_id)
    sim_state.add_fault(FaultRule(endpoint="job_events", kind="status", status=503, times=100))
    with pytest.raises(Exception, match="503"):
        reporter.maybe_complete(job_id)
    sim_state.clear_faults()
    assert reporter.maybe_complete(job_id) == "completed"


@pytest.mark.parametrize("pleo_applied", [True, False])
def test_flusher_killed_around_its_put_reports_each_item_once(
    reporter: Reporter,
    sim_state: SimState,
    rdb: redis.Redis,
    settings: Settings,
    pleo_applied: bool,
) -> None:
    """A batch left in ``:sending`` by a killed flusher: what Pleo applied is not sent again.

    The kill is staged exactly: the batch is noted as sending and, when ``pleo_applied``, Pleo gets
    the PUT, but nothing records its answer, as when the worker dies between the two.
    """
    job_id, entries = started_job(sim_state, 150)
    for entry in entries:
        reporter.record(job_id, success_update(entry, "JE", None, "2026-01-01T00:00:00Z"))
    outbox = sorted(rdb.hgetall(outbox_key(job_id)).items())
    first = [json.loads(update) for _entry, update in outbox[:100]]
    rdb.sadd(sending_key(job_id), *(u["accountingEntryId"] for u in first))
    if pleo_applied:
        with make_http_client(settings) as http:
            PleoClient(http, settings).update_job_items(job_id, first)

    reporter.flush(job_id)

    assert sim_state.update_counts(job_id) == dict.fromkeys(entries, 1)
    assert reporter.pending(job_id) == 0
    assert rdb.scard(sending_key(job_id)) == 0
    assert rdb.scard(reported_key(job_id)) == 150
    assert rdb.hget(items_key(job_id), "reported") == b"150"
    # Applied: the staged PUT of 100, then the flush's 50. Not applied: the flush sends both.
    assert sorted(c.items or 0 for c in sim_state.calls if c.method == "PUT") == [50, 100]


def test_a_put_whose_answer_timed_out_is_settled_not_sent_again(
    reporter: Reporter, sim_state: SimState, rdb: redis.Redis, settings: Settings
) -> None:
    """Pleo applies a PUT but its answer comes after the client gave up: the flush fails
    without sending it again, and the next one reads what Pleo applied and sends only the rest.

    The simulator holds the answer past ``http_timeout`` and then runs the handler, so the client
    cannot tell whether the write applied (the case a loaded Pleo or a lossy network makes).
    """
    job_id, entries = started_job(sim_state, 150)
    for entry in entries:
        reporter.record(job_id, success_update(entry, "JE", None, "2026-01-01T00:00:00Z"))
    late = settings.http_timeout + 1
    sim_state.add_fault(FaultRule(endpoint="job_items_put", kind="timeout", delay=late, times=1))
    with pytest.raises(TransientUpstreamError) as caught:
        reporter.flush(job_id)
    assert caught.value.maybe_applied
    assert rdb.scard(sending_key(job_id)) == 100
    wait_for(
        lambda: sum(sim_state.update_counts(job_id).values()) == 100,
        timeout=10,
        what="Pleo to apply the PUT whose answer the client stopped waiting for",
    )

    second = reporter.flush(job_id)

    assert second.sent == 50
    assert sim_state.update_counts(job_id) == dict.fromkeys(entries, 1)
    assert sorted(c.items or 0 for c in sim_state.calls if c.method == "PUT") == [50, 100]
    assert reporter.pending(job_id) == 0
    assert rdb.scard(sending_key(job_id)) == 0
    assert rdb.hget(items_key(job_id), "reported") == b"150"


def test_a_flush_after_the_final_event_writes_nothing_back_and_no_state(
    reporter: Reporter, rdb: redis.Redis, sim_state: SimState
) -> None:
    """A late flush task (scheduled before the final event) finds the job over: no PUT, and
    none of the working state closing deleted (``:flushed-at``, the flush lease) comes back."""
    job_id, entries = started_job(sim_state, 3)
    published(rdb, job_id, entries)
    reporter.record(job_id, success_update(entries[0], "JE-1", None, "2026-01-01T00:00:00Z"))
    record_final(rdb, job_id, "completed", ttl_ms=3_600_000)

    assert reporter.flush(job_id) == FlushResult()
    assert rdb.exists(flushed_key(job_id), *lease_keys(job_id, "flush")) == 0
    assert sim_state.update_counts(job_id) == {}
