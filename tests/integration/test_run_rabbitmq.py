"""The generic kombu path: RabbitMQ with publisher confirms publishes the same set, once."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from contract.celery_app import make_app
from contract.keys import marks_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import need_service, with_settings
from tests.support.queues import redis_queue
from tests.support.serial import taking_turns

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
AMQP_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")


def drain(url: str) -> list[tuple[str, dict[str, Any]]]:
    """Take every message off the items queue: (task id, kwargs) in delivery order."""
    out = []
    with Connection(url) as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(ITEMS_QUEUE, no_ack=True)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            out.append((message.headers["id"], kwargs))
    return out


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """RabbitMQ's URL, with the items queue purged before and after."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        need_service("RabbitMQ on 127.0.0.1:5672")
    with taking_turns("rabbitmq"):
        with Connection(AMQP_URL) as conn:
            make_app(Settings(broker_url=AMQP_URL)).amqp.queues[ITEMS_QUEUE](
                conn.default_channel
            ).declare()
        drain(AMQP_URL)
        yield AMQP_URL
        drain(AMQP_URL)


def test_rabbitmq_path_publishes_the_same_set_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, amqp_url: str
) -> None:
    """RabbitMQ receives the same messages in the same order as Redis; a rerun sends none."""
    job_id = sim_state.add_job(JobSpec(items=400, missing_export_items=5))
    on_redis = produce(job_id, settings=settings, app=make_app(settings))
    want = [q.kwargs for q in redis_queue(rdb)]
    rdb.flushdb()

    rabbit = with_settings(settings, broker_url=amqp_url)
    first = produce(job_id, settings=rabbit, app=make_app(rabbit))
    second = produce(job_id, settings=rabbit, app=make_app(rabbit))
    got = drain(amqp_url)

    assert first.enqueued == on_redis.planned == len(want)
    assert (second.enqueued, second.already_enqueued) == (0, len(want))
    assert [kwargs for _, kwargs in got] == want
    assert [task_id for task_id, _ in got] == [
        task_id_for(job_id, k["accounting_entry_id"]) for k in want
    ]
    assert set(rdb.hvals(marks_key(job_id))) == {b"p"}


def test_a_broker_without_confirms_gets_every_entry_once_through_kombu(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A non-AMQP kombu transport (here ``memory://``, in this process) takes the plain path.

    Each message goes through kombu itself; the same kwargs, in the same order, as on Redis.
    """
    job_id = sim_state.add_job(JobSpec(items=60, missing_export_items=3))
    on_redis = produce(job_id, settings=settings, app=make_app(settings))
    want = [q.kwargs for q in redis_queue(rdb)]
    rdb.flushdb()

    memory = with_settings(settings, broker_url="memory://")
    first = produce(job_id, settings=memory, app=make_app(memory))
    second = produce(job_id, settings=memory, app=make_app(memory))
    got = []
    with Connection("memory://") as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(ITEMS_QUEUE, no_ack=True)) is not None:
            got.append((message.headers["id"], json.loads(message.body)[1]))

    assert first.enqueued == on_redis.planned == len(want) == 60
    assert (second.enqueued, second.already_enqueued) == (0, 60)
    assert [kwargs for _, kwargs in got] == want
    assert [task_id for task_id, _ in got] == [
        task_id_for(job_id, k["accounting_entry_id"]) for k in want
    ]
