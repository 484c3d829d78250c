"""One item message, framework-free: post the entry to the ERP once, record the outcome once.

Exactly-once effect, step by step:
1. a job already finished (final event sent), or that a worker is ending for the ERP
   (``consumers/ending.py``), takes no more work;
2. an entry with a recorded outcome is a redelivery: nothing is posted or reported again
   (1 and 2 are one Redis round trip, ``Reporter.before_post``, which otherwise notes the entry
   in flight until its outcome is recorded, so a job ending waits for its post);
3. a job Pleo finished while we were quiet (expired: no action for its ``expiresIn``) takes no
   more work either, since nothing posted now could be reported (``consumers/expiry.py``);
4. ``post`` is idempotent on ``accounting_entry_id`` (the adapter protocol), so a worker killed
   between posting and recording posts nothing twice when the message runs again;
5. the outcome is recorded with HSETNX: of two concurrent deliveries only one is reported; the
   same round trip forgets an ERP outage and decides who writes back (``Reporter.record_posted``).

Receipts (``consumers/receipts.py``), when on: once the entry is booked, its files are attached,
each once by its key; a receipt that cannot be transferred is the entry's outcome (a
``receipt_*`` failure), and an ERP that cannot take one now retries the message (step 4 again).
An ERP that refuses its credential for an upload (``ERPAuthenticationFailed``) has booked the
entry all the same: its outcome is recorded (``receipt_upload_failure``) before the job ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consumers.erp import (
    Entry,
    EntryRejected,
    ERPAdapter,
    ERPAuthenticationFailed,
    ERPUnavailable,
    ExternalRef,
)
from consumers.item_records import START_WITHIN, Before
from consumers.payloads import PayloadCache
from consumers.posting import validate_entry
from consumers.receipts import Receipts
from consumers.reporting import Reporter
from consumers.results import failure_update, success_update
from contract import metrics
from pleo.final_event import FINAL_EVENTS
from pleo.models import ITEM_FAILURE_REASON_TYPES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What handling one message did: ``status`` and how many results now wait for write-back."""

    status: str  # successful | failed | duplicate | job_finished
    waiting: int = 0
    flush: str = "none"  # who writes back: now | schedule | none (Reporter.request_flush's rule)


def process_item(
    entry: Entry,
    *,
    erp: ERPAdapter,
    reporter: Reporter,
    payloads: PayloadCache,
    report_interval: float,
    attempt: int = 1,
    waited: float | None = None,
    receipts: Receipts | None = None,
    fetched_at: float | None = None,
) -> ItemOutcome:
    """Post ``entry`` to the ERP unless done before, and record its outcome for Pleo.

    ``report_interval``: how overdue a write-back must be for this item to flush (``now``);
    ``attempt`` (1 for a message's first try) is kept with the outcome for the audit manifest;
    ``waited``: how long its message waited in the queue (schema 2), shown in the booking's log;
    ``receipts``: the receipt transfer (None: none), and ``fetched_at`` when the message's export
    item was read from Pleo (epoch seconds, None if unknown), which its file URLs' life runs from.
    """
    job_id, entry_id = entry.job_id, entry.accounting_entry_id
    noted = time.monotonic()
    skipped = _skipped(job_id, entry_id, reporter.before_post(job_id, entry_id))
    if skipped is not None:
        return skipped
    if reporter.finished_in_pleo(job_id):
        log.info("item_skipped_finished_in_pleo job_id=%s entry=%s", job_id, entry_id)
        return ItemOutcome("job_finished")
    if entry.export_item is None:
        entry = dataclasses.replace(entry, export_item=payloads.get(job_id, entry_id))
        fetched_at = None  # read from Redis: when Pleo served it is not known here
    if time.monotonic() - noted > START_WITHIN:
        # Pleo was asked meanwhile: the post's allowance in flight counts from now, and a job
        # that began ending meanwhile takes it no more.
        skipped = _skipped(job_id, entry_id, reporter.before_post(job_id, entry_id))
        if skipped is not None:
            return skipped
    try:
        validate_entry(entry)
        # ``post`` is idempotent by the adapter protocol: it returns the existing ref for an entry
        # the ERP already has, so no separate ``find`` round trip is needed here.
        ref = _post(erp, entry)
        log.info(
            "item_booked job_id=%s entry=%s external_id=%s sequence=%d waited=%s",
            job_id,
            entry_id,
            ref.external_id,
            entry.sequence,
            "-" if waited is None else f"{waited:.3f}",
        )
        refused = None
        if receipts is not None:
            refused = _transfer(
                receipts,
                erp,
                entry,
                ref,
                reporter,
                fetched_at=fetched_at,
                attempt=attempt,
                interval=report_interval,
            )
        if refused is None:
            update = success_update(entry_id, ref.external_id, ref.external_url, ref.exported_at)
        else:
            update = failure_update(entry_id, refused.reason_type, refused.reason)
    except EntryRejected as rejected:
        log.info("item_rejected job_id=%s entry=%s type=%s", job_id, entry_id, rejected.reason_type)
        update = failure_update(entry_id, rejected.reason_type, rejected.reason)
    recorded = reporter.record_posted(job_id, update, attempt=attempt, interval=report_interval)
    if not recorded.waiting:
        return ItemOutcome("duplicate")
    count_outcome(update)
    return ItemOutcome(update["status"], recorded.waiting, recorded.flush)


def _skipped(job_id: str, entry_id: str, before: Before) -> ItemOutcome | None:
    """What a message comes to when its entry is not to be posted (None: post it)."""
    final = before.final_event
    if final in FINAL_EVENTS:
        log.info("item_skipped_job_finished job_id=%s entry=%s final=%s", job_id, entry_id, final)
        return ItemOutcome("job_finished")
    if before.recorded:
        log.info("item_duplicate job_id=%s entry=%s", job_id, entry_id)
        return ItemOutcome("duplicate")
    if before.ending:
        log.info("item_skipped_job_ending job_id=%s entry=%s", job_id, entry_id)
        return ItemOutcome("job_finished")
    return None


def _transfer(
    receipts: Receipts,
    erp: ERPAdapter,
    entry: Entry,
    ref: ExternalRef,
    reporter: Reporter,
    *,
    fetched_at: float | None,
    attempt: int,
    interval: float,
) -> EntryRejected | None:
    """The booked entry's receipts (``Receipts.transfer``), its post kept in flight meanwhile.

    The ERP refusing its credential for an upload ends the job (``ERPAuthenticationFailed``
    goes on), but the entry is booked: its outcome is recorded first, so the job's end reports
    it.
    """
    job_id, entry_id = entry.job_id, entry.accounting_entry_id
    files = receipts.files_to_transfer(erp, entry)
    if files:
        reporter.keep_in_flight(job_id, entry_id, files=files)
    try:
        return receipts.transfer(erp, entry, ref, fetched_at=fetched_at, call=_counted)
    except ERPAuthenticationFailed as refused:
        why = f"The receipts of entry {entry_id} were not transferred: {refused}"
        update = failure_update(entry_id, "receipt_upload_failure", why)
        if reporter.record_posted(job_id, update, attempt=attempt, interval=interval).waiting:
            count_outcome(update)
        raise


def _post(erp: ERPAdapter, entry: Entry) -> ExternalRef:
    """``erp.post``, counted: every call, and each one that booked nothing by why."""
    ref: ExternalRef = _counted(lambda: erp.post(entry))
    return ref


def _counted(call: Callable[[], Any]) -> Any:
    """One ERP call (a post or an attachment upload), counted, and its failures by why."""
    metrics.erp_calls.inc()
    try:
        return call()
    except EntryRejected:
        metrics.erp_errors.labels("rejected").inc()
        raise
    except ERPUnavailable:
        metrics.erp_errors.labels("unavailable").inc()
        raise
    except Exception:
        metrics.erp_errors.labels("unexpected").inc()
        raise


def count_outcome(update: Mapping[str, Any]) -> None:
    """Count an entry's first (and only) outcome."""
    if update["status"] == "successful":
        metrics.entries_posted.inc()
    else:
        reason = metrics.failure_label(update.get("failureReasonType"), ITEM_FAILURE_REASON_TYPES)
        metrics.entries_failed.labels(reason).inc()
