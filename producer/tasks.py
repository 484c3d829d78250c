"""The Celery task ``producer.enqueue_export_job``: thin wiring around ``produce``.

Transient failures (Pleo 5xx/429 past the client's retry budget, Redis or broker down, a lost
lease) retry the whole run later; permanent ones fail the task. A rerun is always safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from contextlib import closing
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_init, worker_shutting_down
from celery.worker import state as worker_state

from contract import log_filters
from contract.celery_app import make_app, retry_when_broker_answers
from contract.errors import (
    BadInput,
    BrokerUnavailable,
    LeaseHeld,
    LeaseLost,
    RunInterrupted,
    TransientUpstreamError,
)
from contract.ids import validate_job_id, validate_uuid
from contract.metrics_endpoint import MetricsStep
from contract.names import POLL_TASK, PRODUCER_TASK
from contract.redis_check import guard_worker_start
from contract.retrying import task_countdown
from contract.settings import Settings
from contract.states import JobState
from contract.supervision import SupervisorStep
from pleo.client import PleoClient, make_http_client
from producer.components import give_up, make_ledger, produce
from producer.interrupt import interruptible
from producer.poll import poll
from producer.runner import Observer
from producer.triggers import EnqueueResult, enqueue

log = logging.getLogger(__name__)

# Configured from the environment when first used, not now (contract/celery_app.py).
app = make_app()
settings = app.settings
# Every worker also supervises the active jobs, one of the fleet at a time (supervision.py).
app.steps["worker"].add(SupervisorStep)
# ... and serves GET /metrics from its main process when PLEO_METRICS_PORT is set.
app.steps["worker"].add(MetricsStep)
# A producer worker takes no task on a Redis that would lose its records (redis_check.py).
guard_worker_start(app, settings)
# No task's raw arguments (export data) in the pool's DEBUG lines (contract/log_filters.py).
worker_init.connect(log_filters.install, weak=False)

# Progress events go out at most this often: Flower shows the latest, a flood helps no one.
PROGRESS_EVERY = 0.5

# Whole-run retries are few and slow: the HTTP client already retried each request.
MAX_RUN_RETRIES = 8


@app.task(
    name=PRODUCER_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RUN_RETRIES,
)
def enqueue_export_job(self: Task, job_id: str, company_id: str | None = None) -> dict[str, Any]:
    """Claim, fetch, plan and publish one export job; returns the run summary."""
    # Checked before anything logs or uses them: an id from the network could forge a log line.
    try:
        job_id = validate_job_id(job_id)
        if company_id is not None:
            company_id = validate_uuid(company_id, "Company id")
    except BadInput as exc:
        log.error("producer_task_rejected task_id=%s reason=%s", self.request.id, exc.message)  # noqa: TRY400 - a refusal, not a crash
        raise
    log.info(
        "producer_task_started job_id=%s company_id=%s task_id=%s",
        job_id,
        company_id,
        self.request.id,
    )
    try:
        observer = progress_events(self, job_id)
        with interruptible((signal.SIGTERM,)):
            summary = produce(
                job_id,
                settings=settings(),
                app=app,
                observer=observer,
                who=f"task {self.request.id}",
            )
        return summary.as_dict()
    except LeaseHeld as exc:
        log.info("producer_task_locked job_id=%s reason=%s", job_id, exc.message)
        return {"job_id": job_id, "status": "locked", "reason": exc.message}
    except RunInterrupted as exc:
        # A warm shutdown (or a SIGTERM to this pool process): the lease is released; the
        # message goes back on the queue for the next worker, at once.
        log.warning("producer_task_handed_back job_id=%s task_id=%s", job_id, self.request.id)
        raise Reject(exc, requeue=True) from exc
    except (TransientUpstreamError, BrokerUnavailable, LeaseLost) as exc:
        if self.request.retries >= MAX_RUN_RETRIES:
            log.error(  # noqa: TRY400 - the sentence is the story
                "producer_task_gave_up job_id=%s error=%s", job_id, exc.message
            )
            give_up(job_id, exc, settings=settings(), app=app)
            raise
        countdown = task_countdown(self.request.retries, settings().run_retry_delay)
        log.warning(
            "producer_task_retry job_id=%s error=%s countdown=%.1f",
            job_id,
            type(exc).__name__,
            countdown,
        )
        _note_retry(job_id, countdown)
        raise retry_when_broker_answers(self, exc, countdown) from exc


def _note_retry(job_id: str, countdown: float) -> None:
    """Tell the supervisor a retry is due, so it does not take the wait for a dead run."""
    ledger = make_ledger(settings())
    with contextlib.suppress(BrokerUnavailable), closing(ledger.client):
        ledger.record(job_id, state=JobState.RETRYING, retry_at=time.time() + countdown)


@worker_shutting_down.connect
def _hand_back_runs(**_: Any) -> None:
    """Warm shutdown: ask each pool process running a producer task to hand its job back now.

    Celery would wait for the whole run (and ``docker stop`` kills it after its grace period,
    leaving the message unacked for the visibility timeout). The pool process's SIGTERM handler,
    set around the run, stops it where it stands (its ``finally`` blocks release the lease and
    record it interrupted); the task then requeues its message.
    """
    for request in list(worker_state.active_requests):
        pid = getattr(request, "worker_pid", None)
        if request.name == PRODUCER_TASK and pid and pid != os.getpid():
            log.warning("producer_run_hand_back job_id=%s pid=%s", request.args[:1], pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@app.task(name=POLL_TASK, acks_late=True)
def poll_export_jobs() -> dict[str, Any]:
    """Enqueue every pending and in_progress job, oldest first (schedule it with Celery beat)."""
    current = settings()
    with make_http_client(current) as http:
        result = poll(current, client=PleoClient(http, current), enqueue_fn=_enqueue_here)
    return dataclasses.asdict(result)


def _enqueue_here(
    job_id: str, /, *, company_id: str | None, settings: Settings, source: str
) -> EnqueueResult:
    # This app is already configured and connected: reuse it for every job of the poll.
    return enqueue(job_id, company_id=company_id, settings=settings, app=app, source=source)


def progress_events(task: Task, job_id: str) -> Observer:
    """An Observer that reports the run as ``task-progress`` events (state PROGRESS in Flower)."""
    last = [0.0]
    seen: dict[str, Any] = {"job_id": job_id}
    lock = threading.Lock()  # both layers' pages are counted from their own threads
    # Read here, on the task's thread: Task.request is thread-local, so Task.send_event from the
    # data layer's thread would send events with no task id.
    task_id, hostname = task.request.id, task.request.hostname

    def send(force: bool = False, **fields: Any) -> None:
        with lock:
            seen.update(fields)
            now = time.monotonic()
            if not force and now - last[0] < PROGRESS_EVERY:
                return
            last[0] = now
            try:
                with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                    dispatcher.send("task-progress", uuid=task_id, retry=False, **seen)
            except Exception:  # monitoring must never break a run
                log.debug("progress_event_failed job_id=%s", job_id, exc_info=True)

    def on_page(layer: str, pages: int, items: int) -> None:
        send(layer=layer, pages=pages, items_seen=items)

    def on_publish(done: int, total: int) -> None:
        send(force=done == total, enqueued=done, planned=total)

    return Observer(on_page=on_page, on_publish=on_publish)
