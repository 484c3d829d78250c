"""The data layer's payloads, spooled to a temporary file while the run plans.

A 100,000-entry job carries about 240 MB of export items as Pleo sends them. The plan needs only
each entry's date; the payload is needed once, when its message is built. So each page's payloads
are appended, as soon as the page is checked, to an unnamed temporary file as the bytes Pleo sent
(``ExportItem.raw``, never decoded; only an item holding an object kombu's JSON decoder would act
on is escaped, ``contract.message.escape_payload_json``), which the message template splices in
unchanged, and only (date, offset, length) stays in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from contract.message import escape_payload_json, unescape_payload
from pleo.models import ExportItem, export_order_key


@dataclass(frozen=True, slots=True)
class SpooledExport:
    """Where an entry's payload lies in the spool, and the dates the plan orders by."""

    date: str
    booked_at: datetime
    offset: int
    length: int


class PayloadSpool:
    """Export items' payloads in a temporary file; their dates and places in a dict.

    An entry the data layer lists twice keeps the copy ``pleo.models.index_export_items`` would
    keep, so the plan does not depend on whether payloads were spooled or held in memory.
    """

    def __init__(self, directory: str | None = None) -> None:
        # An unnamed file: the operating system removes it even if the process is killed.
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self._fd = self._file.fileno()
        self._end = 0
        self._index: dict[str, SpooledExport] = {}

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
        """Entry id → its spooled export item, for the plan."""
        return self._index

    @property
    def size(self) -> int:
        """Bytes written to the spool so far."""
        return self._end

    def add(self, items: Iterable[ExportItem]) -> None:
        """Spool one page's export items (one write for the page)."""
        chunks: list[bytes] = []
        end = self._end
        for item in items:
            text = escape_payload_json(item.raw)
            known = self._index.get(item.accounting_entry_id)
            if known is not None and not self._replaces(item, known, chunks):
                continue
            self._index[item.accounting_entry_id] = SpooledExport(
                item.date, item.booked_at, end, len(text)
            )
            chunks.append(text)
            end += len(text)
        self._file.write(b"".join(chunks))
        self._file.flush()
        self._end = end

    def clear(self) -> None:
        """Forget every payload spooled so far (the layer is being read again from its start)."""
        self._file.seek(0)
        self._file.truncate()
        self._end = 0
        self._index = {}

    def payload_json(self, entry_id: str) -> str | None:
        """The entry's payload as JSON text (as it travels), or None if the data layer had none."""
        placed = self._index.get(entry_id)
        if placed is None:
            return None
        return os.pread(self._fd, placed.length, placed.offset).decode()

    def close(self) -> None:
        """Drop the file (it has no name, so nothing is left on disk)."""
        self._file.close()
        self._index = {}

    def _replaces(self, item: ExportItem, known: SpooledExport, pending: list[bytes]) -> bool:
        # Rare: only for an entry listed twice. Decide as index_export_items does.
        old: Any = unescape_payload(json.loads(self._text(known, pending)))
        return export_order_key(item.booked_at, item.date, item.payload) < export_order_key(
            known.booked_at, known.date, old
        )

    def _text(self, placed: SpooledExport, pending: list[bytes]) -> bytes:
        """A spooled payload's bytes, from the file or from this page's not yet written."""
        if placed.offset >= self._end:
            return b"".join(pending)[placed.offset - self._end :][: placed.length]
        return os.pread(self._fd, placed.length, placed.offset)
