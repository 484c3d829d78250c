"""Item messages are checked field by field before a worker acts on them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.utils.json import loads as kombu_loads

from contract.message import (
    FIELDS,
    ItemMessage,
    MessageRejected,
    escape_payload,
    escape_payload_json,
    fields_of,
    placement,
    stamp,
    unescape_payload,
)
from tests.support.pleo_json import JSON_VALUES

JOB = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"
ENTRY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def message(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": 1,
        "job_id": JOB,
        "company_id": None,
        "accounting_entry_id": ENTRY,
        "sequence": 3,
        "total": 10,
        "status_at_fetch": "pending",
        "booked_at": "2026-01-01T00:00:00Z",
        "export_item": {"accountingEntryId": ENTRY},
    }
    base.update(changes)
    return base


def test_valid_message_becomes_an_entry() -> None:
    """A well-formed schema-1 message gives the Entry the adapter needs."""
    entry = ItemMessage.parse(message())
    assert (entry.job_id, entry.accounting_entry_id, entry.sequence) == (JOB, ENTRY, 3)
    assert entry.export_item == {"accountingEntryId": ENTRY}


def test_payload_may_be_absent() -> None:
    """export_item and booked_at may be null (entry_id ordering, or no data-layer item)."""
    entry = ItemMessage.parse(message(export_item=None, booked_at=None))
    assert entry.export_item is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"schema": 3}, "schema"),
        ({"schema": None}, "schema"),
        ({"schema": True}, "schema"),
        ({"schema": 2}, "published_at"),
        ({"schema": 2, "published_at": "yesterday"}, "published_at"),
        ({"schema": 2, "published_at": "2026-01-01T00:00:00"}, "published_at"),
        ({"job_id": "x"}, "job_id"),
        ({"accounting_entry_id": 7}, "accounting_entry_id"),
        ({"company_id": "acme"}, "company_id"),
        ({"sequence": 10}, "sequence"),
        ({"sequence": -1}, "sequence"),
        ({"sequence": True}, "sequence"),
        ({"total": "10"}, "sequence"),
        ({"status_at_fetch": "successful"}, "status_at_fetch"),
        ({"booked_at": 20260101}, "booked_at"),
        ({"export_item": []}, "export_item"),
        ({"export_item": {"accountingEntryId": JOB}}, "another accounting entry"),
    ],
)
def test_malformed_messages_are_rejected(changes: dict[str, Any], words: str) -> None:
    """Each malformed field is refused with a reason naming it."""
    with pytest.raises(MessageRejected, match=words):
        ItemMessage.parse(message(**changes))


def test_missing_keys_are_named() -> None:
    """A message lacking keys names them."""
    broken = message()
    del broken["total"], broken["booked_at"]
    with pytest.raises(MessageRejected, match="total"):
        ItemMessage.parse(broken)


def test_the_one_definition_encodes_what_it_parses() -> None:
    """Encoding and parsing are one definition: a parsed message encodes back to its kwargs."""
    kwargs = message(company_id="1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
    parsed = ItemMessage.parse(kwargs)
    assert parsed.to_kwargs() == kwargs
    assert list(parsed.to_kwargs()) == list(fields_of(1))
    newer = message(schema=2, published_at="2026-01-02T03:04:05.678Z")
    parsed = ItemMessage.parse(newer)
    assert parsed.to_kwargs() == newer
    assert list(parsed.to_kwargs()) == list(FIELDS) == [*fields_of(1), "published_at"]


def test_schema_2_is_schema_1_plus_when_it_was_written() -> None:
    """Schema 2 adds ``published_at``; the worker gets the queue wait from it, schema 1 none."""
    one = ItemMessage.parse(message())
    two = one.written_as(2, "2026-01-02T03:04:05.678Z")
    assert two.to_kwargs() == {**one.to_kwargs(), "schema": 2, "published_at": two.published_at}
    assert two.waited(1767323045.678 + 2.5) == pytest.approx(2.5)
    assert one.waited(1767323045.678) is None
    assert two.written_as(1) == one
    assert stamp(datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"


def test_a_worker_can_be_narrowed_to_the_old_schema() -> None:
    """``reads`` narrows what a worker accepts: an upgrade rehearsal's old worker refuses 2."""
    newer = message(schema=2, published_at="2026-01-02T03:04:05.678Z")
    with pytest.raises(MessageRejected, match=r"reads schema 1$"):
        ItemMessage.parse(newer, reads={1})
    assert ItemMessage.parse(message(), reads={1}).schema == 1


def message_table(document: Path, heading: str = "### The item message") -> list[str]:
    """The keys listed in the item message table under ``heading`` of ``document``, in order."""
    section = document.read_text().split(heading, 1)[1].splitlines()[1:]
    rows = []
    for line in section:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append(line.split("|")[1].strip().strip("`"))
    return rows[2:]  # past the header and its rule


def test_the_fields_are_the_contracts_table() -> None:
    """Schema 1's kwargs are ARCHITECTURE.md's table, schema 2's the README's, in their order.

    The repository's ARCHITECTURE.md, and the team's shared contract beside the checkout where
    there is one.
    """
    root = Path(__file__).resolve().parents[2]
    assert message_table(root / "ARCHITECTURE.md") == list(fields_of(1))
    shared = root.parent / "shared" / "ARCHITECTURE.md"
    if shared.exists():
        assert message_table(shared) == list(fields_of(1))
    assert message_table(root / "README.md", "### Schema 2") == list(fields_of(2))


@given(
    sequence=st.integers(min_value=0, max_value=2**70),
    total=st.integers(min_value=1, max_value=2**70),
    status=st.text(max_size=12),
    booked_at=st.none() | st.text(max_size=40),
)
def test_placement_is_the_json_of_its_four_values(
    sequence: int, total: int, status: str, booked_at: str | None
) -> None:
    """``placement``, written out for speed, is exactly the compact JSON array it stands for."""
    expected = json.dumps([sequence, total, status, booked_at], separators=(",", ":"))
    assert placement(sequence, total, status, booked_at) == expected


@given(payload=JSON_VALUES)
def test_the_escape_is_undone_exactly(payload: Any) -> None:
    """Whatever JSON value, with kombu's marker objects in it: unescape(escape(v)) == v, and
    kombu's decoder leaves the escaped value as it is (nothing in it is an object it acts on)."""
    escaped = escape_payload(payload)
    assert unescape_payload(escaped) == payload
    assert kombu_loads(json.dumps(escaped)) == escaped
    raw = json.dumps(payload, ensure_ascii=False).encode()
    assert json.loads(escape_payload_json(raw)) == escaped
    if escaped is payload:
        assert escape_payload_json(raw) is raw


@pytest.mark.parametrize(
    "raw",
    [
        b'{"k": {"\\u005f_type__": "datetime", "__value__": "2026-01-01"}}',
        b'{"k": {"__type__": "datetime", "\\u005F\\u005Fvalue__": "2026-01-01"}}',
        b'{"k": [{"__pleo_escaped__": 1}]}',
    ],
)
def test_a_marker_spelled_with_escapes_is_still_escaped(raw: bytes) -> None:
    """However Pleo spells the keys kombu acts on, the payload reaches the worker as sent."""
    text = escape_payload_json(raw)
    assert text != raw
    assert unescape_payload(kombu_loads(text)) == json.loads(raw)


def test_non_ascii_escapes_leave_the_bytes_alone() -> None:
    """``\\u00e5`` or ``\\u2615`` cannot spell a marker key: such a payload is passed on as is."""
    raw = b'{"note": "p\\u00e5 kontoret \\u2615", "__type__x": 1}'
    assert escape_payload_json(raw) is raw
