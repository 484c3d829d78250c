"""The ERP adapter contract: the entry a worker posts, the reference it gets back, the refusals.

    PleoExportError             (contract.errors)
    └── ERPError                anything an ERP adapter raises on purpose
        ├── EntryRejected       the ERP refuses this entry for good: report the item failed, with
        │                       one of Pleo's item failure reason types and an actionable sentence
        └── ERPUnavailable      the ERP cannot be reached now: retry the item later

Pleo's pre-export checks of an entry, and the journal lines they give, are
``consumers/posting.py``; the reference adapter, ``SqlJournal``, is ``consumers/erp_sql.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from contract.errors import PleoExportError
from contract.message import ItemMessage
from pleo.models import ItemFailureReason

__all__ = [
    "ERPAdapter",
    "ERPError",
    "ERPUnavailable",
    "Entry",
    "EntryRejected",
    "ExternalRef",
    "ItemFailureReason",
]


@dataclass(frozen=True, slots=True)
class Entry:
    """One accounting entry as the worker hands it to an adapter, built from a schema-1 message."""

    accounting_entry_id: str
    job_id: str
    company_id: str | None
    sequence: int
    booked_at: str | None
    export_item: Mapping[str, Any] | None

    @classmethod
    def from_message(cls, message: ItemMessage) -> Entry:
        """The entry an item message (already parsed, so valid) describes."""
        return cls(
            accounting_entry_id=message.accounting_entry_id,
            job_id=message.job_id,
            company_id=message.company_id,
            sequence=message.sequence,
            booked_at=message.booked_at,
            export_item=message.export_item,
        )


@dataclass(frozen=True, slots=True)
class ExternalRef:
    """Where an entry lives in the ERP; ``exported_at`` is when it was first posted (UTC, ISO)."""

    external_id: str
    external_url: str | None
    exported_at: str


class ERPError(PleoExportError):
    """Root of the errors an ERP adapter raises on purpose."""


class EntryRejected(ERPError):
    """The ERP refuses this entry for good; the item is reported failed with these reasons."""

    def __init__(self, reason_type: ItemFailureReason, reason: str) -> None:
        super().__init__(reason)
        self.reason_type: ItemFailureReason = reason_type
        self.reason = reason

    def __reduce__(self) -> tuple[type[EntryRejected], tuple[ItemFailureReason, str]]:
        # Celery's pool and result backends copy exceptions by pickling; keep both fields.
        return type(self), (self.reason_type, self.reason)


class ERPUnavailable(ERPError):
    """The ERP cannot be reached now; the worker retries the item later."""

    exit_code = 4


class ERPAdapter(Protocol):
    """What the worker needs from an ERP: look an entry up, and post it at most once."""

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        """The entry's reference if it is already in the ERP, else None."""

    def post(self, entry: Entry) -> ExternalRef:
        """Post ``entry``; posting one already there returns the existing reference, not a copy."""
