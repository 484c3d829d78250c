"""The data layer's payloads, spooled to a temporary file while the run plans.

A 100,000-entry job carries about 240 MB of export items as Pleo sends them. The plan needs only
each entry's date; the payload is needed once, when its message is built. So each page's items
are appended, as soon as the page is checked, to an unnamed temporary file: each item's ``date``
as sent, then its payload as the bytes Pleo sent (``ExportItem.raw``, never decoded; only an item
holding an object kombu's JSON decoder would act on is escaped,
``contract.message.escape_payload_json``), which the message template splices in unchanged.

What stays in memory is compact, a few machine words per item and no Python object per item
(``SpoolRecords``): the entry id's 36 ASCII bytes, the date as UTC microseconds, and where the
record lies in the file. An entry the data layer lists twice keeps both records here; the plan
(``producer.plan.plan_job``) keeps the copy ``pleo.models.index_export_items`` would keep.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from contract.message import escape_payload_json, unescape_payload
from pleo.models import ExportItem, export_order_key

ID_WIDTH = 36  # a canonical UUID, which pleo.models checked every entry id is
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """A UTC instant as whole microseconds since the epoch (exact: datetimes hold microseconds)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """``micros`` undone."""
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True)
class SpooledExport:
    """Where an entry's payload lies in the spool, and the dates the plan orders by."""

    date: str
    booked_at: datetime
    offset: int
    length: int


class SpoolRecords:
    """The spool's records, one per data-layer item received, in arrays (no object per item)."""

    def __init__(self) -> None:
        self.ids = bytearray()
        self.micros = array("q")
        # Each record: its date's bytes at offsets[i], then its payload's right after them.
        self.offsets = array("q")
        self.date_lengths = array("l")
        self.lengths = array("l")

    def __len__(self) -> int:
        return len(self.micros)

    def entry_id(self, index: int) -> bytes:
        """Record ``index``'s entry id, as ASCII bytes."""
        return bytes(self.ids[ID_WIDTH * index : ID_WIDTH * (index + 1)])


class PayloadSpool:
    """Export items' dates and payloads in a temporary file; their places in ``records``."""

    def __init__(self, directory: str | None = None) -> None:
        # An unnamed file: the operating system removes it even if the process is killed.
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self._fd = self._file.fileno()
        self._end = 0
        self.records = SpoolRecords()
        self._index: dict[str, SpooledExport] | None = None

    def __enter__(self) -> PayloadSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def index(self) -> Mapping[str, SpooledExport]:
        """Entry id → its kept export item, as ``index_export_items`` keeps it.

        Built on first use, one object per entry: for tests and small jobs, not the run's plan.
        """
        if self._index is None:
            index: dict[str, SpooledExport] = {}
            for record in range(len(self.records)):
                entry = self.records.entry_id(record).decode()
                known = index.get(entry)
                placed = self._placed(record)
                if known is None or self.order_key(placed) < self.order_key(known):
                    index[entry] = placed
            self._index = index
        return self._index

    @property
    def size(self) -> int:
        """Bytes written to the spool so far."""
        return self._end

    def add(self, items: Iterable[ExportItem]) -> None:
        """Spool one page's export items (one write for the page)."""
        chunks: list[bytes] = []
        records = self.records
        end = self._end
        ids = []
        for item in items:
            date = item.date.encode()
            text = escape_payload_json(item.raw)
            ids.append(item.accounting_entry_id)
            records.micros.append(micros(item.booked_at))
            records.offsets.append(end)
            records.date_lengths.append(len(date))
            records.lengths.append(len(text))
            chunks.append(date)
            chunks.append(text)
            end += len(date) + len(text)
        packed = "".join(ids).encode("ascii")
        if len(packed) != ID_WIDTH * len(ids):
            raise ValueError("every spooled entry id must be a canonical UUID")
        records.ids += packed
        self._file.write(b"".join(chunks))
        self._file.flush()
        self._end = end
        self._index = None

    def clear(self) -> None:
        """Forget every payload spooled so far (the layer is being read again from its start)."""
        self._file.seek(0)
        self._file.truncate()
        self._end = 0
        self.records = SpoolRecords()
        self._index = None

    def read(self, record: int) -> tuple[str, str]:
        """Record ``record``'s date as sent and its payload's JSON text (as it travels)."""
        records = self.records
        date_length = records.date_lengths[record]
        raw = os.pread(self._fd, date_length + records.lengths[record], records.offsets[record])
        return raw[:date_length].decode(), raw[date_length:].decode()

    def payload_json(self, entry_id: str) -> str | None:
        """The entry's payload as JSON text (as it travels), or None if the data layer had none."""
        placed = self.index.get(entry_id)
        if placed is None:
            return None
        return os.pread(self._fd, placed.length, placed.offset).decode()

    def order_key(self, placed: SpooledExport) -> tuple[datetime, str, str]:
        """``pleo.models.export_order_key`` of a spooled item (rare: an entry listed twice)."""
        payload: Any = unescape_payload(
            json.loads(os.pread(self._fd, placed.length, placed.offset))
        )
        return export_order_key(placed.booked_at, placed.date, payload)

    def record_key(self, record: int) -> tuple[datetime, str, str]:
        """``order_key`` of record ``record``."""
        return self.order_key(self._placed(record))

    def close(self) -> None:
        """Drop the file (it has no name, so nothing is left on disk)."""
        self._file.close()
        self.records = SpoolRecords()
        self._index = None

    def _placed(self, record: int) -> SpooledExport:
        records = self.records
        date, _payload = self.read(record)
        date_length = records.date_lengths[record]
        return SpooledExport(
            date,
            from_micros(records.micros[record]),
            records.offsets[record] + date_length,
            records.lengths[record],
        )
