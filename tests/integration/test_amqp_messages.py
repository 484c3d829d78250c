"""The RabbitMQ path's messages and confirms, against kombu and a real RabbitMQ.

- ``AmqpTemplate`` builds the message kombu itself would publish for the same entry: the same
  body, headers and properties, and the same serialized property bytes (which it patches rather
  than serializes).
- ``Confirms`` waits for a window of publishes at once, and a ``basic.nack`` (a queue at its
  length limit refusing publishes) ends the wait with BrokerUnavailable.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kombu import Connection

from contract.celery_app import ExportCelery, make_app
from contract.errors import BrokerUnavailable
from contract.message import ItemMessage, escape_payload_json, stamp
from contract.settings import Settings
from contract.wire import AmqpEncoder, celery_message, task_id_for
from producer.amqp_template import AmqpTemplate
from producer.confirms import Confirms
from producer.plan import PlannedItem
from tests.conftest import need_service
from tests.support.pleo_json import JSON_VALUES, SPELLINGS, pleo_bytes
from tests.support.serial import taking_turns

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
AMQP_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")
JOB_ID = "2f7c6a1e-9b3d-4e5f-8a7b-6c5d4e3f2a1b"
COMPANY_ID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"


@pytest.fixture
def rabbit() -> Iterator[Connection]:
    """A connection to the test RabbitMQ, taking turns with the suite's other RabbitMQ tests."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        need_service("RabbitMQ on 127.0.0.1:5672")
    with taking_turns("rabbitmq"), Connection(AMQP_URL) as conn:
        conn.default_channel  # noqa: B018 - connects
        yield conn


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entry=st.uuids().map(str),
    sequence=st.integers(min_value=0, max_value=10**7),
    total=st.integers(min_value=1, max_value=10**7),
    status=st.sampled_from(["pending", "in_progress"]),
    booked_at=st.one_of(st.none(), st.just("2025-03-04T05:06:07+01:00")),
    payload=st.none() | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6),
    spelling=st.sampled_from(sorted(SPELLINGS)),
    schema=st.sampled_from([1, 2]),
)
def test_template_message_decodes_as_the_one_kombu_publishes(
    rabbit: Connection,
    *,
    entry: str,
    sequence: int,
    total: int,
    status: str,
    booked_at: str | None,
    payload: dict[str, Any] | None,
    spelling: str,
    schema: int,
) -> None:
    """Headers, properties and their bytes are kombu's; through RabbitMQ, the same kwargs.

    The body carries the payload as Pleo spelled it (escaped only where kombu's decoder would
    act on an object): both messages go through a real queue and are decoded by kombu's AMQP
    transport as a stock worker decodes them.
    """
    sequence = min(sequence, total - 1)
    if payload is not None:
        payload["accountingEntryId"] = entry
    app = make_app(Settings(broker_url=AMQP_URL))
    encoder = AmqpEncoder(app, rabbit)
    try:
        template = AmqpTemplate(app, encoder, JOB_ID, COMPANY_ID, total, schema=schema)
        published_at = stamp()
        item = PlannedItem(entry, sequence, status, booked_at, payload)
        raw = None if payload is None else pleo_bytes(payload, spelling)
        ours = template.render(
            PlannedItem(entry, sequence, status, booked_at),
            task_id_for(JOB_ID, entry),
            None if raw is None else escape_payload_json(raw).decode(),
            published_at,
        )
        reference = _kombu_message(app, item, total, schema, published_at)
        theirs, exchange, routing_key = encoder.encode(reference)
    finally:
        encoder.close()
    assert ours.properties == theirs.properties
    assert ours._serialize_properties() == theirs._serialize_properties()
    assert (template.exchange, template.routing_key) == (exchange, routing_key)
    kwargs = _through_rabbit(rabbit, ours)
    assert kwargs == _through_rabbit(rabbit, theirs)
    parsed = ItemMessage.parse(kwargs)
    assert parsed.export_item == payload
    assert (parsed.accounting_entry_id, parsed.sequence, parsed.total) == (entry, sequence, total)


def _through_rabbit(rabbit: Connection, message: amqp.Message) -> dict[str, Any]:
    """``message`` published to a queue of its own, got back, decoded as a stock worker does."""
    channel = rabbit.default_channel
    queue, _count, _consumers = channel.queue_declare(exclusive=True, auto_delete=True)
    try:
        channel.basic_publish(message, exchange="", routing_key=queue)
        got = None
        for _ in range(100):
            got = channel.basic_get(queue, no_ack=True)
            if got is not None:
                break
        assert got is not None
        args, kwargs, _embed = channel.message_to_python(got).decode()
    finally:
        channel.queue_delete(queue)
    assert args == []
    assert isinstance(kwargs, dict)
    return kwargs


def _kombu_message(
    app: ExportCelery, item: PlannedItem, total: int, schema: int, published_at: str
) -> Any:
    """What ``celery_message`` builds for ``item`` (the path before this template)."""
    message = item.message(JOB_ID, COMPANY_ID, total).written_as(schema, published_at)
    return celery_message(app, task_id_for(JOB_ID, item.accounting_entry_id), message.to_kwargs())


def test_confirms_wait_for_a_window_and_a_nack_ends_it(rabbit: Connection) -> None:
    """300 publishes confirmed as one window; a queue refusing publishes: BrokerUnavailable."""
    channel = rabbit.channel()
    plain, full = (f"pleo-test-confirms-{uuid.uuid4()}" for _ in range(2))
    channel.queue_declare(plain, auto_delete=True)
    channel.queue_declare(
        full, auto_delete=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"}
    )
    try:
        confirms = Confirms(rabbit, channel, timeout=30)
        for _ in range(300):
            channel.basic_publish(amqp.Message(b"x"), exchange="", routing_key=plain)
        confirms.wait(confirms.published(300))
        assert confirms.acknowledged == 300
        assert channel.queue_declare(plain, passive=True).message_count == 300

        for _ in range(8):
            channel.basic_publish(amqp.Message(b"x"), exchange="", routing_key=full)
        with pytest.raises(BrokerUnavailable, match="refused a publish"):
            confirms.wait(confirms.published(8))
    finally:
        for name in (plain, full):
            channel.queue_delete(name)
        channel.close()
