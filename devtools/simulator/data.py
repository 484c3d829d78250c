"""Deterministic test data: a ``JobSpec`` and a seed become control items and export items.

Everything here is a pure function of the spec (its ``seed`` above all), so two simulators built
from the same specs serve the same entries, dates and page orders. Both layers come back in their
own seeded shuffle, never sorted by date or by id, so a consumer has to order entries itself.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from devtools.simulator.enums import ITEM_STATUSES, JOB_STATUSES
from devtools.simulator.payloads import export_item, seeded_uuid
from devtools.simulator.records import JobItem, JsonObject, timestamp

_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
_YEAR_SECONDS = 365 * 86_400


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What one simulated export job holds: its size, statuses and the data quirks to plant.

    ``item_statuses`` maps item statuses to shares (default: all ``pending``);
    ``missing_export_items`` entries get no export item; ``same_date_groups`` groups of two or
    three entries share one date; ``missing_account_ratio`` of the export items have lines whose
    ``account`` is null; ``expires_in`` is the job's ``expiresIn``, the seconds it may go without
    an action before it expires (Pleo's webhook example: 3600).
    """

    items: int = 100
    status: str = "pending"
    item_statuses: Mapping[str, float] | None = None
    missing_export_items: int = 0
    same_date_groups: int = 0
    missing_account_ratio: float = 0.0
    company_id: str | None = None
    seed: int = 0
    job_id: str | None = None
    vendor_based_bookkeeping: bool = False
    expires_in: int = 3600

    def __post_init__(self) -> None:
        """Reject specs that cannot be generated, with the reason."""
        if self.items < 0:
            raise ValueError("items must be >= 0")
        if self.status not in JOB_STATUSES:
            raise ValueError(f"status must be one of {sorted(JOB_STATUSES)}")
        shares = self.item_statuses or {}
        if not set(shares) <= ITEM_STATUSES or any(share < 0 for share in shares.values()):
            raise ValueError(f"item_statuses keys must be in {sorted(ITEM_STATUSES)}, shares >= 0")
        if shares and sum(shares.values()) <= 0:
            raise ValueError("item_statuses shares must not all be zero")
        if not 0 <= self.missing_export_items <= self.items:
            raise ValueError("missing_export_items must be between 0 and items")
        if not 0 <= self.same_date_groups * 2 <= self.items - self.missing_export_items:
            raise ValueError("same_date_groups needs two entries with export items per group")
        if not 0.0 <= self.missing_account_ratio <= 1.0:
            raise ValueError("missing_account_ratio must be between 0 and 1")
        # expiresIn is an int32 in the spec; a job that expires at once could never be claimed.
        seconds = self.expires_in
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds < 2**31:
            raise ValueError("expires_in must be a whole number of seconds from 1 to 2147483647")
        for name in ("company_id", "job_id"):
            value = getattr(self, name)
            if value is not None:
                uuid.UUID(value)


@dataclass(frozen=True, slots=True)
class JobData:
    """A job's generated entries: control items and export items, each in its own page order."""

    items: tuple[JobItem, ...]
    export_items: tuple[JsonObject, ...]


def generate(spec: JobSpec, job_id: str, company_id: str) -> JobData:
    """Build a job's control items and export items from ``spec``, deterministically."""
    rng = random.Random(f"pleo-simulator:{spec.seed}")
    entry_ids = [seeded_uuid(rng) for _ in range(spec.items)]
    statuses = _spread_statuses(rng, spec.item_statuses or {"pending": 1.0}, spec.items)
    items = [
        _job_item(rng, job_id, entry, status)
        for entry, status in zip(entry_ids, statuses, strict=True)
    ]

    missing = set(rng.sample(range(spec.items), spec.missing_export_items))
    with_data = [index for index in range(spec.items) if index not in missing]
    seconds = rng.sample(range(_YEAR_SECONDS), len(with_data))
    dates = {
        index: _EPOCH + timedelta(seconds=s) for index, s in zip(with_data, seconds, strict=True)
    }
    _plant_same_dates(rng, dates, with_data, spec.same_date_groups)
    no_account = set(rng.sample(with_data, round(spec.missing_account_ratio * len(with_data))))
    exports = {
        index: export_item(
            rng,
            entry_ids[index],
            company_id,
            dates[index],
            with_account=index not in no_account,
            vendor_based=spec.vendor_based_bookkeeping,
        )
        for index in with_data
    }

    control_order = _unsorted_shuffle(rng, list(range(spec.items)), entry_ids, dates)
    export_order = _unsorted_shuffle(rng, list(with_data), entry_ids, dates)
    if export_order == control_order and len(export_order) > 1:
        export_order = export_order[1:] + export_order[:1]
    return JobData(
        items=tuple(items[index] for index in control_order),
        export_items=tuple(exports[index] for index in export_order),
    )


def _spread_statuses(rng: random.Random, shares: Mapping[str, float], count: int) -> list[str]:
    """Split ``count`` items over statuses by ``shares`` (largest remainder), then shuffle them."""
    total = sum(shares.values())
    exact = {status: shares[status] / total * count for status in sorted(shares)}
    counts = {status: int(share) for status, share in exact.items()}
    short = count - sum(counts.values())
    by_remainder = sorted(exact, key=lambda status: (counts[status] - exact[status], status))
    for status in by_remainder[:short]:
        counts[status] += 1
    statuses = [status for status, n in counts.items() for _ in range(n)]
    rng.shuffle(statuses)
    return statuses


def _job_item(rng: random.Random, job_id: str, entry_id: str, status: str) -> JobItem:
    """A control item already in ``status``, with the fields an earlier run would have left."""
    if status == "successful":
        external = f"ERP-{rng.randrange(10**6):06d}"
        return JobItem(
            accounting_entry_id=entry_id,
            export_job_id=job_id,
            status=status,
            exported_at=timestamp(_EPOCH + timedelta(days=400)),
            external_id=external,
            external_url=f"https://erp.example.com/entries/{external}",
        )
    if status == "failed":
        return JobItem(
            accounting_entry_id=entry_id,
            export_job_id=job_id,
            status=status,
            failure_reason="Vendor not found in ERP",
            failure_reason_type="vendor_unknown",
        )
    return JobItem(accounting_entry_id=entry_id, export_job_id=job_id, status=status)


def _plant_same_dates(
    rng: random.Random, dates: dict[int, datetime], indices: Sequence[int], groups: int
) -> None:
    """Give ``groups`` groups of entries one shared date (three per group when there is room)."""
    size = 3 if groups * 3 <= len(indices) else 2
    chosen = rng.sample(list(indices), groups * size)
    for group in range(groups):
        members = chosen[group * size : (group + 1) * size]
        for member in members[1:]:
            dates[member] = dates[members[0]]


def _unsorted_shuffle(
    rng: random.Random, order: list[int], entry_ids: Sequence[str], dates: Mapping[int, datetime]
) -> list[int]:
    """Shuffle ``order``; rotate it if chance left it sorted by id or date (consumers must sort)."""
    rng.shuffle(order)
    by_id = sorted(order, key=lambda index: entry_ids[index])
    by_date = sorted(order, key=lambda index: (dates.get(index, _EPOCH), entry_ids[index]))
    if len(order) > 2 and order in (by_id, by_date):
        order = order[1:] + order[:1]
    return order
