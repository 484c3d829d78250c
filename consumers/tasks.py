"""The ERP worker's Celery tasks: ``consumers.export_item`` and ``consumers.flush_reports``.

The worker also runs the repair sweep's timer (``consumers/watchdog.py``) in its main process,
and takes no message before its ERP adapter is built and answers (``consumers/adapter_check.py``)
and its Redis is one that keeps what it is given (``contract/redis_check.py``).

Thin wiring: each task builds nothing per message (the ERP adapter, Pleo client and Redis
connection are made once per worker process), calls one framework-free function, and maps typed
errors to a retry (Pleo, Redis or the ERP unreachable for now) or a terminal state. Only the ERP's
refusal of an entry (``EntryRejected``, inside ``process_item``) reports it failed: any other error
retries the message, and a process that fails entry after entry pauses (``consumers/breaker.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_init, worker_process_init, worker_ready

from consumers.adapter_check import guard_worker_start
from consumers.budget import governed
from consumers.closing import ClosingStep
from consumers.components import Components
from consumers.ending import end_job
from consumers.erp import Entry, ERPAuthenticationFailed, ERPUnavailable
from consumers.poster import Poster
from consumers.poster_step import Kicker
from consumers.reporting import Reporter
from consumers.schema_step import SchemaAnnouncer
from consumers.watchdog import RepairWatchdog
from consumers.worker import process_item
from contract import log_filters, metrics
from contract.celery_app import erp_worker_config, make_app, retry_when_broker_answers
from contract.dead_letters import park
from contract.errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    PermanentUpstreamError,
    TransientUpstreamError,
    Unprocessable,
)
from contract.message import ItemMessage, MessageRejected
from contract.metrics_endpoint import MetricsStep
from contract.names import ITEM_TASK, ITEMS_QUEUE
from contract.redis_check import guard_worker_start as guard_redis_at_start
from contract.retrying import task_countdown
from contract.supervision import SupervisorStep
from contract.wire import short_repr
from pleo.client import MAX_UPDATE_ITEMS

log = logging.getLogger(__name__)

FLUSH_TASK = "consumers.flush_reports"
T = TypeVar("T")

# Configured from the environment when first used, not now (contract/celery_app.py).
app = make_app(main="consumers", worker_config=erp_worker_config)
settings = app.settings
app.conf.task_routes = {
    ITEM_TASK: {"queue": ITEMS_QUEUE},
    FLUSH_TASK: {"queue": ITEMS_QUEUE},
}
# Every ERP worker also sweeps for messages the Redis transport lost (see consumers/repair.py).
app.steps["worker"].add(RepairWatchdog)
# ... and supervises the active jobs' producer runs, one worker of the fleet at a time.
app.steps["worker"].add(SupervisorStep)
# ... and serves GET /metrics from its main process when PLEO_METRICS_PORT is set.
app.steps["worker"].add(MetricsStep)
# ... and closes finished jobs: their records get the retention expiry (consumers/closing.py).
app.steps["worker"].add(ClosingStep)
# No task's raw arguments (export data) in the pool's DEBUG lines (contract/log_filters.py).
worker_init.connect(log_filters.install, weak=False)
# ... and, while it takes tasks, announces the message schemas it reads, so producers write one it
# can read.
app.steps["consumer"].add(SchemaAnnouncer)

_TRANSIENT = (TransientUpstreamError, BrokerUnavailable)


# This process's parts, built when first used (a pool process builds its own after the fork).
parts: Components = Components(
    settings, write_back=lambda job_id, waiting: _write_back(parts.reporter, job_id, waiting)
)

# Checked in the main process before the pool forks, Redis first: a Redis that would lose our
# records refuses the worker (contract/redis_check.py); the pool's processes build their own ERP.
guard_redis_at_start(app, settings)
guard_worker_start(app, parts.new_erp)


@app.task(
    name=ITEM_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def export_item(self: Task, **kwargs: Any) -> dict[str, Any]:
    """Post one entry to the ERP exactly once and queue its result for Pleo."""
    try:
        message = ItemMessage.parse(kwargs, reads=settings().reads_schemas)
    except MessageRejected as rejected:
        return _park(self, kwargs, rejected)
    waited = message.waited(time.time())
    if waited is not None:
        metrics.message_queue_wait.observe(waited)
    if governed(parts.limits):
        return _stage(self, message)
    entry = Entry.from_message(message)
    job_id = entry.job_id
    try:
        reporter = parts.reporter
        outcome = process_item(
            entry,
            erp=parts.erp,
            reporter=reporter,
            payloads=parts.payloads,
            report_interval=settings().report_interval,
            attempt=self.request.retries + 1,
            waited=waited,
            receipts=parts.receipts,
            # Written just after the producer read its export item: the file URLs' clock.
            fetched_at=None if waited is None else time.time() - waited,
        )
    except ERPAuthenticationFailed as refused:
        return _erp_refused(job_id, entry.accounting_entry_id, refused)
    except ERPUnavailable as down:
        parts.breaker.failed(down)
        entry_id = entry.accounting_entry_id
        _quietly(lambda: parts.ending.release(job_id, entry_id), None)
        return _erp_down(self, job_id, entry_id, down)
    except Unprocessable:
        # Pleo answers 422 to reads and writes of a job it finished (expired, say): no ERP call
        # can help any more; the job is recorded as finished by Pleo and its messages skipped.
        parts.reporter.finished_elsewhere(job_id)
        return {"job_id": job_id, "entry": entry.accounting_entry_id, "status": "job_finished"}
    except _TRANSIENT as exc:
        countdown = task_countdown(self.request.retries, settings().erp_retry_delay)
        log.warning(
            "item_retry job_id=%s entry=%s error=%s countdown=%.1f",
            job_id,
            entry.accounting_entry_id,
            type(exc).__name__,
            countdown,
        )
        raise retry_item(self, exc, countdown) from exc
    except Exception as exc:
        # A bug, a driver or a grant gone wrong is the worker's failure, not the entry's: keep the
        # message (a retry, never an ack into nothing) and never report the entry failed for it.
        parts.breaker.failed(exc)
        countdown = task_countdown(self.request.retries, settings().erp_retry_delay)
        log.warning(
            "item_retry_unexpected job_id=%s entry=%s error=%s countdown=%.1f",
            job_id,
            entry.accounting_entry_id,
            type(exc).__name__,
            countdown,
            exc_info=True,
        )
        raise retry_item(self, exc, countdown) from exc
    if outcome.status == "successful":
        parts.breaker.succeeded()
    if outcome.waiting:
        # The item's own round trip decided who writes back (consumers/item_records.py).
        _act_on(outcome.flush, job_id)
    return {"job_id": job_id, "entry": entry.accounting_entry_id, "status": outcome.status}


def _stage(task: Task, message: ItemMessage) -> dict[str, Any]:
    """A governed connection: stage the entry (the message is then done with), then post.

    The message is acked once its entry is staged (``consumers/ready.py``), whatever the ERP's
    budget says; posting is the slot holders' work (``consumers/poster.py``), and this process
    starts its idle posters in the background. Nothing that goes wrong while posting retries the
    message: its entry is staged, and a poster (this process's, another's, or one the kick thread
    sends) posts it.
    """
    job_id, entry_id = message.job_id, message.accounting_entry_id
    try:
        staged = parts.ready.stage(message)
    except BrokerUnavailable as exc:
        countdown = task_countdown(task.request.retries, settings().erp_retry_delay)
        log.warning("stage_retry job_id=%s entry=%s countdown=%.1f", job_id, entry_id, countdown)
        raise retry_item(task, exc, countdown) from exc
    if staged.status < 0:
        log.info("item_skipped_job_finished job_id=%s entry=%s", job_id, entry_id)
        return {"job_id": job_id, "entry": entry_id, "status": "job_finished"}
    # One entry staged at a time would post batches of one: wait for a batch's worth, or the
    # job's last message (the kick thread posts what a lost message leaves short of a batch).
    due = staged.worth_posting(parts.limits.batch_size, message.total)
    posters = _post_staged(message.company_id) if due else 0
    status = "staged" if staged.status else "duplicate"
    return {"job_id": job_id, "entry": entry_id, "status": status, "posters_started": posters}


def _post_staged(company_id: str | None) -> int:
    """Start this process's idle posters on ``company_id``'s staged entries, in the background.

    The task returns at once, so its message is acked and the next one staged while the posters
    post: staging runs ahead of posting even in a single worker process, and batches fill. A
    poster already at work is not started twice; one that finds nothing to claim stops. Returns
    how many posters were started.
    """
    started = 0
    for n, (poster, busy) in enumerate(parts.posters):
        if busy.acquire(blocking=False):
            # A daemon: a pool process that exits (warm shutdown, max tasks) does not wait for
            # it; what it had claimed goes back with its slot (consumers/ready.py).
            threading.Thread(
                target=_drain, args=(poster, busy, company_id), name=f"poster-{n}", daemon=True
            ).start()
            started += 1
    return started


def _drain(poster: Poster, busy: threading.Lock, company_id: str | None) -> int:
    """One poster's drain; trouble is logged, the entries stay staged (the kick thread goes on)."""
    try:
        return poster.drain(company_id)
    except _TRANSIENT as exc:
        log.warning("poster_stopped company=%s error=%s", company_id or "-", type(exc).__name__)
    except Exception:
        log.exception("poster_crashed company=%s", company_id or "-")
    finally:
        busy.release()
    return 0


_kicker_started: set[int] = set()


@worker_process_init.connect(weak=False)
def _start_kicker(**_: Any) -> None:
    """Each process that runs tasks on a governed connection runs one kick thread
    (consumers/poster_step.py): each prefork pool process, or the solo pool's worker itself."""
    if os.getpid() in _kicker_started:
        return
    try:
        if governed(parts.limits):
            Kicker(parts.ready, parts.budget, _post_staged).start()
            _kicker_started.add(os.getpid())
    except Exception:
        # The adapter or Redis not there yet: the first message's posters start this process's
        # posting anyway, and the other processes' kick threads look for what is left.
        log.exception("poster_kick_not_started")


@worker_ready.connect(weak=False)
def _start_kicker_in_main_process(sender: Any = None, **_: Any) -> None:
    """The threads pool runs its tasks in the worker's own process and sends no
    ``worker_process_init``: its kick thread starts once the worker is ready (the solo pool's
    has started already)."""
    if not isinstance(getattr(sender, "pool", None), PreforkPool):
        _start_kicker()


def retry_item(task: Task, exc: Exception, countdown: float) -> Exception:
    """Retry the item message with its short reprs (``contract.wire.short_repr``).

    Celery builds a retried message's ``kwargsrepr`` from the kwargs themselves (1 KB of them),
    which would carry the export item's first fields into its headers, task events (Flower) and
    every log line that shows them.
    """
    return retry_when_broker_answers(task, exc, countdown, **_reprs(task))


def _reprs(task: Task) -> dict[str, str]:
    return {"argsrepr": "()", "kwargsrepr": short_repr(task.request.kwargs or {})}


def _park(task: Task, kwargs: dict[str, Any], rejected: MessageRejected) -> dict[str, Any]:
    """Keep a message this worker cannot read (contract/dead_letters.py), then ack it.

    Never acked before it is parked: with Redis unreachable the message is retried instead.
    """
    worker = task.request.hostname or "unknown"
    try:
        new = park(
            parts.redis,
            kwargs,
            reason=str(rejected),
            task_id=task.request.id,
            worker=worker,
            ttl=settings().dedup_ttl,
        )
    except BrokerUnavailable as exc:
        countdown = task_countdown(task.request.retries, settings().erp_retry_delay)
        log.warning("park_retry task_id=%s countdown=%.1f", task.request.id, countdown)
        raise retry_item(task, exc, countdown) from exc
    if new:
        metrics.messages_parked.inc()
    # The reason names the schema or the field, never a payload's value (contract/message.py).
    log.error("message_parked task_id=%s worker=%s reason=%s", task.request.id, worker, rejected)
    return {"status": "parked", "reason": str(rejected)}


def _write_back(reporter: Reporter, job_id: str, waiting: int) -> None:
    """Flush here when a full batch waits or the last request is overdue, else schedule one."""
    decision = (
        "now"
        if waiting >= MAX_UPDATE_ITEMS
        else reporter.request_flush(job_id, settings().report_interval)
    )
    _act_on(decision, job_id)


def _act_on(decision: str, job_id: str) -> None:
    """``schedule`` a delayed flush task, flush ``now`` here, or nothing (``none``)."""
    if decision == "schedule":
        flush_reports.apply_async(args=[job_id], countdown=settings().report_interval)
    elif decision == "now":
        try:
            _flush(job_id)
        except (*_TRANSIENT, AuthenticationFailed) as exc:
            # The outcome is safely recorded; the write-back is retried by its own task (which
            # waits for new credentials, backing off, when Pleo refuses ours).
            log.warning("inline_flush_failed job_id=%s error=%s", job_id, type(exc).__name__)
            flush_reports.apply_async(args=[job_id], countdown=settings().report_interval)


@app.task(name=FLUSH_TASK, bind=True, acks_late=True, max_retries=None)
def flush_reports(self: Task, job_id: str) -> dict[str, Any]:
    """Write a job's waiting results back to Pleo and complete the job when all are in."""
    try:
        parts.reporter.scheduled_flush_started(job_id)
        return _flush(job_id)
    except _TRANSIENT as exc:
        countdown = task_countdown(self.request.retries, settings().report_interval)
        log.warning(
            "flush_retry job_id=%s error=%s countdown=%.1f", job_id, type(exc).__name__, countdown
        )
        raise retry_when_broker_answers(self, exc, countdown) from exc
    except AuthenticationFailed as exc:
        # Pleo refuses our credentials (a refused OAuth refresh): the results stay in the outbox
        # and the flush waits, backing off, for 'pleo-export auth login' to store new ones; Pleo
        # expiring the job meanwhile ends it (a 422 on the next flush).
        countdown = task_countdown(self.request.retries, settings().report_interval)
        log.error(  # noqa: TRY400 - the sentence is the story
            "flush_waiting_for_credentials job_id=%s countdown=%.1f error=%s waiting=%d action=%s",
            job_id,
            countdown,
            exc.message,
            _quietly(lambda: parts.reporter.pending(job_id), -1),
            "'pleo-export auth login' (or a valid PLEO_API_TOKEN) lets the results go",
        )
        refusal = exc.message
        _quietly(lambda: parts.reporter.credentials_refused(job_id, refusal), None)
        raise retry_when_broker_answers(self, exc, countdown) from exc
    except PermanentUpstreamError as exc:
        log.error(  # noqa: TRY400 - re-raised just below, Celery records the traceback
            "flush_failed job_id=%s error=%s", job_id, exc.message
        )
        raise


def _quietly(fn: Callable[[], T], otherwise: T) -> T:
    """``fn()``, or ``otherwise`` when Redis cannot be reached (a note, not the work itself)."""
    try:
        return fn()
    except BrokerUnavailable:
        return otherwise


def _flush(job_id: str) -> dict[str, Any]:
    reporter = parts.reporter
    result = reporter.flush(job_id)
    final = None if result.locked else reporter.maybe_complete(job_id)
    waiting = reporter.pending(job_id)
    if waiting and reporter.request_flush(job_id, settings().report_interval) == "schedule":
        # Left over: refused items, or results recorded while another worker was flushing.
        flush_reports.apply_async(args=[job_id], countdown=settings().report_interval)
    return {
        "job_id": job_id,
        "sent": result.sent,
        "accepted": result.accepted,
        "refused": result.refused,
        "locked": result.locked,
        "final_event": final,
    }


def _erp_down(task: Task, job_id: str, entry_id: str, down: ERPUnavailable) -> dict[str, Any]:
    reporter = parts.reporter
    outage = reporter.erp_down_for(job_id)
    if outage < settings().erp_unreachable_limit:
        countdown = task_countdown(task.request.retries, settings().erp_retry_delay)
        log.warning("erp_unreachable job_id=%s for=%.0fs countdown=%.1f", job_id, outage, countdown)
        raise task.retry(exc=down, countdown=countdown, **_reprs(task)) from down
    reason = f"The accounting system could not be reached for {outage:.0f} seconds."
    log.error("erp_unreachable_giving_up job_id=%s for=%.0fs", job_id, outage)
    end_job(
        reporter,
        parts.ending,
        job_id,
        entry_id,
        reason=reason,
        reason_type="accounting_system_unreachable",
    )
    return {"job_id": job_id, "status": "job_failed", "reason": reason}


def _erp_refused(job_id: str, entry_id: str, refused: ERPAuthenticationFailed) -> dict[str, Any]:
    """The ERP's credentials are refused for good: write back what was booked, then fail the job.

    No post starts once the job is ending, the posts other workers have in flight are waited
    for, and every recorded outcome goes to Pleo before the final event (``consumers/ending.py``),
    so nothing the ERP booked is stranded by it.
    """
    log.error("erp_credentials_refused job_id=%s", job_id)
    reason = str(refused)
    end_job(
        parts.reporter,
        parts.ending,
        job_id,
        entry_id,
        reason=reason,
        reason_type="accounting_system_authentication_failure",
    )
    return {"job_id": job_id, "status": "job_failed", "reason": reason}
