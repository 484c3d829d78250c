"""Messages a worker cannot read are parked, repaired and requeued once; the schema choice is safe.

Real Redis, real ``celery worker`` processes, the simulator over HTTP.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.dead_letters import park, parked_count, requeue
from contract.keys import DEAD_LETTER_KEY, schema_reader_key
from contract.message import ItemMessage
from contract.names import ITEMS_QUEUE
from contract.schemas import (
    ANNOUNCE_EVERY,
    ANNOUNCED_FOR,
    SchemaChoice,
    announce,
    pick,
    readers,
    withdraw,
)
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for, with_settings
from tests.support.cli import invoke
from tests.support.local import journal_ids, stop_as_deployed, worker_log
from tests.support.queues import redis_queue

pytestmark = [pytest.mark.integration]
JOB = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"


def test_the_choice_is_what_every_live_worker_reads() -> None:
    """``pick``: auto takes the oldest all read; a number, unless someone cannot read it."""
    assert pick(None, {}) == 1
    assert pick(2, {}) == 2
    assert pick(None, {"a": {1, 2}, "b": {1, 2}}) == 1
    assert pick(None, {"a": {1, 2}, "b": {1}}) == 1
    # Once no live worker reads the older schema, auto moves on by itself.
    assert pick(None, {"a": {2}, "b": {1, 2}}) == 2
    assert pick(2, {"a": {1, 2}, "b": {1, 2}}) == 2
    assert pick(2, {"a": {1}, "b": {1, 2}}) == 1
    assert pick(1, {"a": {1, 2}}) == 1
    assert pick(2, {"a": {1}, "b": {2}}) == 2


def test_an_unannounced_consumer_keeps_schema_1(
    settings: Settings, rdb: redis.Redis, start_worker: Any
) -> None:
    """A consumer of the items queue that never announces (a stock worker) keeps schema 2 away."""
    app = make_app(settings)
    announce(rdb, "new@host", {1, 2})
    assert readers(rdb) == {"new@host": frozenset({1, 2})}
    # At the defaults a killed worker stops counting 15 s after its last announcement (renewed
    # every 5 s: three missed renewals), the same constants the workers run with.
    assert ANNOUNCED_FOR == 3 * ANNOUNCE_EVERY == 15.0
    assert 14_000 < rdb.pttl(schema_reader_key("new@host")) <= 15_000
    assert SchemaChoice(rdb, app).choose() == 1
    assert SchemaChoice(rdb, app, wanted=2).choose() == 2
    start_worker("tests.support.recording_app", ITEMS_QUEUE)
    wait_for(
        lambda: SchemaChoice(rdb, app, wanted=2).choose() == 1,
        timeout=30,
        what="the stock worker to answer remote control",
    )
    withdraw(rdb, "new@host")
    assert readers(rdb) == {}
    assert SchemaChoice(rdb, app, wanted=2).choose() == 1


def kwargs_of(entry: int) -> dict[str, Any]:
    """A schema-2 item message's kwargs for entry number ``entry`` of job ``JOB``."""
    message = ItemMessage(
        job_id=JOB,
        company_id=None,
        accounting_entry_id=task_id_for(JOB, str(entry)),
        sequence=entry,
        total=100,
        status_at_fetch="pending",
        booked_at=None,
        export_item=None,
    ).written_as(2, "2026-01-02T03:04:05.678Z")
    return message.to_kwargs()


def test_concurrent_requeues_move_each_parked_message_once(
    settings: Settings, rdb: redis.Redis
) -> None:
    """Parked once however often it is redelivered; two requeues at once move each message once."""
    for entry in range(100):
        kwargs = kwargs_of(entry)
        task_id = task_id_for(JOB, kwargs["accounting_entry_id"])
        assert park(rdb, kwargs, reason="r", task_id=task_id, worker="w", ttl=3600)
        assert not park(rdb, kwargs, reason="r", task_id=task_id, worker="w", ttl=3600)
    assert parked_count(rdb, JOB) == 100
    assert 3500 < rdb.ttl(DEAD_LETTER_KEY) <= 3600
    app = make_app(settings)
    moved: list[int] = []

    def one_requeue() -> None:
        moved.append(requeue(rdb, app, settings.broker_url, redis_broker=True, job_id=JOB))

    threads = [threading.Thread(target=one_requeue) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(moved) == 100
    queued = [q.kwargs for q in redis_queue(rdb)]
    assert sorted(q["sequence"] for q in queued) == list(range(100))
    assert queued[0] == kwargs_of(queued[0]["sequence"])
    assert rdb.hlen(DEAD_LETTER_KEY) == 0


def finished(state: SimState, job_id: str) -> bool:
    return state.jobs[job_id].status in {"completed", "completed_with_errors", "failed"}


@pytest.mark.worker
def test_a_job_whose_messages_were_parked_finishes_exactly_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Any
) -> None:
    """Schema 2 met by an old worker: parked, re-sent as 1 by the sweep, requeued once later.

    The stall is 2 s here. At the defaults a parked entry is re-sent as a lost message is: within
    ERP_REPAIR_STALL (60 s) + ERP_REPAIR_INTERVAL (20 s) + one sweep, the bound (< 2 min) that
    tests/chaos/test_worker_kill.py measures with the default settings.
    """
    quick = with_settings(settings, repair_stall=2.0, repair_interval=1.0, message_schema=2)
    job_id = sim_state.add_job(JobSpec(items=5, item_statuses={"pending": 1.0}))
    # No worker is live, so PLEO_MESSAGE_SCHEMA=2 writes schema 2.
    produce(job_id, settings=quick, app=make_app(quick))
    assert job_status(rdb, job_id)["message_schema"] == 2
    old = start_worker(
        "consumers", ITEMS_QUEUE, settings_=quick, ERP_MESSAGE_SCHEMAS="1", PLEO_MESSAGE_SCHEMA="2"
    )
    wait_for(lambda: parked_count(rdb, job_id) == 5, timeout=30, what="five parked messages")
    # The repair sweep re-sends them in the schema the old worker reads: the job finishes.
    wait_for(lambda: finished(sim_state, job_id), timeout=60, what="the job to finish")
    view = job_status(rdb, job_id)
    assert (view["parked"], view["republished"], view["successful"]) == (5, 5, 5)
    assert "message_schema_lowered wanted=2 writing=1" in worker_log(tmp_path, 0)
    record = json.loads(next(iter(rdb.hvals(DEAD_LETTER_KEY))))
    assert record["reason"] == "unknown message schema 2; this worker reads schema 1"
    assert record["kwargs"]["schema"] == 2

    # Upgraded: a new worker, and the parked messages put back once, found already booked.
    stop_as_deployed(old)
    start_worker("consumers", ITEMS_QUEUE, settings_=quick)
    answer = invoke(quick, "requeue-parked", "--job", job_id, "--json")
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output) == {"job_id": job_id, "requeued": 5}
    assert rdb.hlen(DEAD_LETTER_KEY) == 0
    wait_for(
        lambda: worker_log(tmp_path, 1).count("item_skipped_job_finished") == 5,
        timeout=30,
        what="the requeued messages to be taken",
    )
    posted = journal_ids(settings)
    assert sorted(posted) == sorted({i.accounting_entry_id for i in sim_state.items(job_id)})
    assert set(sim_state.update_counts(job_id).values()) == {1}
    finals = [e.event for e in sim_state.events(job_id) if e.accepted and e.event != "started"]
    assert finals == ["completed"]
    assert job_status(rdb, job_id)["parked"] == 0


def test_requeue_refuses_a_broker_it_cannot_move_messages_to_atomically(
    settings: Settings,
) -> None:
    """With RabbitMQ as broker requeue-parked says why it cannot, exit 2, and moves nothing."""
    rabbit = with_settings(settings, broker_url="amqp://guest:guest@127.0.0.1:5672//")
    answer = invoke(rabbit, "requeue-parked")
    assert answer.exit_code == 2
    assert "requeue-parked needs the Redis broker" in answer.output
    assert answer.output.count("\n") == 1
