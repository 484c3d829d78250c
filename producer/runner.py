"""One producer run: claim the job, read every page of both layers, plan, publish.

The run is framework-free: the Celery task and the CLI both call ``run_job`` with a client, a
ledger and a publisher, and map its typed errors to retries or exit codes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from contract import metrics
from contract.errors import (
    ContractViolation,
    LeaseHeld,
    PermanentUpstreamError,
    PleoExportError,
    Unprocessable,
)
from contract.ids import validate_job_id
from contract.lease import Lease
from contract.ledger import Ledger
from contract.settings import Settings
from contract.states import JobState
from contract.store import now_iso
from pleo.activity import PleoActivity
from pleo.client import PleoClient
from pleo.final_event import failure_reason_type, record_final, send_final
from pleo.models import TERMINAL_JOB_STATUSES, ExportJob, Page
from producer.plan import ControlLayer, Plan, plan_job
from producer.publish import Publisher
from producer.spool import PayloadSpool

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunSummary:
    """What a run did; ``status`` is one of the values documented in the README."""

    job_id: str
    status: str = "running"
    job_status: str | None = None
    company_id: str | None = None
    recovery: bool = False
    pages: int = 0
    items_seen: int = 0
    planned: int = 0
    enqueued: int = 0
    already_enqueued: int = 0
    duplicates: int = 0
    not_actionable: int = 0
    missing_export_items: int = 0
    fence: int | None = None
    seconds: float = 0.0
    fetch_seconds: float = 0.0
    publish_seconds: float = 0.0
    # Bytes the data layer's dates and payloads took in the run's spool file.
    spool_bytes: int = 0
    reason: str | None = None
    # How the layers were read: "cursor" (PLEO_PAGE_CONCURRENCY=1) or "offset"; each offset walk
    # that fell back to the cursor walk adds "<layer>: <why>".
    paging: str = "cursor"
    paging_fallbacks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Observer:
    """Callbacks for live progress (the CLI draws bars with them); all optional."""

    on_page: Callable[[str, int, int], None] | None = None
    # (layer, items read so far, the layer's total as Pleo's pages give it, or None)
    on_layer: Callable[[str, int, int | None], None] | None = None
    on_publish: Callable[[int, int], None] | None = None


def run_job(
    job_id: str,
    *,
    settings: Settings,
    client: PleoClient,
    ledger: Ledger,
    publisher: Publisher,
    activity: PleoActivity,
    observer: Observer | None = None,
    clock: Callable[[], float] = time.monotonic,
    who: str = "pleo-export run",
) -> RunSummary:
    """Claim, fetch, plan and publish one export job; safe to run again at any time.

    ``who`` names this run in its lease (``locked`` answers and ``status`` show it). A run that
    fails for good after the claim sends Pleo the ``failed`` event; one stopped by a transient
    failure or a signal is recorded ``interrupted``, for a retry or the supervisor to resume.

    ``activity`` records when the claim moved the job, for the workers' expiry check.
    """
    job_id = validate_job_id(job_id)
    observer = observer or Observer()
    started = clock()
    summary = RunSummary(job_id=job_id)
    claimed = False
    try:
        with ledger.held(job_id, wait=settings.lease_wait, who=who) as lease:
            claimed = True
            summary.fence = lease.fence
            holder = lease.holder
            ledger.start_run(job_id, lease.fence, holder=holder.describe() if holder else who)
            try:
                _run(
                    job_id,
                    lease=lease,
                    summary=summary,
                    settings=settings,
                    client=client,
                    ledger=ledger,
                    publisher=publisher,
                    activity=activity,
                    observer=observer,
                    clock=clock,
                )
            except (PermanentUpstreamError, ContractViolation) as exc:
                metrics.run_ended("failed")
                ledger.record(
                    job_id, state=JobState.FAILED, error=exc.message, finished_at=now_iso()
                )
                if summary.job_status == "in_progress":
                    fail_job(ledger, client, job_id, exc, activity=activity)
                raise
            except PleoExportError as exc:
                # Transient, or a signal: the job stays claimed, and is resumed (see module docs).
                metrics.run_ended("interrupted")
                ledger.record(
                    job_id, state=JobState.INTERRUPTED, error=exc.message, interrupted_at=now_iso()
                )
                raise
            summary.seconds = round(clock() - started, 3)
            ledger.record(
                job_id, state=summary.status, finished_at=now_iso(), seconds=summary.seconds
            )
    except LeaseHeld:
        # Another live run holds the job: this one ends "locked" (a LeaseHeld from inside the
        # run was counted above).
        if not claimed:
            metrics.run_ended("locked")
        raise
    metrics.run_ended(summary.status, summary.seconds)
    log.info(
        "run_finished job_id=%s status=%s planned=%d enqueued=%d already=%d seconds=%.3f",
        job_id,
        summary.status,
        summary.planned,
        summary.enqueued,
        summary.already_enqueued,
        summary.seconds,
    )
    return summary


def fail_job(
    ledger: Ledger,
    client: PleoClient,
    job_id: str,
    exc: PleoExportError,
    *,
    activity: PleoActivity | None = None,
) -> None:
    """Tell Pleo the job failed for good (once), with the reason type matching ``exc``."""
    reason_type = failure_reason_type(exc)
    if reason_type is None:
        record_final(ledger.client, job_id, "already_finished", ttl_ms=ledger.ttl_ms)
        return
    try:
        send_final(
            ledger.client,
            client,
            job_id,
            "failed",
            ttl_ms=ledger.ttl_ms,
            failure_reason=exc.message,
            failure_reason_type=reason_type,
            activity=activity,
        )
    except PleoExportError as unsent:
        # Pleo cannot be told now (the same credentials may be what failed): say so and leave it.
        log.error(  # noqa: TRY400 - the sentence is the story
            "final_event_unsent job_id=%s reason_type=%s error=%s action=%s",
            job_id,
            reason_type,
            unsent.message,
            "the job stays in_progress in Pleo until 'pleo-export auth login' and a new run "
            "(pleo-export enqueue), or until Pleo expires it",
        )
        # Shown by 'pleo-export status' (producer/status.py).
        ledger.record(job_id, final_event_unsent=unsent.message)


def _run(
    job_id: str,
    *,
    lease: Lease,
    summary: RunSummary,
    settings: Settings,
    client: PleoClient,
    ledger: Ledger,
    publisher: Publisher,
    activity: PleoActivity,
    observer: Observer,
    clock: Callable[[], float],
) -> None:
    job = claim(client, job_id)
    summary.job_status = job.status
    summary.company_id = job.company_id
    ledger.record(
        job_id,
        job_status=job.status,
        company_id=job.company_id,
        expires_in=job.job.expires_in,
    )
    if job.started_at is not None:
        activity.touch(job_id, job.started_at)
    if job.status in TERMINAL_JOB_STATUSES:
        summary.status = JobState.SKIPPED
        summary.reason = f"the job is already {job.status}"
        log.info("job_skipped job_id=%s status=%s", job_id, job.status)
        return
    summary.recovery = job.recovered
    ledger.record(job_id, state=JobState.FETCHING, recovery=int(job.recovered))

    with PayloadSpool() as spool:
        fetching = clock()
        pages = _PageCounter(job_id, summary, ledger, observer)
        job_items = _fetch_layers(client, job_id, settings, pages, spool)
        summary.fetch_seconds = round(clock() - fetching, 3)
        summary.spool_bytes = spool.size
        spooled = spool if settings.ordering == "booked_at" else None
        plan = plan_job(job_items, spooled, ordering=settings.ordering)
        del job_items
        _record_plan(summary, plan)
        ledger.record(
            job_id,
            state=JobState.PUBLISHING,
            planned=plan.total,
            total=plan.total,
            items_seen=plan.items_seen,
        )
        if not plan.items:
            summary.status = JobState.NOTHING_TO_DO
            summary.reason = "no pending or in_progress items"
            return
        publishing = clock()
        result = publisher.publish(
            lease,
            job.company_id,
            plan.items,
            on_progress=observer.on_publish,
        )
        summary.publish_seconds = round(clock() - publishing, 3)
    summary.enqueued = result.enqueued
    summary.already_enqueued = result.already_enqueued
    summary.status = JobState.ENQUEUED


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """The job as claimed, and whether this run is a recovery of an earlier one.

    ``started_at`` is set when this claim's ``started`` event was accepted: the epoch seconds
    read just before it was sent (Pleo's ``expiresIn`` counts from about then).
    """

    job: ExportJob
    recovered: bool
    started_at: float | None = None

    @property
    def status(self) -> str:
        """The job's status after the claim."""
        return self.job.status

    @property
    def company_id(self) -> str:
        """The job's company."""
        return self.job.company_id


def claim(client: PleoClient, job_id: str, *, clock: Callable[[], float] = time.time) -> ClaimedJob:
    """Move a pending job to in_progress; in_progress means recovery; terminal means nothing to do.

    A 422 on ``started`` means someone else moved the job: it is read once more and decided again.
    """
    job = client.get_job(job_id)
    if job.status != "pending":
        return ClaimedJob(job, recovered=job.status == "in_progress")
    asked_at = clock()
    try:
        client.post_job_event(job_id, "started")
    except Unprocessable:
        job = client.get_job(job_id)
        log.info("claim_conflict job_id=%s status_now=%s", job_id, job.status)
        if job.status == "pending":
            raise
        return ClaimedJob(job, recovered=job.status == "in_progress")
    log.info("job_claimed job_id=%s", job_id)
    return ClaimedJob(client.get_job(job_id), recovered=False, started_at=asked_at)


def _fetch_layers(
    client: PleoClient,
    job_id: str,
    settings: Settings,
    pages: _PageCounter,
    spool: PayloadSpool,
) -> ControlLayer:
    """Read every page of the control layer and, alongside it, of the data layer into ``spool``.

    Both layers may be read once the job is in progress, so the data layer is walked on a second
    thread over the same keep-alive client (httpx.Client is thread-safe). A failure on either side
    stops the other at its next page and is raised here: nothing is planned from a partial read.

    With ``PLEO_PAGE_CONCURRENCY`` above 1 each layer is read by offset, that many pages at a
    time (``pleo.offset_walk``); a layer whose pages do not prove complete is forgotten (its items,
    its spooled payloads, its count) and read again by the cursor walk. The plan sorts what it is
    given, so the order the pages came in never shows in what is published.
    """
    stop = threading.Event()
    items = ControlLayer()
    concurrency = settings.page_concurrency
    pages.paging("offset" if concurrency > 1 else "cursor")

    def restart_control(reason: str) -> None:
        items.clear()
        pages.restart("control", reason)

    def read_control_layer() -> None:
        walk = client.iter_job_items(job_id, concurrency=concurrency, on_restart=restart_control)
        for page in _until(stop, walk):
            items.extend(page.items)
            pages.seen("control", len(page.items), page.info.total)

    if settings.ordering != "booked_at":
        read_control_layer()
        return items

    def read_data_layer(spooler: ThreadPoolExecutor) -> None:
        # Encoding a page into the spool overlaps the wait for the next page; at most one page
        # waits to be spooled, so memory holds two pages at most (plus the offset walk's window).
        spooling: Future[None] | None = None

        def restart_data(reason: str) -> None:
            nonlocal spooling
            if spooling is not None:
                spooling.result()
                spooling = None
            spool.clear()
            pages.restart("data", reason)

        walk = client.iter_export_items(job_id, concurrency=concurrency, on_restart=restart_data)
        try:
            for page in _until(stop, walk):
                if spooling is not None:
                    spooling.result()
                spooling = spooler.submit(spool.add, page.items)
                pages.seen("data", len(page.items), page.info.total)
            if spooling is not None:
                spooling.result()
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="data-layer") as pool:
        data_layer = pool.submit(read_data_layer, pool)
        try:
            read_control_layer()
        except BaseException:
            stop.set()
            raise
        data_layer.result()
    return items


def _until(stop: threading.Event, pages: Iterator[Page[T]]) -> Iterator[Page[T]]:
    """The pages, until the other layer's reader has failed."""
    for page in pages:
        if stop.is_set():
            return
        yield page


class _PageCounter:
    """Counts pages of both layers (from two threads) into the summary, the ledger and the bars."""

    def __init__(
        self, job_id: str, summary: RunSummary, ledger: Ledger, observer: Observer
    ) -> None:
        self._job_id = job_id
        self._summary = summary
        self._ledger = ledger
        self._observer = observer
        self._lock = threading.Lock()
        self._items = {"control": 0, "data": 0}

    def paging(self, how: str) -> None:
        """Record how the layers are read (``cursor`` or ``offset``)."""
        self._summary.paging = how

    def restart(self, layer: str, reason: str) -> None:
        """``layer``'s offset walk fell back: its items so far no longer count.

        The one time a layer's count goes back (to 0): the layer is read again from its start.
        """
        with self._lock:
            self._items[layer] = 0
            if layer == "control":
                self._summary.items_seen = 0
            self._summary.paging_fallbacks.append(f"{layer}: {reason}")
            metrics.page_walk_fallbacks.labels(layer).inc()

    def seen(self, layer: str, count: int, total: int | None) -> None:
        """One more page of ``layer`` with ``count`` items, of ``total`` if Pleo says."""
        # Reported under the lock too, so no reader ever sees the count go backwards.
        with self._lock:
            self._items[layer] += count
            self._summary.pages += 1
            metrics.pages_read.labels(layer).inc()
            metrics.entries_read.labels(layer).inc(count)
            if layer == "control":
                self._summary.items_seen = self._items["control"]
            self._ledger.record(
                self._job_id, pages=self._summary.pages, items_seen=self._items["control"]
            )
            if self._observer.on_page is not None:
                self._observer.on_page(layer, self._summary.pages, self._items[layer])
            if self._observer.on_layer is not None:
                self._observer.on_layer(layer, self._items[layer], total)


def _record_plan(summary: RunSummary, plan: Plan) -> None:
    summary.items_seen = plan.items_seen
    summary.planned = plan.total
    summary.duplicates = plan.duplicates
    summary.not_actionable = plan.not_actionable
    summary.missing_export_items = plan.missing_export_items
