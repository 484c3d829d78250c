"""The payload spool: the same choices and the same plan as holding every export item in memory."""

from __future__ import annotations

import json
import random
from datetime import timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils.json import dumps
from kombu.utils.json import loads as kombu_loads

from contract.message import unescape_payload
from contract.settings import Ordering
from pleo.models import ITEM_STATUSES, ExportItem, JobItem, index_export_items
from producer.plan import ControlLayer, make_plan, plan_job
from producer.spool import PayloadSpool
from tests.unit.test_plan import BASE, entry, export_item


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
        # Each record: the date as sent, then the payload.
        second = export_item(entry(2), 1)
        assert spool.size == len(item.date) + len(raw) + len(second.date) + len(second.raw)


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
        assert spool.size == len(again.date) + len(again.raw)


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


@settings(max_examples=200, deadline=None)
@given(
    sightings=st.lists(
        st.tuples(st.integers(0, 12), st.sampled_from(sorted(ITEM_STATUSES))), max_size=60
    ),
    exports=st.lists(
        st.tuples(st.integers(0, 12), st.integers(-3, 5), st.integers(0, 2), st.booleans()),
        max_size=120,
    ),
    page_size=st.integers(1, 25),
    seed=st.integers(0, 2**32 - 1),
    ordering=st.sampled_from(["booked_at", "entry_id"]),
)
def test_the_compact_plan_is_make_plans(
    sightings: list[tuple[int, str]],
    exports: list[tuple[int, int, int, bool]],
    page_size: int,
    seed: int,
    ordering: Ordering,
) -> None:
    """Arrays instead of objects, sorts instead of dicts: the same entries, order and counts.

    Entries are seen several times with any statuses, listed twice by the data layer (even on
    one page), share dates, carry dates in other offsets, in any page order.
    """
    rng = random.Random(seed)
    control = [JobItem(upper(entry(n), rng), status) for n, status in sightings]
    data = [dated(entry(n), minutes, variant, offset) for n, minutes, variant, offset in exports]
    rng.shuffle(data)
    data_pages = [data[i : i + page_size] for i in range(0, len(data), page_size)]
    layer = ControlLayer()
    for start in range(0, len(control), page_size):
        layer.extend(control[start : start + page_size])
    expected = make_plan(
        control,
        index_export_items(data_pages) if ordering == "booked_at" else None,
        ordering=ordering,
    )
    with spooled(data_pages) as spool:
        got = plan_job(layer, spool if ordering == "booked_at" else None, ordering=ordering)
        items = list(got.items)
        assert [
            (p.accounting_entry_id, p.sequence, p.status_at_fetch, p.booked_at) for p in items
        ] == [
            (p.accounting_entry_id, p.sequence, p.status_at_fetch, p.booked_at)
            for p in expected.items
        ]
        assert [None if p.export_json is None else json.loads(p.export_json) for p in items] == [
            None if p.export_item is None else dict(p.export_item) for p in expected.items
        ]
        assert got.items[1:3] == list(expected.items[1:3])
    assert (got.items_seen, got.distinct_entries, got.not_actionable, got.missing_export_items) == (
        expected.items_seen,
        expected.distinct_entries,
        expected.not_actionable,
        expected.missing_export_items,
    )


def upper(entry_id: str, rng: random.Random) -> str:
    """An entry id as Pleo may write it: in either case (the plan keeps it as written)."""
    return entry_id.upper() if rng.random() < 0.1 else entry_id


def dated(entry_id: str, minutes: int, variant: int, offset: bool) -> ExportItem:
    """A data-layer item dated ``minutes`` from a base, written in one of a few ways."""
    moment = BASE + timedelta(minutes=minutes, microseconds=variant)
    date = (
        moment.astimezone(timezone(timedelta(hours=2))).isoformat()
        if offset
        else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )
    payload = {"accountingEntryId": entry_id, "date": date, "v": variant}
    return ExportItem(entry_id, date, moment, json.dumps(payload).encode())
