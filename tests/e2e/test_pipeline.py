"""Producer and ERP workers end to end: each entry in the ERP once, reported once, job completed.

Real Redis, the simulator over HTTP, real `celery -A consumers worker` processes, SQLite (and
PostgreSQL in one case) behind the reference adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections import Counter
from typing import Any

import pytest
import redis

from consumers.erp_sql import SqlJournal
from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.store import redis_client
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import need_service, wait_for, with_settings
from tests.support.cli import invoke
from tests.support.local import journal_ids, pool_children

pytestmark = [pytest.mark.integration, pytest.mark.worker]
PG_URL = os.environ.get("POSTGRES_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")


def finished(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def accepted_events(state: SimState, job_id: str) -> list[str]:
    return [e.event for e in state.events(job_id) if e.accepted]


def run_pipeline(
    settings: Settings, state: SimState, job_id: str, start_worker: Any, *, workers: int = 2
) -> str:
    produce(job_id, settings=settings, app=make_app(settings))
    for _ in range(workers):
        start_worker("consumers", ITEMS_QUEUE, settings_=settings)
    result: str = wait_for(
        lambda: finished(state, job_id),
        timeout=100,
        what="the job to finish",
        explain=lambda: job_status(redis_client(settings.ledger_url), job_id),
    )
    return result


def assert_each_entry_once(settings: Settings, state: SimState, job_id: str) -> None:
    """One ERP row and one applied update per planned entry, in batches of at most 100."""
    planned = {i.accounting_entry_id for i in state.items(job_id)}
    posted = journal_ids(settings)
    assert len(posted) == len(set(posted))
    updates = state.update_counts(job_id)
    assert set(updates) == planned
    assert set(updates.values()) == {1}
    puts = [c for c in state.calls if c.method == "PUT"]
    assert puts
    assert max(c.items or 0 for c in puts) <= 100


def test_thousand_items_two_workers_completed(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """1,000 entries, 2 worker processes: each posted once, reported once, one `completed`."""
    job_id = sim_state.add_job(JobSpec(items=1000, item_statuses={"pending": 1.0}))
    assert run_pipeline(settings, sim_state, job_id, start_worker) == "completed"
    assert_each_entry_once(settings, sim_state, job_id)
    assert len(journal_ids(settings)) == 1000
    assert accepted_events(sim_state, job_id) == ["started", "completed"]
    statuses = Counter(i.status for i in sim_state.items(job_id))
    assert statuses == {"successful": 1000}
    assert all(i.external_id and i.exported_at for i in sim_state.items(job_id))


def test_failing_validation_completes_with_errors(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """5% of entries lack an expense account: failed with the reason, job completed_with_errors."""
    job_id = sim_state.add_job(
        JobSpec(items=1000, item_statuses={"pending": 1.0}, missing_account_ratio=0.05)
    )
    assert run_pipeline(settings, sim_state, job_id, start_worker) == "completed_with_errors"
    assert_each_entry_once(settings, sim_state, job_id)
    failed = [i for i in sim_state.items(job_id) if i.status == "failed"]
    assert 20 <= len(failed) <= 80
    assert {i.failure_reason_type for i in failed} == {"missing_configuration"}
    assert all("expense account" in (i.failure_reason or "") for i in failed)
    assert len(journal_ids(settings)) == 1000 - len(failed)
    assert accepted_events(sim_state, job_id) == ["started", "completed_with_errors"]
    view = json.loads(invoke(settings, "status", job_id, "--json").stdout)
    assert (view["planned"], view["published_total"]) == (1000, 1000)
    assert (view["successful"], view["failed"]) == (1000 - len(failed), len(failed))
    assert (view["reported"], view["awaiting_outcome"], view["waiting_report"]) == (1000, 0, 0)
    assert view["final_event"] == "completed_with_errors"


def test_every_message_delivered_twice(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """Each message duplicated on the queue: still one ERP row and one report per entry."""
    job_id = sim_state.add_job(JobSpec(items=400, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    messages = rdb.lrange(ITEMS_QUEUE, 0, -1)
    rdb.lpush(ITEMS_QUEUE, *reversed(messages))
    assert rdb.llen(ITEMS_QUEUE) == 800
    for _ in range(2):
        start_worker("consumers", ITEMS_QUEUE)
    assert wait_for(lambda: finished(sim_state, job_id), timeout=120, what="the job") == "completed"
    assert_each_entry_once(settings, sim_state, job_id)
    assert len(journal_ids(settings)) == 400
    assert accepted_events(sim_state, job_id) == ["started", "completed"]


def test_worker_killed_mid_batch(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """Pool processes SIGKILLed mid-task, twice: their messages run again, nothing twice.

    This is the kill an OOM killer deals: the worker's main process survives and Celery
    (acks_late + reject_on_worker_lost) requeues the lost tasks at once. Killing the main process
    too is a different story: kombu's Redis transport can lose the one message it was receiving
    at that instant (see the closing note of issue 3), so that case is left to the chaos suite.
    """
    sim_state.latency = 0.002
    job_id = sim_state.add_job(JobSpec(items=600, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    worker = start_worker("consumers", ITEMS_QUEUE, concurrency=2)
    killed = 0
    for posted in (150, 300):
        wait_for(lambda n=posted: len(journal_ids(settings)) >= n, timeout=60, what="posting")
        children = wait_for(lambda: pool_children(worker), timeout=10, what="pool processes")
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    status = wait_for(
        lambda: finished(sim_state, job_id),
        timeout=100,
        what="the job",
        explain=lambda: job_status(rdb, job_id),
    )
    assert killed >= 2
    assert status == "completed"
    assert_each_entry_once(settings, sim_state, job_id)
    assert len(journal_ids(settings)) == 600
    assert accepted_events(sim_state, job_id) == ["started", "completed"]


def test_write_back_faults_are_retried_per_item(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """PUT answering 503 twice, then 200s with errors[]: refused items retried, reported once."""
    job_id = sim_state.add_job(JobSpec(items=500, item_statuses={"pending": 1.0}))
    sim_state.add_fault(FaultRule(endpoint="job_items_put", kind="status", status=503, times=2))
    sim_state.add_fault(FaultRule(endpoint="job_items_put", kind="item_errors", times=3))
    assert run_pipeline(settings, sim_state, job_id, start_worker) == "completed"
    assert_each_entry_once(settings, sim_state, job_id)
    assert len([c for c in sim_state.calls if c.method == "PUT" and c.status == 503]) == 2
    assert len([c for c in sim_state.calls if c.fault == "item_errors"]) == 3


def test_postgresql_journal(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """The same pipeline with the journal in PostgreSQL."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        need_service("PostgreSQL on 127.0.0.1:5432")
    pg = with_settings(settings, erp_database_url=PG_URL)
    journal = SqlJournal(PG_URL)
    journal.drop_tables()
    journal.close()
    job_id = sim_state.add_job(
        JobSpec(items=300, item_statuses={"pending": 1.0}, missing_account_ratio=0.05)
    )
    try:
        assert run_pipeline(pg, sim_state, job_id, start_worker) == "completed_with_errors"
        assert_each_entry_once(pg, sim_state, job_id)
        successful = [i for i in sim_state.items(job_id) if i.status == "successful"]
        assert len(journal_ids(pg)) == len(successful)
    finally:
        journal = SqlJournal(PG_URL)
        journal.drop_tables()
        journal.close()
