"""Immutable records the simulator keeps: jobs, their items and events, the requests it served."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]


def timestamp(moment: datetime | None = None) -> str:
    """Format ``moment`` (default: now) the way Pleo does: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class JobItem:
    """One control-layer entry (``ExportJobItemV3``) as it stands now."""

    accounting_entry_id: str
    export_job_id: str
    status: str
    exported_at: str | None = None
    external_id: str | None = None
    external_url: str | None = None
    failure_reason: str | None = None
    failure_reason_type: str | None = None

    def to_json(self) -> JsonObject:
        """Render as Pleo does, with every optional field present (null when unset)."""
        return {
            "accountingEntryId": self.accounting_entry_id,
            "exportJobId": self.export_job_id,
            "status": self.status,
            "exportedAt": self.exported_at,
            "externalId": self.external_id,
            "externalUrl": self.external_url,
            "failureReason": self.failure_reason,
            "failureReasonType": self.failure_reason_type,
        }


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One ``POST /v3/export-job-events`` the simulator received, accepted or refused."""

    event: str
    accepted: bool
    at: str
    failure_reason: str | None = None
    failure_reason_type: str | None = None

    def to_json(self) -> JsonObject:
        """Render for the ``/_sim/`` control API."""
        return {
            "event": self.event,
            "accepted": self.accepted,
            "at": self.at,
            "failureReason": self.failure_reason,
            "failureReasonType": self.failure_reason_type,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """An export job (``ExportJobV3``) plus every event posted to it, in arrival order."""

    id: str
    company_id: str
    status: str
    created_at: str
    number_of_items: int
    expires_in: int = 3600
    is_interactive: bool = True
    vendor_based_bookkeeping: bool = False
    created_by: str | None = None
    started_at: str | None = None
    last_updated_at: str | None = None
    completed_at: str | None = None
    expired_at: str | None = None
    failure_reason: str | None = None
    failure_reason_type: str | None = None
    events: tuple[JobEvent, ...] = ()

    def to_json(self) -> JsonObject:
        """Render as Pleo's ``ExportJobV3``."""
        return {
            "id": self.id,
            "companyId": self.company_id,
            "status": self.status,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "startedAt": self.started_at,
            "lastUpdatedAt": self.last_updated_at,
            "completedAt": self.completed_at,
            "expiredAt": self.expired_at,
            "expiresIn": self.expires_in,
            "numberOfItems": self.number_of_items,
            "isInteractive": self.is_interactive,
            "vendorBasedBookkeeping": self.vendor_based_bookkeeping,
            "failureReason": self.failure_reason,
            "failureReasonType": self.failure_reason_type,
        }


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the Pleo API (``/v3``) and how the simulator answered it.

    ``query`` maps each parameter to its value (repeated ones joined by commas); ``status`` is 0
    when a ``drop`` fault closed the connection without answering; ``items`` is the number of
    entries in a PUT body; ``fault`` names the fault kinds that fired, comma-separated.
    """

    method: str
    path: str
    query: dict[str, str]
    status: int
    endpoint: str
    items: int | None = None
    fault: str | None = None

    def to_json(self) -> JsonObject:
        """Render for ``GET /_sim/calls``."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "endpoint": self.endpoint,
            "items": self.items,
            "fault": self.fault,
        }


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """One element of a ``PUT /v3/export-jobs/{jobId}/items`` body, already validated."""

    accounting_entry_id: str
    status: str
    exported_at: str | None = None
    external_id: str | None = None
    external_url: str | None = None
    failure_reason: str | None = None
    failure_reason_type: str | None = None
