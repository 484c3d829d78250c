"""A rolling upgrade of the ERP workers in the middle of a job: every entry once, nothing parked.

The "old" workers are this code with ``ERP_MESSAGE_SCHEMAS=1``: they read and announce schema 1
only and park schema 2, as a worker from before schema 2 would refuse it (the README's Upgrades
section calls this the upgrade rehearsal). A real earlier build would only differ in acking such a
message away instead of parking it, which is what the producer's choice must never let happen.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from consumers.budget import Budget
from consumers.erp import ERPLimits
from contract.celery_app import make_app
from contract.keys import DEAD_LETTER_KEY, results_key
from contract.names import ITEMS_QUEUE
from contract.schemas import SchemaChoice, readers
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for, with_settings
from tests.support.local import journal_ids, stop_as_deployed, worker_log

pytestmark = [pytest.mark.integration, pytest.mark.worker]
# Job 1's size: enough that the first upgrade (a warm shutdown, then a new worker's start, ~6 s)
# happens while the remaining old worker still has job 1's messages to take (~60 a second).
ITEMS = 1000


def announced(rdb: redis.Redis, index: int) -> frozenset[int] | None:
    """What the ``index``-th worker the fixture started announces it reads, if it does."""
    mine = [reads for name, reads in readers(rdb).items() if name.startswith(f"worker{index}.")]
    return mine[0] if mine else None


# The fleet posts 200 entries a second, one at a time (a governed connection): job 1 takes about
# 5 s, long enough to upgrade its workers while it runs.
PACED = {"ERP_CALLS": "200", "ERP_BATCH_SIZE": "1"}


def finished(state: SimState, job_id: str) -> bool:
    return state.jobs[job_id].status in {"completed", "completed_with_errors", "failed"}


def test_workers_upgraded_one_by_one_mid_job_finish_every_job_exactly_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Any
) -> None:
    """Old workers replaced one by one mid-job, then schema 2 switched on: every entry once."""
    app = make_app(settings)
    old_a = start_worker("consumers", ITEMS_QUEUE, ERP_MESSAGE_SCHEMAS="1", **PACED)
    old_b = start_worker("consumers", ITEMS_QUEUE, ERP_MESSAGE_SCHEMAS="1", **PACED)
    wait_for(
        lambda: announced(rdb, 0) == announced(rdb, 1) == {1},
        timeout=30,
        what="both old workers to announce",
    )

    # Job 1 is published to the old fleet, and its first worker is upgraded while it runs.
    first = sim_state.add_job(JobSpec(items=ITEMS, item_statuses={"pending": 1.0}))
    produce(first, settings=settings, app=app)
    assert job_status(rdb, first)["message_schema"] == 1
    wait_for(lambda: rdb.hlen(results_key(first)) >= 20, timeout=30, what="job 1 to be under way")
    # The ERP asks the connection to pause (as a 429 would) while the first worker is replaced,
    # so job 1 is still under way when the new worker is up, however slow its start (CI once saw
    # the remaining old worker finish job 1 first). The pause is lifted once the new one is up.
    budget = Budget(rdb, ERPLimits(calls=200), connection="default", lease_ttl=10)
    company = sim_state.jobs[first].company_id
    budget.pause(company, 120)
    stop_as_deployed(old_a)
    assert rdb.hlen(results_key(first)) < ITEMS, "job 1 ended before the upgrade began"
    new_a = start_worker("consumers", ITEMS_QUEUE, **PACED)
    wait_for(lambda: announced(rdb, 2) == {1, 2}, timeout=30, what="the first new worker")
    left = ITEMS - rdb.hlen(results_key(first))
    assert left > 0
    rdb.delete(budget.key(company, "paused"))

    # Mid-rollout (one old, one new): schema 1, which both read, even if told 2 too early.
    second = sim_state.add_job(JobSpec(items=100, item_statuses={"pending": 1.0}))
    early = with_settings(settings, message_schema=2)
    produce(second, settings=early, app=app)
    assert job_status(rdb, second)["message_schema"] == 1

    stop_as_deployed(old_b)
    start_worker("consumers", ITEMS_QUEUE, **PACED)
    wait_for(
        lambda: (r := readers(rdb)) and len(r) == 2 and all(s == {1, 2} for s in r.values()),
        timeout=30,
        what="the fleet to be all new",
    )
    # The rollout is done: auto still writes the oldest schema all read, until told otherwise.
    assert SchemaChoice(rdb, app).choose() == 1
    third = sim_state.add_job(JobSpec(items=100, item_statuses={"pending": 1.0}))
    produce(third, settings=with_settings(settings, message_schema=2), app=app)
    assert job_status(rdb, third)["message_schema"] == 2

    jobs = (first, second, third)
    wait_for(lambda: all(finished(sim_state, j) for j in jobs), timeout=60, what="every job")
    posted = journal_ids(settings)
    # The simulator's seeded jobs share entry ids, so the journal holds their union, each once.
    every = {i.accounting_entry_id for job_id in jobs for i in sim_state.items(job_id)}
    assert len(posted) == len(set(posted))
    assert set(posted) == every
    for job_id in jobs:
        planned = {i.accounting_entry_id for i in sim_state.items(job_id)}
        updates = sim_state.update_counts(job_id)
        assert set(updates) == planned
        assert set(updates.values()) == {1}
        finals = [e.event for e in sim_state.events(job_id) if e.accepted and e.event != "started"]
        assert finals == ["completed"]
        assert job_status(rdb, job_id)["parked"] == 0
    assert rdb.hlen(DEAD_LETTER_KEY) == 0
    # Schema 2's reason to exist: the new workers timed job 3's messages in the queue.
    # The first new worker took over job 1's schema-1 messages in the middle of it...
    assert f"item_booked job_id={first} " in worker_log(tmp_path, 2)
    # ... and job 3's schema-2 messages were timed in the queue (schema 2's reason to exist).
    logs = worker_log(tmp_path, 2) + worker_log(tmp_path, 3)
    assert re.search(rf"item_booked job_id={third} .* waited=[0-9]+\.[0-9]{{3}}", logs)
    assert new_a.poll() is None
