"""The ERP adapter contract: the entry a worker posts, the reference it gets back, the refusals.

    PleoExportError             (contract.errors)
    └── ERPError                anything an ERP adapter raises on purpose
        ├── EntryRejected       the ERP refuses this entry for good: report the item failed, with
        │                       one of Pleo's item failure reason types and an actionable sentence
        ├── ERPAuthenticationFailed  the ERP refused our credentials for good (its OAuth refresh
        │                       was refused): the job ends, accounting_system_authentication_failure
        └── ERPUnavailable      the ERP cannot be reached now: retry the item later
            └── ERPRateLimited  the ERP said "too many" (429): the whole connection waits
                                ``retry_after`` seconds (or the budget's own backoff)

Attachments (receipts) are optional: an adapter that also has ``attach`` (``AttachingAdapter``)
gets each receipt of an entry it booked, once the entry is posted; one without it keeps working
and its entries go without receipts (``consumers/receipts.py`` downloads them).

Pleo's pre-export checks of an entry, and the journal lines they give, are
``consumers/posting.py``; the reference adapter, ``SqlJournal``, is ``consumers/erp_sql.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.errors import PleoExportError
from contract.message import ItemMessage
from pleo.models import ItemFailureReason

__all__ = [
    "AttachingAdapter",
    "Attachment",
    "ERPAdapter",
    "ERPAuthenticationFailed",
    "ERPError",
    "ERPLimits",
    "ERPRateLimited",
    "ERPUnavailable",
    "Entry",
    "EntryRejected",
    "ExternalRef",
    "ItemFailureReason",
    "accepts_attachments",
    "attachment_key",
    "idempotency_key",
]

# Namespace of the idempotency keys sent to ERPs: a key is a function of the entry alone, never of
# the job, so a replay from any job, worker or crash carries the key of the first post.
IDEMPOTENCY_NAMESPACE = uuid.UUID("0b6f4a52-94c7-5b8e-a3d1-7e2c9f6a1d40")


def idempotency_key(accounting_entry_id: str) -> str:
    """The key every post of this entry carries (a UUID derived from its accountingEntryId)."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, accounting_entry_id))


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


class ERPAuthenticationFailed(ERPError):
    """The ERP's credentials are refused for good (a refresh refused): the job cannot go on.

    Not one entry's failure: what was booked is written back, then the job is failed with
    ``accounting_system_authentication_failure``.
    """

    exit_code = 3


class ERPUnavailable(ERPError):
    """The ERP cannot be reached now; the worker retries the item later."""

    exit_code = 4


class ERPRateLimited(ERPUnavailable):
    """The ERP refused the call for its rate or concurrency limit (HTTP 429, say).

    ``retry_after`` is the ERP's own ``Retry-After`` in seconds, None if it gave none; every
    worker of the connection waits it out, not only the one that was refused.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[ERPRateLimited], tuple[str, float | None]]:
        return type(self), (str(self), self.retry_after)


@dataclass(frozen=True, slots=True)
class ERPLimits:
    """What an ERP connection can take, as its adapter declares it (settings may override each).

    ``calls`` per ``period`` seconds (None: no rate limit) with bursts of up to ``burst`` calls
    (default: ``calls``); ``concurrency``: calls in flight at once across every worker (None: no
    limit); ``batch_size``: entries per call (1: the ERP has no batch endpoint, and the adapter
    needs no ``post_batch``); ``idempotency_key``: the ERP honours the key of ``idempotency_key()``
    (replays within its key window return the first answer); ``ordered``: entries must be posted
    in the plan's ``sequence`` order (vouchers numbered by date).
    """

    calls: int | None = None
    period: float = 1.0
    burst: int | None = None
    concurrency: int | None = None
    batch_size: int = 1
    idempotency_key: bool = False
    ordered: bool = False


# What an adapter that declares nothing can take: unlimited, one entry a call, unordered.
UNLIMITED = ERPLimits()


class ERPAdapter(Protocol):
    """What the worker needs from an ERP: look an entry up, and post it at most once."""

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        """The entry's reference if it is already in the ERP, else None."""

    def post(self, entry: Entry) -> ExternalRef:
        """Post ``entry``; posting one already there returns the existing reference, not a copy."""


class BatchingAdapter(ERPAdapter, Protocol):
    """An adapter whose ERP books several entries in one call (``limits.batch_size`` > 1).

    ``post_batch`` returns one outcome per entry, in the order given: its ``ExternalRef``, or the
    ``EntryRejected`` that refuses it alone. It raises (``ERPUnavailable``, ``ERPRateLimited``)
    only when the call as a whole failed; entries the ERP had already booked must then come back
    as their existing refs on the retry (idempotent by key, or looked up), never as copies.
    """

    limits: ERPLimits

    def post_batch(self, entries: Sequence[Entry]) -> list[ExternalRef | EntryRejected]:
        """Post ``entries`` in one call; one outcome each, in order."""


# -- attachments (receipts) -------------------------------------------------------------------

# Namespace of attachment keys: a function of the entry and the file's content alone, so a replay
# (a retried message, a fresh URL for the same file, another worker) carries the first key.
ATTACHMENT_NAMESPACE = uuid.UUID("5d0e2c7a-3f41-5b9e-8c62-1a7f4e9b2d83")


def attachment_key(accounting_entry_id: str, sha256: str) -> str:
    """The key every upload of this file to this entry carries (a UUID from both)."""
    return str(uuid.uuid5(ATTACHMENT_NAMESPACE, f"{accounting_entry_id}:{sha256}"))


@dataclass(frozen=True, slots=True)
class Attachment:
    """One receipt of a booked entry, downloaded and checked, as the worker hands it to ``attach``.

    ``external_id``: the entry's reference in the ERP (what ``post`` returned); ``index``: the
    file's place in the export item's ``files``; ``content``: its bytes (never in a repr).
    """

    accounting_entry_id: str
    external_id: str
    index: int
    content_type: str
    sha256: str
    content: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return len(self.content)

    @property
    def key(self) -> str:
        """Its idempotency key (``attachment_key``)."""
        return attachment_key(self.accounting_entry_id, self.sha256)


class AttachingAdapter(ERPAdapter, Protocol):
    """An adapter whose ERP takes an entry's attachments (receipts).

    ``attach`` uploads one attachment at most once per ``attachment.key`` (a replay returns the
    first upload's id, never a copy). It raises ``ERPUnavailable`` when the ERP cannot take it now
    (the upload is tried again later, with the same key) and ``EntryRejected`` (reason
    ``receipt_upload_failure``) when the ERP refuses it for good.
    """

    def attach(self, attachment: Attachment) -> str:
        """Upload ``attachment`` once; returns the ERP's id of it."""


def accepts_attachments(erp: object) -> bool:
    """Whether ``erp`` takes attachments: it has ``attach`` and does not say
    ``takes_attachments = False`` (an adapter whose ERP endpoint for them is not configured)."""
    return callable(getattr(erp, "attach", None)) and getattr(erp, "takes_attachments", True)
