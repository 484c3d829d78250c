"""An ERP worker never swallows a message it could not process: real workers, real Redis.

A worker whose adapter cannot be built refuses to start; one whose database does not answer yet
waits, consuming nothing; an error the task does not know (here a read-only replica refusing the
INSERT) retries the message (or, on a governed connection, keeps its entry staged) and never
reports the entry failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.keys import ready_items_key, results_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.processes import stop_group
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import ROOT, env_for, wait_for, with_settings
from tests.support.forwarder import Forwarder
from tests.support.local import journal_ids, worker_log
from tests.support.postgres import empty_journal, read_only, via
from tests.support.queues import redis_queue

pytestmark = [pytest.mark.integration, pytest.mark.worker]


def held_task_ids(rdb: redis.Redis) -> set[str]:
    """Task ids of every message the broker still holds: queued, or delivered and not acked."""
    queued = {q.task_id for q in redis_queue(rdb)}
    unacked = {json.loads(raw)[0]["headers"]["id"] for raw in rdb.hvals("unacked")}
    return queued | unacked


def test_worker_with_an_unknown_database_kind_refuses_to_start(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """ERP_DATABASE_URL=garbage://x: exit 2 in one sentence, no traceback, the queue untouched."""
    job_id = sim_state.add_job(JobSpec(items=50, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    before = rdb.lrange(ITEMS_QUEUE, 0, -1)
    started = time.monotonic()
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "consumers", "worker", "-Q", ITEMS_QUEUE, "-c", "1"],
        env=env_for(settings, ERP_DATABASE_URL="garbage://x"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 15
    assert worker.returncode == 2
    lines = [line for line in worker.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        "ERP worker not started: ERP_DATABASE_URL names the database kind 'garbage', which "
        "SQLAlchemy has no dialect for (try sqlite:///path or postgresql://...)."
    )
    assert "Traceback" not in worker.stderr + worker.stdout
    assert " ready." not in worker.stderr + worker.stdout
    assert len(before) == 50
    assert rdb.lrange(ITEMS_QUEUE, 0, -1) == before
    assert rdb.hlen("unacked") == 0


def test_worker_waits_for_its_database_before_taking_a_message(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """PostgreSQL down at start: the worker takes nothing until it answers, then does the job."""
    job_id = sim_state.add_job(JobSpec(items=30, item_statuses={"pending": 1.0}))
    with empty_journal() as pg_url, Forwarder(("127.0.0.1", 5432)) as database:
        produce(job_id, settings=settings, app=make_app(settings))
        before = rdb.lrange(ITEMS_QUEUE, 0, -1)
        down = with_settings(settings, erp_database_url=via(pg_url, database.port))
        worker = start_worker("consumers", ITEMS_QUEUE, settings_=down)
        wait_for(
            lambda: worker_log(tmp_path).count("erp_adapter_waiting") >= 2,
            timeout=20,
            what="the worker to wait for its database twice",
            explain=lambda: worker_log(tmp_path)[-2000:],
        )
        assert worker.poll() is None
        assert " ready." not in worker_log(tmp_path)
        assert rdb.lrange(ITEMS_QUEUE, 0, -1) == before
        assert rdb.hlen("unacked") == 0
        database.restore()
        status = wait_for(
            lambda: sim_state.jobs[job_id].status == "completed",
            timeout=30,
            what="the job to complete once the database answers",
            explain=lambda: worker_log(tmp_path)[-2000:],
        )
        assert status
        assert sorted(journal_ids(with_settings(settings, erp_database_url=pg_url))) == sorted(
            i.accounting_entry_id for i in sim_state.items(job_id)
        )


def test_unexpected_adapter_error_is_retried_never_acked(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """Posting message by message (ERP_BATCH_SIZE=1: nothing governed), a read-only replica
    refuses each INSERT: messages kept, none failed, the worker pauses."""
    job_id = sim_state.add_job(JobSpec(items=10, item_statuses={"pending": 1.0}))
    with empty_journal() as pg_url:
        produce(job_id, settings=settings, app=make_app(settings))
        planned = {q.task_id for q in redis_queue(rdb)}
        replica = with_settings(settings, erp_database_url=read_only(pg_url))
        worker = start_worker("consumers", ITEMS_QUEUE, settings_=replica, ERP_BATCH_SIZE="1")
        wait_for(
            lambda: "erp_adapter_failing error=InternalError consecutive=3" in worker_log(tmp_path),
            timeout=30,
            what="the worker to pause after three failures in a row",
            explain=lambda: worker_log(tmp_path)[-2000:],
        )
        assert "item_retry_unexpected" in worker_log(tmp_path)
        stop_group(worker, grace=15)
        assert worker.returncode is not None
        assert held_task_ids(rdb) == planned
        assert rdb.hlen(results_key(job_id)) == 0
        assert sim_state.update_counts(job_id) == {}
        assert not {i.status for i in sim_state.items(job_id)} & {"successful", "failed"}
        assert journal_ids(with_settings(settings, erp_database_url=pg_url)) == []


def test_unexpected_adapter_error_on_a_governed_connection_keeps_every_entry_staged(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """The SQL journal's batches (a governed connection): each message is acked once its entry
    is staged; the replica refuses each batch, the connection pauses, no entry is failed or lost,
    and a healthy worker later posts them all."""
    job_id = sim_state.add_job(JobSpec(items=10, item_statuses={"pending": 1.0}))
    with empty_journal() as pg_url:
        produce(job_id, settings=settings, app=make_app(settings))
        replica = with_settings(settings, erp_database_url=read_only(pg_url))
        worker = start_worker("consumers", ITEMS_QUEUE, settings_=replica)
        wait_for(
            lambda: (
                worker_log(tmp_path).count("erp_call_failed") >= 3
                and rdb.hlen(ready_items_key(job_id)) == 10
            ),
            timeout=30,
            what="every entry staged, and three failed batches (a poster after each pause)",
            explain=lambda: worker_log(tmp_path)[-2000:],
        )
        stop_group(worker, grace=15)
        assert held_task_ids(rdb) == set()
        assert rdb.hlen(ready_items_key(job_id)) == 10
        assert rdb.hlen(results_key(job_id)) == 0
        assert sim_state.update_counts(job_id) == {}
        healthy = with_settings(settings, erp_database_url=pg_url)
        start_worker("consumers", ITEMS_QUEUE, settings_=healthy)
        wait_for(
            lambda: sim_state.jobs[job_id].status == "completed",
            timeout=30,
            what="the healthy worker to post the staged entries",
            explain=lambda: worker_log(tmp_path, 1)[-2000:],
        )
        assert sorted(journal_ids(healthy)) == sorted(
            i.accounting_entry_id for i in sim_state.items(job_id)
        )
        assert sim_state.update_counts(job_id) == {
            i.accounting_entry_id: 1 for i in sim_state.items(job_id)
        }
