"""The item message: the keyword arguments of ``consumers.export_item``, schema 1.

One typed definition, used by the producer to encode (``ItemMessage.to_kwargs``) and by the ERP
workers to parse (``ItemMessage.parse``), so the two cannot drift apart. The fields and their
meaning are the public contract in ARCHITECTURE.md; how the kwargs travel (Celery's envelope,
kombu's Redis layout) is ``contract/wire.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from contract.ids import is_uuid

SCHEMA: Final = 1

# Pleo item statuses an entry can have when it is planned: the only ones worth a message.
STATUSES_AT_FETCH: Final = frozenset({"pending", "in_progress"})


class MessageRejected(ValueError):
    """A message that can never be processed (unknown schema, malformed): dropped, not retried."""


@dataclass(frozen=True, slots=True)
class ItemMessage:
    """One planned entry of a job, as a message to the ERP workers."""

    job_id: str
    company_id: str | None
    accounting_entry_id: str
    sequence: int
    total: int
    status_at_fetch: str
    booked_at: str | None
    export_item: Mapping[str, Any] | None
    schema: int = SCHEMA

    def placement(self) -> str:
        """Where the message sits in its job's plan (``placement``), as recorded at publish."""
        return placement(self.sequence, self.total, self.status_at_fetch, self.booked_at)

    @classmethod
    def rebuilt(
        cls,
        job_id: str,
        company_id: str | None,
        accounting_entry_id: str,
        placed: str,
        export_item: Mapping[str, Any] | None,
    ) -> ItemMessage:
        """A published message built again from its recorded placement and its payload."""
        sequence, total, status_at_fetch, booked_at = json.loads(placed)
        return cls(
            job_id=job_id,
            company_id=company_id,
            accounting_entry_id=accounting_entry_id,
            sequence=sequence,
            total=total,
            status_at_fetch=status_at_fetch,
            booked_at=booked_at,
            export_item=export_item,
        )

    def to_kwargs(self) -> dict[str, Any]:
        """The message's keyword arguments, in the order ARCHITECTURE.md lists them."""
        kwargs = {"schema": self.schema}
        kwargs.update({name: getattr(self, name) for name in FIELDS if name != "schema"})
        return kwargs

    @classmethod
    def parse(cls, kwargs: Mapping[str, Any]) -> ItemMessage:
        """The message ``kwargs`` describe (ids lower-cased), or MessageRejected saying why not."""
        schema = kwargs.get("schema")
        if schema != SCHEMA:
            raise MessageRejected(
                f"unknown message schema {schema!r}; this worker reads schema {SCHEMA}"
            )
        missing = [key for key in FIELDS if key not in kwargs]
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
        status = kwargs["status_at_fetch"]
        if status not in STATUSES_AT_FETCH:
            raise MessageRejected(f"status_at_fetch {status!r} is not actionable")
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
        return cls(
            job_id=kwargs["job_id"].lower(),
            company_id=company_id,
            accounting_entry_id=kwargs["accounting_entry_id"].lower(),
            sequence=sequence,
            total=total,
            status_at_fetch=status,
            booked_at=booked_at,
            export_item=export_item,
        )


# The keyword arguments of schema 1, in the contract's order.
FIELDS: Final = (
    "schema",
    *(f.name for f in fields(ItemMessage) if f.name != "schema"),
)


def placement(sequence: int, total: int, status_at_fetch: str, booked_at: str | None) -> str:
    """What rebuilding a message needs beyond its ids: JSON ``[sequence, total, status, date]``.

    The producer records it beside each published entry (``contract.keys.placed_key``), so the
    repair sweep rebuilds a lost message exactly, with no re-plan.
    """
    return json.dumps([sequence, total, status_at_fetch, booked_at], separators=(",", ":"))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
