"""A whole producer run against the simulator over HTTP and a real Redis broker."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
import redis

from contract.celery_app import make_app
from contract.errors import ContractViolation, LeaseHeld
from contract.keys import marks_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.components import produce
from tests.conftest import with_settings
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration


def expected_order(state: SimState, job_id: str) -> list[str]:
    """The plan order computed independently from the simulator's own data."""
    actionable = {
        i.accounting_entry_id for i in state.items(job_id) if i.status in {"pending", "in_progress"}
    }
    dates = {e["accountingEntryId"]: e["date"] for e in state.export_items(job_id)}

    def key(entry_id: str) -> tuple[int, datetime | None, str]:
        if entry_id in dates:
            return (0, datetime.fromisoformat(dates[entry_id].replace("Z", "+00:00")), entry_id)
        return (1, None, entry_id)

    return sorted(actionable, key=key)


def run(settings: Settings, job_id: str) -> dict[str, object]:
    return produce(job_id, settings=settings, app=make_app(settings)).as_dict()


def test_faulty_2000_item_job_gives_one_message_per_entry_in_order(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """429s, 503s and truncated pages are retried; the queue ends with each entry once, in order."""
    job_id = sim_state.add_job(
        JobSpec(
            items=2000,
            missing_export_items=25,
            same_date_groups=30,
            item_statuses={"pending": 0.8, "in_progress": 0.1, "successful": 0.05, "failed": 0.05},
        )
    )
    sim_state.add_fault(FaultRule(endpoint="job_items", kind="rate_limit", retry_after=1, every=4))
    sim_state.add_fault(FaultRule(endpoint="export_items", kind="status", status=503, every=3))
    sim_state.add_fault(FaultRule(endpoint="job_items", kind="truncated", every=5, times=3))
    sim_state.add_fault(
        FaultRule(endpoint="export_items", kind="rate_limit", retry_after=None, every=5, times=2)
    )

    summary = run(settings, job_id)

    queued = redis_queue(rdb)
    want = expected_order(sim_state, job_id)
    assert summary["status"] == "enqueued"
    assert summary["enqueued"] == summary["planned"] == len(want) > 1500
    assert [q.kwargs["accounting_entry_id"] for q in queued] == want
    assert [q.kwargs["sequence"] for q in queued] == list(range(len(want)))
    assert {q.kwargs["total"] for q in queued} == {len(want)}
    assert all(q.task_id == task_id_for(job_id, q.kwargs["accounting_entry_id"]) for q in queued)
    assert all(q.task == "consumers.export_item" for q in queued)
    faulted = [c for c in sim_state.calls if c.status in {429, 503}]
    assert len(faulted) >= 10
    assert sim_state.jobs[job_id].status == "in_progress"


def test_rerun_adds_nothing(settings: Settings, sim_state: SimState, rdb: redis.Redis) -> None:
    """A second run of the same job finds every entry marked and publishes nothing."""
    job_id = sim_state.add_job(JobSpec(items=300))
    first = run(settings, job_id)
    second = run(settings, job_id)
    assert second["recovery"] is True
    assert second["enqueued"] == 0
    assert second["already_enqueued"] == first["enqueued"] == first["planned"]
    assert rdb.llen("pleo-export-items") == first["planned"]


def test_page_size_does_not_change_the_order(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Page size 37 and page size 1000 publish the same entries in the same order."""
    job_id = sim_state.add_job(JobSpec(items=500, same_date_groups=20, missing_export_items=7))
    run(with_settings(settings, page_size=1000), job_id)
    big = [q.kwargs for q in redis_queue(rdb)]
    rdb.flushdb()
    run(with_settings(settings, page_size=37), job_id)
    small = [q.kwargs for q in redis_queue(rdb)]
    assert [k["accounting_entry_id"] for k in small] == [k["accounting_entry_id"] for k in big]
    assert small == big


def test_two_concurrent_runs_publish_one_set(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Two runs of one job started together leave exactly one message per entry.

    The second waits for the first: it steps aside (``locked``) if it sees the first heartbeat,
    else it runs after it and finds everything published already.
    """
    sim_state.latency = 0.01
    job_id = sim_state.add_job(JobSpec(items=800))
    outcomes: list[object] = []
    fresh: list[int] = []

    def go() -> None:
        try:
            summary = run(with_settings(settings, lease_wait=0.1), job_id)
            outcomes.append(summary["status"])
            fresh.append(summary["enqueued"])
        except LeaseHeld:
            outcomes.append("locked")

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    queued = [q.kwargs["accounting_entry_id"] for q in redis_queue(rdb)]
    assert sorted(outcomes) in (["enqueued", "locked"], ["enqueued", "enqueued"])
    assert sorted(fresh)[-1] == 800
    assert sum(fresh) == 800
    assert len(queued) == len(set(queued)) == len(expected_order(sim_state, job_id))


def test_entry_id_ordering_never_reads_the_data_layer(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """PLEO_ORDERING=entry_id orders by id and makes no export-items request."""
    job_id = sim_state.add_job(JobSpec(items=200))
    run(with_settings(settings, ordering="entry_id"), job_id)
    queued = redis_queue(rdb)
    ids = [q.kwargs["accounting_entry_id"] for q in queued]
    assert ids == sorted(expected_order(sim_state, job_id))
    assert all(q.kwargs["export_item"] is None for q in queued)
    assert not [c for c in sim_state.calls if c.path.startswith("/v3/export-items")]


def test_terminal_job_is_left_alone(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A completed job is not claimed, fetched or published."""
    job_id = sim_state.add_job(JobSpec(items=50, status="completed"))
    summary = run(settings, job_id)
    assert summary["status"] == "skipped"
    assert summary["job_status"] == "completed"
    assert rdb.llen("pleo-export-items") == 0
    assert not [c for c in sim_state.calls if c.method != "GET"]


@pytest.mark.parametrize("broken", ["job_items", "export_items"])
def test_a_broken_page_on_either_layer_stops_both_and_publishes_nothing(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, broken: str
) -> None:
    """The layers are read side by side; a bad third page on one stops the other, plans nothing."""
    job_id = sim_state.add_job(JobSpec(items=2000, item_statuses={"pending": 1.0}))
    sim_state.add_fault(FaultRule(endpoint=broken, kind="schema", after=2, times=1))

    # The cursor walk, a page at a time: with pages read several at once by offset, the other
    # layer may have read all its pages before the third of this one comes back.
    with pytest.raises(ContractViolation, match="data\\[0\\]"):
        run(with_settings(settings, page_concurrency=1), job_id)

    assert rdb.llen(ITEMS_QUEUE) == 0
    assert rdb.hlen(marks_key(job_id)) == 0
    other = "export_items" if broken == "job_items" else "job_items"
    other_pages = [c for c in sim_state.calls if c.endpoint == other]
    # The other layer stopped at its next page instead of reading all 20.
    assert len(other_pages) < 20
