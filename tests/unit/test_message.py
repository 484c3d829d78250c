"""Item messages are checked field by field before a worker acts on them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from contract.message import FIELDS, ItemMessage, MessageRejected

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
        ({"schema": 2}, "schema"),
        ({"schema": None}, "schema"),
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
    assert list(parsed.to_kwargs()) == list(FIELDS)


def test_the_fields_are_the_contracts_table() -> None:
    """The kwargs are exactly the rows of ARCHITECTURE.md's schema-1 table, in its order."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "ARCHITECTURE.md"
    own = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"
    text = (shared if shared.exists() else own).read_text()
    # The table is the first run of "|" lines after the heading, a blank line before it or not.
    section = text.split("### The item message", 1)[1].splitlines()[1:]
    start = next(n for n, line in enumerate(section) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), section[start:]))
    rows = [line.split("|")[1].strip().strip("`") for line in table[2:]]
    assert rows == list(FIELDS)
