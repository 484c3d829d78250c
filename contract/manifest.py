"""A finished job's audit manifest: every entry in plan order, its outcome, ERP id and times.

Written once per job at its final event (``consumers/audit.py``) to a sink that outlives Redis
(``consumers/audit_sinks.py``), and printed from there by ``pleo-export report``. It holds ids,
outcomes, counts and times, never an export item's fields (names, notes, amounts, receipts).

    PleoExportError             (contract.errors)
    └── AuditError              the audit record cannot be written or read as asked
        ├── AuditSinkUnavailable  the sink (database, folder) cannot be reached now: retry, exit 4
        ├── ManifestNotFound    the sink holds no manifest of the job: asking again cannot help,
        │                       exit 3 (as for a job Pleo does not know)
        ├── JobNotFinished      the job has no final event yet: no manifest to write, exit 1
        └── RecordsIncomplete   outcomes of entries whose plan placement is gone from Redis: a
                                manifest would leave them out, so none is written, exit 1
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from contract.errors import PleoExportError

# Bumped when a field changes meaning; readers of the sinks see it in every manifest.
VERSION: Final = 1
# ``outcome`` of an entry published but never posted (the job failed or expired first).
NO_OUTCOME: Final = "none"
OUTCOMES: Final = ("successful", "failed", NO_OUTCOME)


class AuditError(PleoExportError):
    """Root of the errors of the audit record."""


class AuditSinkUnavailable(AuditError):
    """The audit sink cannot be reached or written now; the caller retries."""

    exit_code = 4


class ManifestNotFound(AuditError):
    """The audit sink holds no manifest of this job."""

    exit_code = 3


class JobNotFinished(AuditError):
    """The job has no final event recorded, so its manifest cannot be written yet."""


class RecordsIncomplete(AuditError):
    """Redis holds outcomes of entries it no longer knows the plan place of."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One published entry of the job and what became of it.

    ``recorded_at``: when a worker recorded its outcome; ``exported_at``: when the ERP booked it
    (successful only); ``reported_at``: when Pleo accepted its update (whole seconds).
    ``report_attempts``: answers Pleo gave to PUTs carrying its update (refusals, plus the
    acceptance); ``reported`` false with attempts: dropped after ``PLEO_REPORT_MAX_ATTEMPTS``.
    ``erp_attempts``: tries of its message until the outcome was recorded (Celery's retries + 1:
    the ERP or Pleo unreachable for a while); a redelivery after a worker died, or a message the
    repair sweep re-sent, starts counting again, so it is a lower bound. None: not recorded.
    """

    sequence: int
    accounting_entry_id: str
    outcome: str
    external_id: str | None
    external_url: str | None
    failure_reason_type: str | None
    failure_reason: str | None
    booked_at: str | None
    recorded_at: str | None
    exported_at: str | None
    reported: bool
    reported_at: str | None
    report_attempts: int
    erp_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class ManifestHeader:
    """The job's line of the manifest: ids, how it ended, counts, when the manifest was written."""

    job_id: str
    company_id: str | None
    final_event: str
    final_event_at: str | None
    entries: int
    successful: int
    failed: int
    no_outcome: int
    reported: int
    report_dropped: int
    written_at: str
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Manifest:
    """A job's header and its entries in plan order."""

    header: ManifestHeader
    entries: tuple[ManifestEntry, ...]

    def as_dict(self) -> dict[str, Any]:
        """The manifest as one JSON-ready object: ``job`` (the header) and ``entries``."""
        return {"job": asdict(self.header), "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """The manifest ``as_dict`` gave (a sink's stored copy)."""
        return cls(
            header=ManifestHeader(**_known(ManifestHeader, data["job"])),
            entries=tuple(ManifestEntry(**_known(ManifestEntry, e)) for e in data["entries"]),
        )


# The columns of ``report --csv``, in order: the job id, then every entry field.
ENTRY_FIELDS: Final = tuple(f.name for f in fields(ManifestEntry))
HEADER_FIELDS: Final = tuple(f.name for f in fields(ManifestHeader))


def _known(kind: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``kind`` in ``data``: a later version's additions are left out."""
    names = {f.name for f in fields(kind)}
    return {key: value for key, value in data.items() if key in names}
