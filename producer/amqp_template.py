"""One job's item messages for RabbitMQ, filled in from one message Celery and kombu built.

The AMQP twin of ``producer/template.py``: ``AmqpTemplate`` asks ``contract.wire.AmqpEncoder``
for one reference message per job, with placeholders where entries differ, and from then on
fills in only those: in the body the entry id, sequence, status, date, payload JSON (as it was
spooled) and schema 2's ``published_at``; in the headers the task id (``id``, ``root_id``) and
``kwargsrepr``; in the properties ``correlation_id``. Every other header and property is the
reference's, so a message equals what ``send_task`` would publish for the same entry
(``tests/integration/test_amqp_messages.py`` compares them), at a fraction of the cost.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

import amqp
from amqp.serialization import dumps as amqp_dumps
from celery import Celery

from contract.message import ItemMessage
from contract.wire import AmqpEncoder, celery_message
from producer.plan import PlannedItem
from producer.template import _BOOKED, _ENTRY, _EXPORT, _PUBLISHED, _SEQ, _STATUS, _TASK, _Cut

# The headers that carry the task id, and the one naming the entry and its place.
_ID_HEADERS = ("id", "root_id")
_REPR_HEADER = "kwargsrepr"
# Stand-ins while the properties are serialized once: a task id is always 36 characters.
_TASK_STANDIN = "@@pleo:task-id-standin-36-chars@@@@@"
_REPR_STANDIN = "@@pleo:kwargsrepr@@"
_LENGTH = struct.Struct(">I")


class AmqpTemplate:
    """One job's item messages as ``amqp.Message`` objects, ready for ``basic_publish``."""

    def __init__(
        self,
        app: Celery,
        encoder: AmqpEncoder,
        job_id: str,
        company_id: str | None,
        total: int,
        *,
        schema: int = 1,
    ) -> None:
        message = ItemMessage(
            job_id=job_id,
            company_id=company_id,
            accounting_entry_id=_ENTRY,
            sequence=0,
            total=total,
            status_at_fetch=_STATUS,
            booked_at=_BOOKED,
            export_item=None,
        ).written_as(schema, _PUBLISHED)
        kwargs = message.to_kwargs()
        kwargs.update(sequence=_SEQ, export_item=_EXPORT)
        reference, self.exchange, self.routing_key = encoder.encode(
            celery_message(app, _TASK, kwargs)
        )
        body = reference.body.decode() if isinstance(reference.body, bytes) else reference.body
        # Body slots: 0 entry, 1 sequence, 2 status, 3 booked_at JSON, 4 payload JSON, and in
        # schema 2, 5 published_at (as in producer/template.py).
        body_slots = {_ENTRY: 0, f'"{_SEQ}"': 1, _STATUS: 2, f'"{_BOOKED}"': 3, f'"{_EXPORT}"': 4}
        if message.published_at is not None:
            body_slots[_PUBLISHED] = 5
        self._body = _Cut(body, body_slots)
        self._stamped = message.published_at is not None
        properties = dict(reference.properties)
        self._headers: dict[str, Any] = dict(properties.pop("application_headers"))
        correlation = properties.pop("correlation_id", None)
        self._properties = properties
        # kwargsrepr slots: 0 entry, 1 sequence (quoted in the reference: it was a string there).
        self._repr = _Cut(self._headers[_REPR_HEADER], {_ENTRY: 0, f"'{_SEQ}'": 1})
        self._serialized = _SerializedProperties(self._headers, properties)
        if (
            len(self._body.slots) != len(body_slots)
            or sorted(self._repr.slots) != [0, 1]
            or any(self._headers[name] != _TASK for name in _ID_HEADERS)
            or correlation != _TASK
            or _placeholders_left(self._headers, skip=(*_ID_HEADERS, _REPR_HEADER))
            or _placeholders_left(properties, skip=())
        ):
            raise RuntimeError("Celery's message layout changed: the template cannot be built.")

    def render(
        self, item: PlannedItem, task_id: str, export_json: str | None, published_at: str
    ) -> amqp.Message:
        """``item``'s message; ``export_json`` is its payload as kombu encodes it.

        ``published_at`` (schema 2) is the batch's write time, as ``contract.message.stamp``
        gives it; ignored in schema 1.
        """
        entry = item.accounting_entry_id
        seq = str(item.sequence)
        booked = "null" if item.booked_at is None else encode_basestring_ascii(item.booked_at)
        export = "null" if export_json is None else export_json
        published = published_at if self._stamped else ""
        body = self._body.fill((entry, seq, item.status_at_fetch, booked, export, published))
        kwargsrepr = self._repr.fill((entry, seq))
        headers = dict(self._headers)
        headers["id"] = headers["root_id"] = task_id
        headers[_REPR_HEADER] = kwargsrepr
        message = _Prepared(
            body, application_headers=headers, correlation_id=task_id, **self._properties
        )
        message.serialized = self._serialized.fill(task_id, kwargsrepr)
        return message


class _Prepared(amqp.Message):  # type: ignore[misc]
    """An ``amqp.Message`` whose properties were serialized when it was built (the same bytes)."""

    serialized = b""

    def _serialize_properties(self) -> bytes:
        return self.serialized


class _SerializedProperties:
    """A message's serialized properties, cut where the task id and ``kwargsrepr`` go.

    py-amqp serializes a message's properties (its Celery headers: a table of twenty entries)
    on every publish, the larger part of a publish's cost. They differ from entry to entry only
    in the task id (36 characters, in ``id``, ``root_id`` and ``correlation_id``) and in
    ``kwargsrepr``, whose length goes into its own length prefix and the headers table's: both
    are patched in, and the constructor proves the result equals py-amqp's own serialization.
    """

    def __init__(self, headers: Mapping[str, Any], properties: Mapping[str, Any]) -> None:
        standin = dict(headers)
        standin["id"] = standin["root_id"] = _TASK_STANDIN
        standin[_REPR_HEADER] = _REPR_STANDIN
        whole = amqp.Message(
            "", application_headers=standin, correlation_id=_TASK_STANDIN, **properties
        )._serialize_properties()
        table = amqp_dumps(b"F", [standin])
        repr_item = b"S" + _LENGTH.pack(len(_REPR_STANDIN)) + _REPR_STANDIN.encode()
        at_table, at_repr = whole.find(table), whole.find(repr_item)
        if whole.count(table) != 1 or whole.count(repr_item) != 1 or at_table < 0:
            raise RuntimeError("py-amqp's property layout changed: the template cannot be built.")
        self._table_size = len(table) - _LENGTH.size
        self._head = whole[:at_table]
        self._middle = whole[at_table + _LENGTH.size : at_repr + 1]
        self._tail = whole[at_repr + len(repr_item) :]
        self._standin = _TASK_STANDIN.encode()
        for sample in ("0", "8f0c" * 9, "entry-" + "9" * 60):
            task_id = str(uuid.uuid5(uuid.NAMESPACE_OID, sample))
            repr_text = f"{{'accounting_entry_id': '{sample}', 'sequence': {len(sample)}}}"
            check = dict(headers)
            check["id"] = check["root_id"] = task_id
            check[_REPR_HEADER] = repr_text
            want = amqp.Message(
                "", application_headers=check, correlation_id=task_id, **properties
            )._serialize_properties()
            if self.fill(task_id, repr_text) != want:
                raise RuntimeError(
                    "py-amqp's property layout changed: the template cannot be built."
                )

    def fill(self, task_id: str, kwargsrepr: str) -> bytes:
        """The serialized properties of the message with this task id and ``kwargsrepr``."""
        text = kwargsrepr.encode("utf-8", "surrogatepass")
        grown = len(text) - len(_REPR_STANDIN)
        return b"".join(
            (
                self._head,
                _LENGTH.pack(self._table_size + grown),
                self._middle,
                _LENGTH.pack(len(text)),
                text,
                self._tail,
            )
        ).replace(self._standin, task_id.encode())


def _placeholders_left(values: Mapping[str, Any], *, skip: tuple[str, ...]) -> bool:
    """Whether any value but those named in ``skip`` still holds a placeholder."""
    return any("@@pleo:" in repr(value) for name, value in values.items() if name not in skip)
