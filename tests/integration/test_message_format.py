"""Our messages are what Celery's own apply_async would write, and a stock worker runs them."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import kombu
import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from contract.celery_app import make_app
from contract.message import ItemMessage, escape_payload, escape_payload_json
from contract.names import ITEM_TASK, ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import MessageEncoder, celery_message, short_repr, task_id_for
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.plan import PlannedItem
from producer.template import MessageTemplate
from tests.conftest import wait_for
from tests.support.pleo_json import JSON_VALUES, SPELLINGS, body_of, pleo_bytes, redis_kwargs
from tests.support.queues import redis_queue
from tests.support.recording_app import RECEIVED_KEY

pytestmark = pytest.mark.integration
JOB = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"
ENTRY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
PUBLISHED_AT = "2026-01-02T03:04:05.678Z"


def comparable(raw: bytes | str) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(raw)
    # kombu gives every message a fresh random delivery tag, and we choose a short kwargsrepr
    # (what Flower shows); nothing else may differ.
    del envelope["properties"]["delivery_tag"]
    del envelope["headers"]["kwargsrepr"]
    return envelope


def test_encoded_message_equals_apply_async(settings: Settings, rdb: redis.Redis) -> None:
    """The bytes we LPUSH equal what Celery's send_task puts on the queue, but for two fields."""
    app = make_app(settings)
    item = PlannedItem(ENTRY, 0, "pending", "2026-01-01T00:00:00Z", {"accountingEntryId": ENTRY})
    kwargs = item.message(JOB, None, 1).to_kwargs()
    task_id = task_id_for(JOB, ENTRY)

    app.send_task(ITEM_TASK, kwargs=kwargs, task_id=task_id, queue=ITEMS_QUEUE)
    celerys = rdb.rpop(ITEMS_QUEUE)
    encoder = MessageEncoder(app, settings.broker_url)
    key, ours = encoder.encode(celery_message(app, task_id, kwargs))
    encoder.close()

    assert key == ITEMS_QUEUE
    assert celerys is not None
    assert comparable(ours) == comparable(celerys)
    assert json.loads(ours)["headers"]["kwargsrepr"] == short_repr(kwargs)


def test_stock_worker_runs_every_message(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """An unmodified `celery worker -Q pleo-export-items` receives each message once, in order."""
    job_id = sim_state.add_job(JobSpec(items=300))
    summary = produce(job_id, settings=settings, app=make_app(settings))
    published = [q.kwargs for q in redis_queue(rdb)]
    start_worker("tests.support.recording_app", ITEMS_QUEUE)

    received = wait_for(
        lambda: (r := rdb.lrange(RECEIVED_KEY, 0, -1)) and len(r) >= summary.planned and r,
        timeout=60,
        what="the worker to run every message",
    )
    deliveries = [json.loads(r) for r in received]
    assert [d["kwargs"] for d in deliveries] == published
    assert [d["task_id"] for d in deliveries] == [
        task_id_for(job_id, k["accounting_entry_id"]) for k in published
    ]
    assert rdb.llen(ITEMS_QUEUE) == 0


ODD_PAYLOADS = [
    f'{{"n": {2**64 + 1}, "m": -{2**70}}}',
    '{"when": {"__type__": "datetime", "__value__": "2026-01-01T00:00:00"}}',
    '{"x": [{"__value__": 1, "__type__": "nope"}], "y": {"__pleo_escaped__": [["a", 1]]}}',
    '{ "note" : "Kaffe p\u00e5 kontoret \u2615 ☕" }',
]


def test_a_stock_worker_runs_pleos_bytes(
    settings: Settings, rdb: redis.Redis, start_worker: Any
) -> None:
    """An unmodified worker gets each payload as Pleo meant it: big integers, kombu's markers."""
    app = make_app(settings)
    encoder = MessageEncoder(app, settings.broker_url)
    try:
        template = MessageTemplate(app, encoder, JOB, None, len(ODD_PAYLOADS))
    finally:
        encoder.close()
    entries = [task_id_for(JOB, str(n)) for n in range(len(ODD_PAYLOADS))]
    payloads = [
        f'{{"accountingEntryId": "{entry}", "p": {text}}}'.encode()
        for entry, text in zip(entries, ODD_PAYLOADS, strict=True)
    ]
    for sequence, (entry, raw) in enumerate(zip(entries, payloads, strict=True)):
        item = PlannedItem(entry, sequence, "pending", None)
        rdb.lpush(ITEMS_QUEUE, template.render(item, escape_payload_json(raw).decode()))
    start_worker("tests.support.recording_app", ITEMS_QUEUE)

    received = wait_for(
        lambda: (r := rdb.lrange(RECEIVED_KEY, 0, -1)) and len(r) >= len(entries) and r,
        timeout=60,
        what="the worker to run every message",
    )
    got = {d["task_id"]: d["kwargs"] for d in map(json.loads, received)}
    for entry, raw in zip(entries, payloads, strict=True):
        kwargs = got[task_id_for(JOB, entry)]
        assert ItemMessage.parse(kwargs).export_item == json.loads(raw)


@pytest.fixture
def kombu_encoder(settings: Settings) -> Iterator[tuple[Celery, MessageEncoder, Any]]:
    """The app, the kombu encoder the property compares against, and a real Redis channel."""
    app = make_app(settings)
    encoder = MessageEncoder(app, settings.broker_url)
    with kombu.Connection(settings.broker_url) as connection:
        yield app, encoder, connection.default_channel
    encoder.close()


@hypothesis_settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    item=st.builds(
        PlannedItem,
        st.uuids().map(str),
        st.integers(min_value=0, max_value=10**9),
        st.sampled_from(["pending", "in_progress"]),
        st.none() | st.text(max_size=40),
    ),
    payload=st.none() | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6),
    spelling=st.sampled_from(sorted(SPELLINGS)),
    company_id=st.none() | st.uuids().map(str),
    schema=st.sampled_from([1, 2]),
)
def test_a_stock_worker_decodes_the_kwargs_kombu_would_give_it(
    kombu_encoder: tuple[Celery, MessageEncoder, Any],
    *,
    item: PlannedItem,
    payload: dict[str, Any] | None,
    spelling: str,
    company_id: str | None,
    schema: int,
) -> None:
    """Pleo's bytes in our message: a stock worker decodes the kwargs of kombu's own message.

    For any entry, schema and payload, however Pleo spelled its JSON (integers past 64 bits,
    ``__type__``/``__value__`` objects included): the envelope is kombu's but for the body; the
    body is Pleo's bytes where no object needed the escape; and the worker's kwargs, decoded by
    kombu's Redis channel, equal those of the message kombu builds, with the payload as Pleo
    meant it once ``ItemMessage.parse`` undoes the escape.
    """
    app, encoder, channel = kombu_encoder
    total = item.sequence + 1
    if payload is not None:
        payload["accountingEntryId"] = item.accounting_entry_id
    template = MessageTemplate(app, encoder, JOB, company_id, total, schema=schema)
    task_id = task_id_for(JOB, item.accounting_entry_id)
    message = (
        dataclasses.replace(item, export_item=payload)
        .message(JOB, company_id, total)
        .written_as(schema, PUBLISHED_AT)
    )
    _key, reference = encoder.encode(celery_message(app, task_id, message.to_kwargs()))
    tag = json.loads(reference)["properties"]["delivery_tag"]
    raw = None if payload is None else pleo_bytes(payload, spelling)
    # The template takes the payload as spooled: Pleo's bytes, escaped only where needed.
    text = None if raw is None else escape_payload_json(raw).decode()
    ours = template.render(item, text, tag, PUBLISHED_AT)

    assert {**json.loads(ours), "body": None} == {**json.loads(reference), "body": None}
    kwargs = redis_kwargs(channel, ours)
    assert kwargs == redis_kwargs(channel, reference.encode())
    parsed = ItemMessage.parse(kwargs)
    assert parsed.export_item == payload
    assert dataclasses.replace(parsed, export_item=None) == dataclasses.replace(
        message, export_item=None
    )
    if raw is not None and escape_payload(payload) is payload:
        assert raw in body_of(ours)
    assert template.queue_key == ITEMS_QUEUE


def test_integers_past_64_bits_stay_exact(
    kombu_encoder: tuple[Celery, MessageEncoder, Any],
) -> None:
    """A payload's 2**64 + 1 and -(2**70) reach the worker as those integers, not floats."""
    app, encoder, channel = kombu_encoder
    template = MessageTemplate(app, encoder, JOB, None, 1)
    raw = f'{{"accountingEntryId": "{ENTRY}", "big": {2**64 + 1}, "neg": {-(2**70)}}}'
    ours = template.render(PlannedItem(ENTRY, 0, "pending", None), raw)
    assert raw.encode() in body_of(ours)
    export_item = redis_kwargs(channel, ours)["export_item"]
    assert (export_item["big"], export_item["neg"]) == (2**64 + 1, -(2**70))
    assert isinstance(export_item["big"], int)


def job_template(settings: Settings, *, total: int, schema: int = 1) -> MessageTemplate:
    """The message template of job ``JOB`` (no company) with ``total`` planned entries."""
    app = make_app(settings)
    encoder = MessageEncoder(app, settings.broker_url)
    try:
        return MessageTemplate(app, encoder, JOB, None, total, schema=schema)
    finally:
        encoder.close()


def test_batch_delivery_tags_are_fresh_uuid4s(settings: Settings) -> None:
    """Each message of a batch gets its own random version-4 delivery tag, as kombu gives it."""
    template = job_template(settings, total=1000)
    items = [PlannedItem(task_id_for(JOB, str(n)), n, "pending", None) for n in range(1000)]
    rendered = template.render_batch(items, lambda _item: None)
    tags = [json.loads(raw)["properties"]["delivery_tag"] for _entry, raw, _placed in rendered]
    assert len(set(tags)) == 1000
    assert all(tag[14] == "4" and tag[19] in "89ab" and len(tag) == 36 for tag in tags)
    assert [entry for entry, _raw, _placed in rendered] == [i.accounting_entry_id for i in items]
    # Each placement, with its payload, rebuilds its message's kwargs (contract.message).
    for item, (_entry, _raw, placed) in zip(items, rendered, strict=True):
        rebuilt = ItemMessage.rebuilt(JOB, None, item.accounting_entry_id, placed, None)
        assert rebuilt == item.message(JOB, None, 1000)


GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_a_batch_is_stamped_when_it_is_written(settings: Settings) -> None:
    """Schema 2's ``published_at`` is the batch's write time: every message of it, parseable."""
    template = job_template(settings, total=3, schema=2)
    items = [PlannedItem(task_id_for(JOB, str(n)), n, "pending", None) for n in range(3)]
    before = time.time()
    rendered = template.render_batch(items, lambda _item: None)
    after = time.time()
    messages = [
        ItemMessage.parse(json.loads(base64.b64decode(json.loads(raw)["body"]))[1])
        for _entry, raw, _placed in rendered
    ]
    assert {m.schema for m in messages} == {2}
    assert len({m.published_at for m in messages}) == 1
    # Written between before and after (the stamp keeps milliseconds, cut, not rounded).
    waited = messages[0].waited(after)
    assert waited is not None
    assert 0 <= waited <= after - before + 0.001


@pytest.mark.parametrize("schema", [1, 2])
def test_the_message_bytes_are_the_pinned_layout(settings: Settings, schema: int) -> None:
    """The template's bytes for a fixed entry are exactly the recorded ones (kombu 5.7, Celery 5.7).

    The template relies on kombu's and Celery's envelope beyond their public API (key order, the
    JSON separators, where the body sits). A new release that changes any of it fails here,
    loudly, before a worker ever reads a message it was not built for: check the template, then
    re-record this file and move the pins in pyproject.toml.
    """
    template = job_template(settings, total=2, schema=schema)
    item = PlannedItem("0f0e0d0c-0b0a-4909-8807-060504030201", 1, "pending", "2026-01-02")
    raw = template.render(item, '{"a": 1}', "00000000-0000-4000-8000-000000000000", PUBLISHED_AT)
    envelope = json.loads(raw)
    # Only these two differ by process: Celery's origin (host and pid) and its reply-to oid.
    expected = (
        (GOLDEN / f"item-message-schema-{schema}.txt")
        .read_text()
        .strip()
        .replace("{origin}", envelope["headers"]["origin"])
        .replace("{reply_to}", envelope["properties"]["reply_to"])
    )
    assert raw.decode() == expected, (
        f"kombu {kombu.__version__} / Celery {celery.__version__} write another message layout"
    )
