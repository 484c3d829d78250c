"""The schema-1 item message: checked field by field before anything acts on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumers.erp import Entry
from producer.config import MESSAGE_SCHEMA
from producer.models import ACTIONABLE_ITEM_STATUSES, is_uuid

_REQUIRED = (
    "schema",
    "job_id",
    "company_id",
    "accounting_entry_id",
    "sequence",
    "total",
    "status_at_fetch",
    "booked_at",
    "export_item",
)


class MessageRejected(ValueError):
    """A message that can never be processed (unknown schema, malformed): dropped, not retried."""


def parse_message(kwargs: Mapping[str, Any]) -> Entry:
    """The Entry a schema-1 message describes, or MessageRejected saying what is wrong."""
    schema = kwargs.get("schema")
    if schema != MESSAGE_SCHEMA:
        raise MessageRejected(f"unknown message schema {schema!r}; this worker reads schema 1")
    missing = [key for key in _REQUIRED if key not in kwargs]
    if missing:
        raise MessageRejected(f"message lacks {', '.join(missing)}")
    for key in ("job_id", "accounting_entry_id"):
        if not is_uuid(kwargs[key]):
            raise MessageRejected(f"{key} {kwargs[key]!r} is not a UUID")
    company_id = kwargs["company_id"]
    if company_id is not None and not is_uuid(company_id):
        raise MessageRejected(f"company_id {company_id!r} is not a UUID")
    sequence, total = kwargs["sequence"], kwargs["total"]
    if not _count(sequence) or not _count(total) or sequence >= total:
        raise MessageRejected(f"sequence {sequence!r} is not a position in a plan of {total!r}")
    if kwargs["status_at_fetch"] not in ACTIONABLE_ITEM_STATUSES:
        raise MessageRejected(f"status_at_fetch {kwargs['status_at_fetch']!r} is not actionable")
    booked_at, export_item = kwargs["booked_at"], kwargs["export_item"]
    if booked_at is not None and not isinstance(booked_at, str):
        raise MessageRejected("booked_at must be a string or null")
    if export_item is not None and not isinstance(export_item, dict):
        raise MessageRejected("export_item must be an object or null")
    if (
        export_item is not None
        and export_item.get("accountingEntryId") != kwargs["accounting_entry_id"]
    ):
        raise MessageRejected("export_item belongs to another accounting entry")
    return Entry(
        accounting_entry_id=kwargs["accounting_entry_id"].lower(),
        job_id=kwargs["job_id"].lower(),
        company_id=company_id,
        sequence=sequence,
        booked_at=booked_at,
        export_item=export_item,
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
