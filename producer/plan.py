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

import struct
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, overload

from contract.message import ItemMessage
from contract.settings import Ordering
from pleo.models import ACTIONABLE_ITEM_STATUSES, ITEM_STATUSES, JobItem
from producer.spool import ID_WIDTH, PayloadSpool

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
    # A spooled plan's item: its payload's JSON text as it travels (``producer.spool``).
    export_json: str | None = field(default=None, compare=False, repr=False)

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

    items: Sequence[PlannedItem]
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


# The run's plan, compact: what ``make_plan`` decides, for a million entries in bounded memory.
# Entry ids are 36 ASCII bytes each (pleo.models checked every one is a canonical UUID), statuses
# one byte, and orders arrays of indices: no Python object per entry is held, only while sorting.

_STATUS_CODES = {status: code for code, status in enumerate(sorted(ITEM_STATUSES))}
_STATUS_NAMES = tuple(sorted(ITEM_STATUSES))
_STATUS_BYTES = {status: bytes([code]) for status, code in _STATUS_CODES.items()}
_SIGHTING = ID_WIDTH + 1  # a control-layer sighting: the entry id, then its status code
_RANK_OF_CODE = bytes(_rank(status) for status in _STATUS_NAMES)
_ACTIONABLE_CODES = frozenset(_STATUS_CODES[status] for status in ACTIONABLE_ITEM_STATUSES)
_NO_RECORD = -1
# Added to a date's UTC microseconds so that, packed big-endian unsigned, bytes order as dates.
_MICROS_BIAS = 1 << 63
_KEY = struct.Struct(">Q")
_INDEX = struct.Struct(">I")


class ControlLayer:
    """The control layer's sightings as read: 36 bytes of entry id and a status byte each."""

    def __init__(self) -> None:
        self.records = bytearray()

    def __len__(self) -> int:
        return len(self.records) // _SIGHTING

    def extend(self, items: Iterable[JobItem]) -> None:
        """Add one page's items."""
        page = list(items)
        packed = b"".join(
            item.accounting_entry_id.encode("ascii") + _STATUS_BYTES[item.status] for item in page
        )
        if len(packed) != _SIGHTING * len(page):
            raise ValueError("every control-layer entry id must be a canonical UUID")
        self.records += packed

    def clear(self) -> None:
        """Forget every sighting (the layer is being read again from its start)."""
        self.records = bytearray()


class CompactPlan(Sequence[PlannedItem]):
    """The planned entries in order; each ``PlannedItem`` is built when it is asked for.

    An item taken from a spooled plan carries its date and its payload's JSON text
    (``export_json``), read from the spool as its batch is built.
    """

    def __init__(
        self,
        ids: bytes,
        statuses: bytes,
        order: array[int],
        records: array[int],
        spool: PayloadSpool | None,
    ) -> None:
        self._ids = ids
        self._statuses = statuses
        self._order = order
        self._records = records
        self._spool = spool

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, index: int) -> PlannedItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[PlannedItem]: ...

    def __getitem__(self, index: int | slice) -> PlannedItem | list[PlannedItem]:
        if isinstance(index, slice):
            return [self._item(n) for n in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("plan index out of range")
        return self._item(index)

    def _item(self, sequence: int) -> PlannedItem:
        at = self._order[sequence]
        entry = self._ids[ID_WIDTH * at : ID_WIDTH * (at + 1)].decode()
        status = _STATUS_NAMES[self._statuses[at]]
        record = self._records[at]
        if record == _NO_RECORD or self._spool is None:
            return PlannedItem(entry, sequence, status, None)
        date, text = self._spool.read(record)
        return PlannedItem(entry, sequence, status, date, export_json=text)


def plan_job(
    control: ControlLayer, spool: PayloadSpool | None, *, ordering: Ordering = "booked_at"
) -> Plan:
    """``make_plan`` of the layers as the run holds them; ``spool`` None under entry_id ordering.

    ``control`` is consumed (left empty), so its sightings are not held twice.

    The same rules, by sorting instead of dicts: the control layer's sightings sorted by entry
    id give each entry its furthest status; the data layer's records sorted by entry id give
    each entry its kept copy (``index_export_items``' choice); the two are merged by id, and the
    dated entries sorted by (UTC date, id) go before the undated, in id order.
    """
    seen = len(control)
    act_ids, act_statuses, distinct = _furthest(control)
    actionable = len(act_statuses)
    records = array("l", [_NO_RECORD]) * actionable
    missing = actionable if spool is None else _match(act_ids, spool, records)
    order = array("l")
    if spool is not None and ordering == "booked_at":
        dated_micros = spool.records.micros
        keys = sorted(
            _KEY.pack(dated_micros[records[at]] + _MICROS_BIAS)
            + act_ids[ID_WIDTH * at : ID_WIDTH * (at + 1)]
            + _INDEX.pack(at)
            for at in range(actionable)
            if records[at] != _NO_RECORD
        )
        order.extend(_INDEX.unpack_from(key, len(key) - _INDEX.size)[0] for key in keys)
        del keys
        order.extend(at for at in range(actionable) if records[at] == _NO_RECORD)
    else:
        order.extend(range(actionable))
    return Plan(
        items=CompactPlan(act_ids, act_statuses, order, records, spool),
        items_seen=seen,
        distinct_entries=distinct,
        not_actionable=distinct - actionable,
        missing_export_items=0 if spool is None else missing,
    )


def _furthest(control: ControlLayer) -> tuple[bytes, bytes, int]:
    """The actionable entries' ids and furthest statuses, in id order, and how many were distinct.

    The sightings are sorted whole (id, then status), so each entry's come together; the layer is
    consumed, so they live on only as the sorted list while it is read.
    """
    sightings = bytes(control.records)
    control.clear()
    ordered = sorted(
        sightings[start : start + _SIGHTING] for start in range(0, len(sightings), _SIGHTING)
    )
    del sightings
    entry_ids = bytearray()
    entry_statuses = bytearray()
    distinct = 0
    last: bytes | None = None
    best = 0
    for sighting in ordered:
        entry = sighting[:ID_WIDTH]
        status = sighting[ID_WIDTH]
        if entry != last:
            if last is not None and best in _ACTIONABLE_CODES:
                entry_ids += last
                entry_statuses.append(best)
            distinct += 1
            last, best = entry, status
        elif _RANK_OF_CODE[status] > _RANK_OF_CODE[best]:
            best = status
    del ordered
    if last is not None and best in _ACTIONABLE_CODES:
        entry_ids += last
        entry_statuses.append(best)
    return bytes(entry_ids), bytes(entry_statuses), distinct


def _match(act_ids: bytes, spool: PayloadSpool, records: array[int]) -> int:
    """Set each actionable entry's kept spool record in ``records``; how many had none."""
    kept = _kept_records(spool)
    spooled_ids = spool.records.ids

    def kept_id(position: int) -> bytearray:
        record = kept[position]
        return spooled_ids[ID_WIDTH * record : ID_WIDTH * (record + 1)]

    # Both in id order: one merge finds each actionable entry's record.
    missing = 0
    position = 0
    for at in range(len(records)):
        entry = act_ids[ID_WIDTH * at : ID_WIDTH * (at + 1)]
        while position < len(kept) and kept_id(position) < entry:
            position += 1
        if position < len(kept) and kept_id(position) == entry:
            records[at] = kept[position]
        else:
            missing += 1
    return missing


def _kept_records(spool: PayloadSpool) -> array[int]:
    """Each entry's kept data-layer record, in entry id order."""
    ids = bytes(spool.records.ids)
    keyed = sorted(
        ids[ID_WIDTH * index : ID_WIDTH * (index + 1)] + _INDEX.pack(index)
        for index in range(len(spool.records))
    )
    del ids
    kept = array("l")
    last: bytes | None = None
    for key in keyed:
        entry = key[:ID_WIDTH]
        index = _INDEX.unpack_from(key, ID_WIDTH)[0]
        if entry == last:
            # Rare: an entry listed twice; the copy index_export_items keeps wins.
            if spool.record_key(index) < spool.record_key(kept[-1]):
                kept[-1] = index
            continue
        kept.append(index)
        last = entry
    return kept
