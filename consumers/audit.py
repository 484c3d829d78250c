"""The job's audit manifest, built from what Redis recorded and written where it outlives Redis.

``write_manifest`` runs after the final event and before retention removes the job's records: it
reads them in one round trip (``JobRecords.read``), builds the manifest purely
(``build_manifest``) and stores it in the sink ``PLEO_AUDIT_SINK`` chooses, replacing any earlier
copy, so running it again stores the same manifest once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from consumers.audit_sinks import open_sink
from contract.ids import validate_job_id
from contract.keys import (
    attempts_key,
    items_key,
    placed_key,
    progress_key,
    reported_key,
    results_key,
)
from contract.manifest import (
    NO_OUTCOME,
    JobNotFinished,
    Manifest,
    ManifestEntry,
    ManifestHeader,
    RecordsIncomplete,
)
from contract.settings import Settings
from contract.store import redis_call

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobRecords:
    """What Redis holds of one job that its manifest is made from, decoded."""

    job_id: str
    placed: Mapping[str, str]
    results: Mapping[str, str]
    attempts: Mapping[str, str]
    reported: frozenset[str]
    items: Mapping[str, str]
    progress: Mapping[str, str]

    @classmethod
    def read(cls, client: redis.Redis, job_id: str) -> JobRecords:
        """The job's records, read in one round trip (BrokerUnavailable if Redis is not there)."""

        def read() -> list[Any]:
            with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(placed_key(job_id))
                pipe.hgetall(results_key(job_id))
                pipe.hgetall(attempts_key(job_id))
                pipe.smembers(reported_key(job_id))
                pipe.hgetall(items_key(job_id))
                pipe.hgetall(progress_key(job_id))
                return list(pipe.execute())

        placed, results, attempts, reported, items, progress = redis_call(
            read, "the job's audit manifest"
        )
        return cls(
            job_id=job_id,
            placed=_texts(placed),
            results=_texts(results),
            attempts=_texts(attempts),
            reported=frozenset(m.decode() for m in reported),
            items=_texts(items),
            progress=_texts(progress),
        )


def build_manifest(records: JobRecords, *, written_at: str) -> Manifest:
    """The manifest of a finished job's records: entries by plan sequence (then entry id)."""
    final_event = records.items.get("final_event")
    if final_event is None:
        raise JobNotFinished(
            f"Job {records.job_id} has no final event recorded, so it has no manifest yet.",
            job_id=records.job_id,
        )
    unplaced = set(records.results) - set(records.placed)
    if unplaced:
        count = f"{len(unplaced)} {'entry' if len(unplaced) == 1 else 'entries'}"
        raise RecordsIncomplete(
            f"Job {records.job_id} has outcomes of {count} whose plan placement is gone from "
            "Redis, so no complete manifest can be written.",
            job_id=records.job_id,
        )
    order = sorted(records.placed, key=lambda e: (json.loads(records.placed[e])[0], e))
    entries = tuple(_entry(records, entry_id) for entry_id in order)
    outcomes = [e.outcome for e in entries]
    header = ManifestHeader(
        job_id=records.job_id,
        company_id=records.progress.get("company_id") or None,
        final_event=final_event,
        final_event_at=records.items.get("final_event_at"),
        entries=len(entries),
        successful=outcomes.count("successful"),
        failed=outcomes.count("failed"),
        no_outcome=outcomes.count(NO_OUTCOME),
        reported=sum(1 for e in entries if e.reported),
        report_dropped=int(records.items.get("report_dropped", 0)),
        written_at=written_at,
    )
    return Manifest(header=header, entries=entries)


def write_manifest(
    client: redis.Redis,
    job_id: str,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
) -> ManifestHeader:
    """Write the finished job's manifest to the audit sink, replacing an earlier one.

    Raises JobNotFinished before the final event, RecordsIncomplete when Redis lost the plan of
    entries it has outcomes of, and BrokerUnavailable (Redis) or AuditSinkUnavailable (the sink)
    when what it reads or writes cannot be reached: retry those later.
    """
    job_id = validate_job_id(job_id)
    records = JobRecords.read(client, job_id)
    manifest = build_manifest(records, written_at=_iso(clock()))
    sink = open_sink(settings)
    try:
        sink.write(manifest)
    finally:
        sink.close()
    header = manifest.header
    log.info(
        "audit_manifest_written job_id=%s entries=%d final_event=%s sink=%s",
        job_id,
        header.entries,
        header.final_event,
        sink.where,
    )
    return header


def manifest_before_retention(client: redis.Redis, settings: Settings) -> Callable[[str], None]:
    """The closing step's ``before_retention``: write the job's manifest before Redis forgets it.

    A sink or Redis out of reach raises, so the job waits with its records intact and the next
    closing step tries again. A manifest that can never be written (the records lost entries, a
    purge say) is logged as an error and closing goes on: waiting could not bring them back.
    """

    def write(job_id: str) -> None:
        try:
            write_manifest(client, job_id, settings)
        except (JobNotFinished, RecordsIncomplete) as exc:
            log.error(  # noqa: TRY400 - the sentence is the whole story
                "audit_manifest_impossible job_id=%s reason=%s", job_id, exc.message
            )

    return write


def _entry(records: JobRecords, entry_id: str) -> ManifestEntry:
    sequence, _total, _status, booked_at = json.loads(records.placed[entry_id])
    raw = records.results.get(entry_id)
    outcome: Mapping[str, Any] = json.loads(raw) if raw is not None else {}
    reported = entry_id in records.reported
    refusals = int(records.attempts.get(entry_id, 0))
    return ManifestEntry(
        sequence=sequence,
        accounting_entry_id=entry_id,
        outcome=outcome.get("status", NO_OUTCOME),
        external_id=outcome.get("externalId"),
        external_url=outcome.get("externalUrl"),
        failure_reason_type=outcome.get("failureReasonType"),
        failure_reason=outcome.get("failureReason"),
        booked_at=booked_at,
        recorded_at=_stamped(outcome.get("recordedAt")),
        exported_at=outcome.get("exportedAt"),
        reported=reported,
        reported_at=_stamped(outcome.get("reportedAt")),
        report_attempts=refusals + (1 if reported else 0),
        # Recorded only when more than one; None for an outcome recorded before it was kept.
        erp_attempts=outcome.get("erpAttempts", 1 if "recordedAt" in outcome else None),
    )


def _stamped(epoch: float | None) -> str | None:
    return None if epoch is None else _iso(epoch)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _texts(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}
