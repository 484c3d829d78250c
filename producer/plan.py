"""Pure planning: control items plus export items in, one ordered, deduplicated plan out.

The plan is a function of the *sets* of items received, never of page size or page order:
- an entry is kept when its status is ``pending`` or ``in_progress``;
- an entry listed twice keeps its most advanced status (statuses only move forward:
  pending → in_progress → a terminal one), so a terminal sighting drops it;
- order is (export item ``date`` in UTC, ``accountingEntryId``), entries with no export item last
  (by id); ``entry_id`` ordering uses the id alone;
- each planned entry gets ``sequence`` 0..N-1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from contract.message import ItemMessage
from contract.settings import Ordering
from pleo.models import ACTIONABLE_ITEM_STATUSES, JobItem

# How far along its life a status is; the furthest sighting of an entry wins.
_PROGRESS = {"pending": 0, "in_progress": 1}
_TERMINAL = 2


class Dated(Protocol):
    """What the plan needs of a data-layer item: its ``date`` as sent and as a UTC instant.

    An ``ExportItem`` held in memory also brings its payload into the plan; a spooled one
    (``producer.spool``) leaves the payload in the spool, where the publisher reads it.
    """

    @property
    def date(self) -> str: ...  # pragma: no cover

    @property
    def booked_at(self) -> datetime: ...  # pragma: no cover


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One entry to publish, at its place in the job's order."""

    accounting_entry_id: str
    sequence: int
    status_at_fetch: str
    booked_at: str | None
    export_item: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def message(self, job_id: str, company_id: str | None, total: int) -> ItemMessage:
        """This entry's item message, in a job of ``company_id`` whose plan holds ``total``."""
        return ItemMessage(
            job_id=job_id,
            company_id=company_id,
            accounting_entry_id=self.accounting_entry_id,
            sequence=self.sequence,
            total=total,
            status_at_fetch=self.status_at_fetch,
            booked_at=self.booked_at,
            export_item=self.export_item,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered entries to publish, and what was left out and why."""

    items: tuple[PlannedItem, ...]
    items_seen: int
    distinct_entries: int
    not_actionable: int
    missing_export_items: int

    @property
    def total(self) -> int:
        """Number of messages the plan asks for."""
        return len(self.items)

    @property
    def duplicates(self) -> int:
        """Control-layer sightings that repeated an entry already seen."""
        return self.items_seen - self.distinct_entries


def make_plan(
    job_items: Iterable[JobItem],
    export_items: Mapping[str, Dated] | None,
    *,
    ordering: Ordering = "booked_at",
) -> Plan:
    """Build the plan; ``export_items`` maps entry id to its data-layer item (None for entry_id)."""
    furthest: dict[str, str] = {}
    seen = 0
    for item in job_items:
        seen += 1
        known = furthest.get(item.accounting_entry_id)
        if known is None or _rank(item.status) > _rank(known):
            furthest[item.accounting_entry_id] = item.status
    actionable = {eid: st for eid, st in furthest.items() if st in ACTIONABLE_ITEM_STATUSES}

    dated: list[tuple[Any, str]] = []
    undated: list[str] = []
    for entry_id in actionable:
        export_item = export_items.get(entry_id) if export_items is not None else None
        if ordering == "booked_at" and export_item is not None:
            dated.append((export_item.booked_at, entry_id))
        else:
            undated.append(entry_id)
    order = [eid for _, eid in sorted(dated)] + sorted(undated)

    planned = []
    for sequence, entry_id in enumerate(order):
        export_item = export_items.get(entry_id) if export_items is not None else None
        planned.append(
            PlannedItem(
                accounting_entry_id=entry_id,
                sequence=sequence,
                status_at_fetch=actionable[entry_id],
                booked_at=export_item.date if export_item is not None else None,
                export_item=getattr(export_item, "payload", None),
            )
        )
    missing = 0 if export_items is None else sum(1 for e in actionable if e not in export_items)
    return Plan(
        items=tuple(planned),
        items_seen=seen,
        distinct_entries=len(furthest),
        not_actionable=len(furthest) - len(actionable),
        missing_export_items=missing,
    )


def _rank(status: str) -> int:
    return _PROGRESS.get(status, _TERMINAL)
