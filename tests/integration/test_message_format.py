"""Our messages are what Celery's own apply_async would write, and a stock worker runs them."""

from __future__ import annotations

import base64
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
from kombu.utils.json import dumps

from contract.celery_app import make_app
from contract.message import ItemMessage
from contract.names import ITEM_TASK, ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import MessageEncoder, celery_message, short_repr, task_id_for
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.plan import PlannedItem
from producer.template import MessageTemplate
from tests.conftest import wait_for
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


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture
def kombu_encoder(settings: Settings) -> Iterator[tuple[Celery, MessageEncoder]]:
    """The Celery app and kombu encoder the property compares against, one for all examples."""
    app = make_app(settings)
    encoder = MessageEncoder(app, settings.broker_url)
    yield app, encoder
    encoder.close()


@hypothesis_settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    item=st.builds(
        PlannedItem,
        st.uuids().map(str),
        st.integers(min_value=0, max_value=10**9),
        st.sampled_from(["pending", "in_progress"]),
        st.none() | st.text(max_size=40),
        st.none() | st.dictionaries(st.text(), JSON, max_size=6),
    ),
    company_id=st.none() | st.uuids().map(str),
    schema=st.sampled_from([1, 2]),
)
def test_template_writes_the_bytes_kombu_writes(
    kombu_encoder: tuple[Celery, MessageEncoder],
    item: PlannedItem,
    company_id: str | None,
    schema: int,
) -> None:
    """For any entry, payload and schema, the template's bytes are kombu's, delivery tag aside."""
    # The app and the encoder are configuration, the same for every job: building them once,
    # not once per example, leaves each example its own template and its own kombu message.
    app, encoder = kombu_encoder
    total = item.sequence + 1
    template = MessageTemplate(app, encoder, JOB, company_id, total, schema=schema)
    task_id = task_id_for(JOB, item.accounting_entry_id)
    message = item.message(JOB, company_id, total).written_as(schema, PUBLISHED_AT)
    _key, reference = encoder.encode(celery_message(app, task_id, message.to_kwargs()))
    tag = json.loads(reference)["properties"]["delivery_tag"]
    payload = None if item.export_item is None else dumps(item.export_item)
    # The template takes the payload as spooled JSON text, never from the item itself.
    bare = PlannedItem(
        item.accounting_entry_id, item.sequence, item.status_at_fetch, item.booked_at
    )
    ours = template.render(bare, payload, tag, PUBLISHED_AT)
    assert ours == reference.encode()
    assert template.queue_key == ITEMS_QUEUE


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
