"""The producer as a Celery task, run by a real `celery -A producer worker`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.keys import progress_key
from contract.names import POLL_TASK, PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.triggers import enqueue
from tests.conftest import wait_for, with_settings
from tests.support.local import worker_log
from tests.support.queues import redis_queue

pytestmark = [pytest.mark.integration, pytest.mark.worker]
Cli = Callable[..., CompletedProcess[str]]


def finished_state(rdb: redis.Redis, job_id: str) -> str | None:
    state = rdb.hget(progress_key(job_id), "state")
    if state in {b"enqueued", b"nothing_to_do", b"skipped"}:
        return state.decode()
    return None


def task_failure_logged(log: str) -> str | None:
    """The worker's log once it records a producer task as failed (Celery's ERROR line)."""
    failed = any(
        f"Task {PRODUCER_TASK}[" in line and "] raised unexpected:" in line
        for line in log.splitlines()
    )
    return log if failed else None


def test_enqueued_job_is_produced_by_a_worker(
    cli: Cli, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """`pleo-export enqueue` plus a producer worker queue every entry once, in order."""
    job_id = sim_state.add_job(JobSpec(items=250, item_statuses={"pending": 1.0}))
    start_worker("producer", PRODUCER_QUEUE)
    assert cli("enqueue", job_id).returncode == 0
    wait_for(lambda: finished_state(rdb, job_id), timeout=60, what="the producer task to finish")
    queued = redis_queue(rdb)
    assert [q.kwargs["sequence"] for q in queued] == list(range(250))
    assert len({q.kwargs["accounting_entry_id"] for q in queued}) == 250
    assert rdb.llen(PRODUCER_QUEUE) == 0


def test_transient_failure_past_the_budget_is_retried_by_celery(
    cli: Cli, settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """503s that outlast the client's retries fail the run; Celery retries it and it completes."""
    job_id = sim_state.add_job(JobSpec(items=50, item_statuses={"pending": 1.0}))
    # Three attempts per request: four 503s fail the first run and the second run recovers.
    sim_state.add_fault(FaultRule(endpoint="job", kind="status", status=503, times=4))
    quick = with_settings(settings, retry_attempts=3)
    start_worker("producer", PRODUCER_QUEUE, settings_=quick)
    assert cli("enqueue", job_id, settings_=quick).returncode == 0
    wait_for(lambda: finished_state(rdb, job_id), timeout=60, what="the retried task to finish")
    progress = {k.decode(): v.decode() for k, v in rdb.hgetall(progress_key(job_id)).items()}
    assert progress["runs"] == "2"
    assert progress["enqueued"] == "50"
    assert len([c for c in sim_state.calls if c.status == 503]) == 4
    assert len(redis_queue(rdb)) == 50


def test_permanent_failure_is_not_retried(
    cli: Cli, cli_in_process: Any, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """A job Pleo does not know fails the task once; the progress record says why."""
    job_id = "5d6b1f0e-8c2a-4e7b-9f3d-2a1c0b9e8d7f"
    start_worker("producer", PRODUCER_QUEUE)
    assert cli("enqueue", job_id).returncode == 0
    failed = wait_for(
        lambda: rdb.hget(progress_key(job_id), "state") == b"failed",
        timeout=60,
        what="the task to fail",
    )
    assert failed
    # A task decides on a retry before it ends, and Celery logs either that retry or the task's
    # failure: once the failure is logged, no retry of this run can come.
    log = wait_for(
        lambda: task_failure_logged(worker_log(tmp_path)),
        timeout=30,
        what="the worker to log the task's failure",
        explain=lambda: worker_log(tmp_path)[-2000:],
    )
    assert " retry: " not in log
    assert "producer_task_retry" not in log
    shown = cli_in_process("status", job_id, "--json")
    progress = json.loads(shown.stdout)
    assert progress["runs"] == 1
    assert "404" in progress["error"]


def test_beat_poll_task_enqueues_and_produces_open_jobs(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """`producer.poll_export_jobs` (what Celery beat would send) gets a pending job produced."""
    job_id = sim_state.add_job(JobSpec(items=40, item_statuses={"pending": 1.0}))
    start_worker("producer", PRODUCER_QUEUE)
    make_app(settings).send_task(POLL_TASK, queue=PRODUCER_QUEUE)
    wait_for(lambda: finished_state(rdb, job_id), timeout=60, what="the polled job to be produced")
    assert len(redis_queue(rdb)) == 40


def test_progress_events_reach_monitors(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """The producer task sends task-progress events (Flower's PROGRESS state) with its counts."""
    job_id = sim_state.add_job(JobSpec(items=300, item_statuses={"pending": 1.0}))
    app = make_app(settings)
    progress: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(
            conn, handlers={"task-progress": progress.append, "*": lambda _event: None}
        )
        listener = threading.Thread(
            target=receiver.capture, kwargs={"limit": None, "timeout": 60}, daemon=True
        )
        listener.start()
        time.sleep(0.5)  # subscribed before the worker starts
        start_worker("producer", PRODUCER_QUEUE)
        result = enqueue(job_id, settings=settings)
        try:
            wait_for(lambda: finished_state(rdb, job_id), timeout=60, what="the run")
            last = wait_for(
                lambda: [e for e in progress if e.get("enqueued") == 300],
                timeout=10,
                what="the final progress event",
            )[-1]
        finally:
            receiver.should_stop = True
            listener.join(timeout=10)
    assert last["uuid"] == result.task_id
    assert (last["job_id"], last["planned"], last["pages"]) == (job_id, 300, 6)
    assert all(e["uuid"] == result.task_id for e in progress)
