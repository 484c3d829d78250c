"""The Prometheus metrics both sides count, defined once: names, types, labels, and what counts.

Every name starts ``pleo_export_`` and follows the library's conventions (counters end ``_total``,
durations are ``_seconds``). Labels are closed sets, never ids or host names: a run's outcome, a
layer, Pleo's ``failureReasonType`` (``pleo.models.ITEM_FAILURE_REASON_TYPES``, else ``other``),
a final event's status, a write-back answer, an ERP error's kind. The gauges about active jobs are
computed when scraped (``contract/job_gauges.py``); the endpoints are in
``contract/metrics_endpoint.py`` (workers) and ``producer/webhook.py`` (``GET /metrics``).

Prefork workers count in the library's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set before
the worker starts): each process writes its counters to its own memory-mapped file, and the main
process adds them all up when scraped, the files of SIGKILLed pool processes included.

Counts are made once per page, batch or run where the event has one (published entries: as each
batch of the publish lands), so the per-message cost is one increment (an entry's outcome, an
ERP call).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

LAYERS: Final = ("control", "data")
# The outcome of one producer run: the README's run statuses and the two ways a run stops early.
RUN_OUTCOMES: Final = ("enqueued", "nothing_to_do", "skipped", "locked", "failed", "interrupted")
# Final events as Pleo took them, and "already_finished" when Pleo refused one (job finished).
FINAL_STATUSES: Final = ("completed", "completed_with_errors", "failed", "already_finished")
# One PUT /items answered: "ok" (a 200, perhaps with errors[]), "job_finished" (422), "error".
WRITEBACK_RESULTS: Final = ("ok", "job_finished", "error")
# Why an ERP call did not book: refused for good, unreachable now, or anything else.
ERP_ERROR_KINDS: Final = ("rejected", "unavailable", "unexpected")
# Why a booked entry's receipts were not transferred: Pleo's receipt_* failureReasonTypes.
RECEIPT_REASONS: Final = (
    "receipt_download_failure",
    "receipt_file_size_limit_exceeded",
    "receipt_conversion_failure",
    "receipt_upload_failure",
)

# -- producer ---------------------------------------------------------------------------------

producer_runs = Counter(
    "pleo_export_producer_runs_total", "Producer runs ended, by outcome.", ["outcome"]
)
producer_run_duration = Histogram(
    "pleo_export_producer_run_duration_seconds",
    "Wall time of producer runs that reached an outcome, claim to last message.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
pages_read = Counter("pleo_export_pages_read_total", "Pages read from Pleo, by layer.", ["layer"])
entries_read = Counter(
    "pleo_export_entries_read_total", "Items read from Pleo's pages, by layer.", ["layer"]
)
page_walk_fallbacks = Counter(
    "pleo_export_page_walk_fallbacks_total",
    "Offset walks whose pages did not prove complete, so the layer was read again by cursor.",
    ["layer"],
)
entries_published = Counter(
    "pleo_export_entries_published_total", "Item messages a producer run put on the queue."
)
entries_already_published = Counter(
    "pleo_export_entries_already_published_total",
    "Planned entries a run found published by an earlier run (and did not send again).",
)

# -- ERP workers ------------------------------------------------------------------------------

entries_posted = Counter(
    "pleo_export_entries_posted_total", "Entries booked in the ERP (first outcome only)."
)
entries_failed = Counter(
    "pleo_export_entries_failed_total",
    "Entries recorded failed (first outcome only), by Pleo's failureReasonType.",
    ["failure_reason_type"],
)
entries_reported = Counter(
    "pleo_export_entries_reported_total", "Entry outcomes Pleo accepted in a write-back."
)
writeback_calls = Counter(
    "pleo_export_writeback_calls_total",
    "PUT /v3/export-jobs/{id}/items requests, by result.",
    ["result"],
)
writeback_refusals = Counter(
    "pleo_export_writeback_refusals_total",
    "Item updates Pleo refused inside a 200 (errors[]); they are offered again.",
)
writeback_dropped = Counter(
    "pleo_export_writeback_dropped_total",
    "Item updates given up after PLEO_REPORT_MAX_ATTEMPTS refusals.",
)
final_events = Counter("pleo_export_final_events_total", "Final job events, by status.", ["status"])
messages_republished = Counter(
    "pleo_export_messages_republished_total",
    "Item messages the repair sweep re-sent (lost by the Redis transport).",
)
message_queue_wait = Histogram(
    "pleo_export_message_queue_wait_seconds",
    "How long item messages waited between their write and a worker taking them (schema 2).",
    buckets=(0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
messages_parked = Counter(
    "pleo_export_messages_parked_total",
    "Item messages a worker could not read and parked (contract/dead_letters.py).",
)
erp_calls = Counter("pleo_export_erp_calls_total", "Calls to the ERP adapter's post.")
erp_errors = Counter(
    "pleo_export_erp_errors_total",
    "ERP post calls that booked nothing, by kind (rejected, unavailable, unexpected).",
    ["kind"],
)
erp_rate_limited = Counter(
    "pleo_export_erp_rate_limited_total",
    "ERP calls refused for the ERP's rate or concurrency limit (429); each pauses the connection.",
)
erp_quota_wait = Counter(
    "pleo_export_erp_quota_wait_seconds_total",
    "Seconds ERP workers slept waiting for the shared budget's next call (consumers/budget.py).",
)
receipts_transferred = Counter(
    "pleo_export_receipts_transferred_total",
    "Receipt files the ERP's attach took (a replay of one after a retry counts again).",
)
receipt_bytes = Counter(
    "pleo_export_receipt_bytes_total", "Bytes of the receipt files the ERP's attach took."
)
receipt_failures = Counter(
    "pleo_export_receipt_failures_total",
    "Booked entries whose receipts were not transferred, by receipt_* failureReasonType.",
    ["reason"],
)
receipt_download_seconds = Histogram(
    "pleo_export_receipt_download_seconds",
    "Wall time of each receipt file's download that delivered it (retries and renewals included).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

COUNTERS: Final = (
    producer_runs,
    pages_read,
    entries_read,
    page_walk_fallbacks,
    entries_published,
    entries_already_published,
    entries_posted,
    entries_failed,
    entries_reported,
    writeback_calls,
    writeback_refusals,
    writeback_dropped,
    final_events,
    messages_republished,
    erp_calls,
    erp_errors,
    erp_rate_limited,
    erp_quota_wait,
    receipts_transferred,
    receipt_bytes,
    receipt_failures,
)
HISTOGRAMS: Final = (producer_run_duration, receipt_download_seconds)


def failure_label(reason_type: str | None, known: frozenset[str]) -> str:
    """``reason_type`` if it is one of Pleo's ``known`` values, else ``other``: labels stay few."""
    return reason_type if reason_type in known else "other"


def run_ended(outcome: str, seconds: float | None = None) -> None:
    """Count a producer run's outcome, and its duration when it reached one."""
    producer_runs.labels(outcome).inc()
    if seconds is not None:
        producer_run_duration.observe(seconds)


def _zeroes() -> None:
    """Create every closed-set series at 0, so a rate over it exists before the first event."""
    for outcome in RUN_OUTCOMES:
        producer_runs.labels(outcome)
    for layer in LAYERS:
        pages_read.labels(layer)
        entries_read.labels(layer)
        page_walk_fallbacks.labels(layer)
    for result in WRITEBACK_RESULTS:
        writeback_calls.labels(result)
    for status in FINAL_STATUSES:
        final_events.labels(status)
    for kind in ERP_ERROR_KINDS:
        erp_errors.labels(kind)
    for reason in RECEIPT_REASONS:
        receipt_failures.labels(reason)


_zeroes()


def exposed_names() -> frozenset[str]:
    """Every sample name the counters and histograms above put in a scrape."""
    names: set[str] = set()
    for metric in (*COUNTERS, *HISTOGRAMS):
        for family in metric.describe():
            suffixes = SAMPLE_SUFFIXES[family.type]
            names |= {family.name + suffix for suffix in suffixes}
    return frozenset(names)


# The samples a family of each type is exposed as (``_created`` left out: the multiprocess
# mode does not export it, so no query may rely on it).
SAMPLE_SUFFIXES: Final = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
