"""The payload spool: the same choices and the same plan as holding every export item in memory."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils.json import dumps
from kombu.utils.json import loads as kombu_loads

from contract.message import unescape_payload
from pleo.models import ExportItem, JobItem, index_export_items
from producer.plan import make_plan
from producer.spool import PayloadSpool
from tests.unit.test_plan import entry, export_item


def spooled(pages: list[list[ExportItem]]) -> PayloadSpool:
    spool = PayloadSpool()
    for page in pages:
        spool.add(page)
    return spool


def test_payload_comes_back_as_pleo_sent_it() -> None:
    """The spooled text is exactly the bytes received: non-ASCII, spacing and big numbers."""
    item = export_item(entry(1), 3)
    raw = (
        f'{{ "accountingEntryId" : "{item.accounting_entry_id}", "note": "Kaffe på kontoret ☕",'
        ' "amount": 12.50, "big": 123456789012345678901234567890, "tags": [null,true]}'
    ).encode()
    odd = ExportItem(item.accounting_entry_id, item.date, item.booked_at, raw)
    with spooled([[odd], [export_item(entry(2), 1)]]) as spool:
        assert spool.payload_json(entry(1)) == raw.decode()
        assert spool.payload_json(entry(3)) is None
        assert spool.index[entry(2)].booked_at == export_item(entry(2), 1).booked_at
        assert spool.size == len(raw) + len(export_item(entry(2), 1).raw)


def test_an_object_kombu_would_decode_is_escaped() -> None:
    """Only a payload holding a ``__type__``/``__value__`` object is rewritten, reversibly."""
    item = export_item(entry(1), 3)
    payload = {**item.payload, "note": {"__type__": "datetime", "__value__": "2026-01-01"}}
    odd = ExportItem(item.accounting_entry_id, item.date, item.booked_at, dumps(payload).encode())
    with spooled([[odd]]) as spool:
        text = spool.payload_json(entry(1))
        assert text is not None
        assert json.loads(text)["note"] == {
            "__pleo_escaped__": [["__type__", "datetime"], ["__value__", "2026-01-01"]]
        }
        assert unescape_payload(kombu_loads(text)) == payload


def test_a_cleared_spool_holds_only_what_was_added_after() -> None:
    """A layer read again from its start: what was spooled before is gone, bytes and index."""
    with spooled([[export_item(entry(1), 3), export_item(entry(2), 1)]]) as spool:
        spool.clear()
        assert (spool.size, dict(spool.index)) == (0, {})
        again = export_item(entry(2), 4)
        spool.add([again])
        assert spool.payload_json(entry(1)) is None
        assert spool.payload_json(entry(2)) == again.raw.decode()
        assert spool.size == len(again.raw)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5), st.booleans()), max_size=80),
    page_size=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_spool_plans_what_memory_plans(
    rows: list[tuple[int, int, bool]], page_size: int, seed: int
) -> None:
    """Entries listed twice, in any page order: the spool keeps the copy memory keeps."""
    exports = [
        export_item(entry(n), minutes, text=None if plain else f"2026-01-01T00:0{minutes}:00.0Z")
        for n, minutes, plain in rows
    ]
    pages = [exports[i : i + page_size] for i in range(0, len(exports), page_size)]
    random.Random(seed).shuffle(pages)
    items = [JobItem(entry(n), "pending") for n, _, _ in rows]
    in_memory = index_export_items(pages)

    with spooled(pages) as spool:
        assert set(spool.index) == set(in_memory)
        for entry_id, kept in in_memory.items():
            assert spool.payload_json(entry_id) == kept.raw.decode()
            assert spool.index[entry_id].date == kept.date
        from_spool = make_plan(items, spool.index)
    assert [(p.accounting_entry_id, p.booked_at) for p in from_spool.items] == [
        (p.accounting_entry_id, p.booked_at) for p in make_plan(items, in_memory).items
    ]
    assert all(p.export_item is None for p in from_spool.items)
