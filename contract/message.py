"""The item message: the keyword arguments of ``consumers.export_item``, schemas 1 and 2.

One typed definition, used by the producer to encode (``ItemMessage.to_kwargs``) and by the ERP
workers to parse (``ItemMessage.parse``), so the two cannot drift apart. The fields and their
meaning are the public contract in ARCHITECTURE.md; how the kwargs travel (Celery's envelope,
kombu's Redis layout) is ``contract/wire.py``.

``export_item`` travels as Pleo sent it, with one exception: kombu's JSON decoder turns any object
whose keys are exactly ``__type__`` and ``__value__`` into a Python value (a datetime, bytes, a
Decimal...) or refuses the whole message, so such an object (and, to keep the escape reversible,
any object keyed ``__pleo_escaped__`` alone) is written
``{"__pleo_escaped__": [[key, value], ...]}`` (``escape_payload``) and read back by
``ItemMessage.parse`` (``unescape_payload``).

Schemas only ever add fields (``ADDED_IN``): schema 2 is schema 1 plus ``published_at``, when the
producer (or the repair sweep) wrote the message, which the worker turns into the time the message
waited in the queue. A worker reads schema N and N-1 (``READS``); which one a producer writes is
``contract/schemas.py``'s choice, so a rolling upgrade never hands a worker a schema it cannot read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from contract.errors import shown
from contract.ids import is_uuid

# The newest schema this code writes and reads, and every schema it reads (N and N-1).
SCHEMA: Final = 2
READS: Final = frozenset({1, 2})
# The schema each field after schema 1's first appeared in; a schema's fields are those up to it.
ADDED_IN: Final = {"published_at": 2}

# Pleo item statuses an entry can have when it is planned: the only ones worth a message.
STATUSES_AT_FETCH: Final = frozenset({"pending", "in_progress"})


class MessageRejected(ValueError):
    """A message this worker cannot process (unknown schema, malformed): parked, never dropped."""


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
    schema: int = 1
    # Schema 2: when the message was written, UTC ISO-8601 with milliseconds (``stamp``).
    published_at: str | None = None

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

    def written_as(self, schema: int, published_at: str | None = None) -> ItemMessage:
        """This message in ``schema``, stamped ``published_at`` (default now) where it has one."""
        if schema not in READS:
            raise ValueError(f"unknown message schema {schema!r}")
        if schema < ADDED_IN["published_at"]:
            return replace(self, schema=schema, published_at=None)
        return replace(self, schema=schema, published_at=published_at or stamp())

    def to_kwargs(self) -> dict[str, Any]:
        """The message's keyword arguments, in the order ARCHITECTURE.md lists them.

        ``export_item`` as it travels: escaped where kombu's decoder would change it.
        """
        kwargs = {name: getattr(self, name) for name in fields_of(self.schema)}
        kwargs["export_item"] = escape_payload(kwargs["export_item"])
        return kwargs

    @classmethod
    def parse(cls, kwargs: Mapping[str, Any], reads: Collection[int] = READS) -> ItemMessage:
        """The message ``kwargs`` describe (ids lower-cased), or MessageRejected saying why not.

        ``reads`` narrows the schemas accepted (``ERP_MESSAGE_SCHEMAS``: an upgrade rehearsal's
        "old" worker reads schema 1 only).
        """
        schema = kwargs.get("schema")
        if isinstance(schema, bool) or schema not in READS or schema not in reads:
            readable = " and ".join(str(n) for n in sorted(reads))
            raise MessageRejected(
                f"unknown message schema {shown(schema)}; this worker reads schema {readable}"
            )
        missing = [key for key in fields_of(schema) if key not in kwargs]
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
        booked_at, export_item = kwargs["booked_at"], unescape_payload(kwargs["export_item"])
        if booked_at is not None and not isinstance(booked_at, str):
            raise MessageRejected("booked_at must be a string or null")
        if export_item is not None and not isinstance(export_item, dict):
            raise MessageRejected("export_item must be an object or null")
        if (
            export_item is not None
            and export_item.get("accountingEntryId") != kwargs["accounting_entry_id"]
        ):
            raise MessageRejected("export_item belongs to another accounting entry")
        published_at = kwargs.get("published_at") if schema >= ADDED_IN["published_at"] else None
        if schema >= ADDED_IN["published_at"] and _instant(published_at) is None:
            raise MessageRejected("published_at must be an ISO-8601 UTC time")
        return cls(
            job_id=kwargs["job_id"].lower(),
            company_id=company_id,
            accounting_entry_id=kwargs["accounting_entry_id"].lower(),
            sequence=sequence,
            total=total,
            status_at_fetch=status,
            booked_at=booked_at,
            export_item=export_item,
            schema=schema,
            published_at=published_at,
        )

    def waited(self, now: float) -> float | None:
        """Seconds from ``published_at`` to ``now`` (epoch seconds), or None in schema 1."""
        instant = _instant(self.published_at)
        return None if instant is None else max(0.0, now - instant)


# Every keyword argument of the newest schema, in the contract's order: ``schema`` first, then the
# dataclass's fields as declared (each schema's additions after the last's).
FIELDS: Final = (
    "schema",
    *(f.name for f in fields(ItemMessage) if f.name != "schema"),
)


def fields_of(schema: int) -> tuple[str, ...]:
    """The keyword arguments of ``schema``, in the contract's order."""
    return tuple(name for name in FIELDS if ADDED_IN.get(name, 1) <= schema)


def stamp(now: datetime | None = None) -> str:
    """``published_at`` for ``now`` (default the current time): ``2026-01-02T03:04:05.678Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def placement(sequence: int, total: int, status_at_fetch: str, booked_at: str | None) -> str:
    """What rebuilding a message needs beyond its ids: JSON ``[sequence, total, status, date]``.

    The producer records it beside each published entry (``contract.keys.placed_key``), so the
    repair sweep rebuilds a lost message exactly, with no re-plan.
    """
    # json.dumps([sequence, total, status_at_fetch, booked_at], separators=(",", ":")), written
    # out: it is called once per published entry (tests/unit/test_message.py compares them).
    booked = "null" if booked_at is None else encode_basestring_ascii(booked_at)
    return f"[{int(sequence)},{int(total)},{encode_basestring_ascii(status_at_fetch)},{booked}]"


def _instant(value: object) -> float | None:
    """Epoch seconds of an ISO-8601 time with a UTC offset, or None for anything else."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# kombu.utils.json.object_hook acts on objects with exactly these keys.
_KOMBU_KEYS: Final = frozenset({"__type__", "__value__"})
ESCAPED: Final = "__pleo_escaped__"
_ESCAPED_KEYS: Final = frozenset({ESCAPED})
# Every JSON text that decodes to a key kombu or the escape acts on holds one of these bytes, or
# spells an ASCII character of it as a \u00XX escape (the only escapes that can stand for one).
_MARKERS: Final = (b"__type__", ESCAPED.encode())
_ASCII_ESCAPE: Final = re.compile(rb"\\u00[2-7]")


def _needs_escape(obj: dict[str, Any]) -> bool:
    keys = obj.keys()
    return len(keys) in (1, 2) and keys in (_KOMBU_KEYS, _ESCAPED_KEYS)


def escape_payload(value: Any) -> Any:
    """``value`` with every object kombu's JSON decoder would act on escaped (see the module).

    The same object back when nothing needed it (the common case).
    """
    if isinstance(value, dict):
        items = {key: escape_payload(item) for key, item in value.items()}
        if _needs_escape(value):
            # Sorted, so the escape does not depend on the order Pleo wrote the keys in.
            return {ESCAPED: [[key, items[key]] for key in sorted(items)]}
        if all(items[key] is item for key, item in value.items()):
            return value
        return items
    if isinstance(value, list):
        escaped = [escape_payload(item) for item in value]
        if all(new is old for new, old in zip(escaped, value, strict=True)):
            return value
        return escaped
    return value


def unescape_payload(value: Any) -> Any:
    """``escape_payload`` undone (an object that is not an escape is left as it is).

    The same object back when it held no escape.
    """
    if isinstance(value, dict):
        if value.keys() == _ESCAPED_KEYS and _is_pairs(value[ESCAPED]):
            return {key: unescape_payload(item) for key, item in value[ESCAPED]}
        items = {key: unescape_payload(item) for key, item in value.items()}
        if all(items[key] is item for key, item in value.items()):
            return value
        return items
    if isinstance(value, list):
        unescaped = [unescape_payload(item) for item in value]
        if all(new is old for new, old in zip(unescaped, value, strict=True)):
            return value
        return unescaped
    return value


def _is_pairs(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    )


def escape_payload_json(raw: bytes) -> bytes:
    """A payload's JSON as it travels: ``raw`` itself unless an object in it needs the escape.

    Only a text holding one of ``_MARKERS`` can decode to such an object, so any other is passed
    on without being decoded; one that needs the escape is written as kombu writes JSON.
    """
    # Two plain searches first: most payloads hold neither "__" nor a "\u00" escape.
    if (b"__" not in raw and b"\\u00" not in raw) or (
        not any(marker in raw for marker in _MARKERS) and _ASCII_ESCAPE.search(raw) is None
    ):
        return raw
    decoded = json.loads(raw)
    escaped = escape_payload(decoded)
    if escaped is decoded:
        return raw
    return json.dumps(escaped).encode()
