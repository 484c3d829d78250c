"""PLEO_RABBITMQ_QUEUE_TYPE=quorum: a run and a real ERP worker on quorum queues, and the refusal.

Each test has a RabbitMQ virtual host of its own (``tests/support/rabbit.py``), deleted after it,
so quorum queues never meet the suite's shared classic items queue on the default vhost.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from contract.celery_app import make_app
from contract.errors import BadInput
from contract.keys import marks_key
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import need_service, wait_for, with_settings
from tests.support.local import journal_ids, worker_log
from tests.support.rabbit import depth, have_rabbitmqctl, own_vhost, peek, queue_types

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]
AMQP_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """A vhost of this test's own on the test RabbitMQ, deleted with its queues afterwards."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        need_service("RabbitMQ on 127.0.0.1:5672")
    if not have_rabbitmqctl():
        need_service("rabbitmqctl (to give the test a vhost of its own)")
    with own_vhost(AMQP_URL, "pleo-quorum-test") as url:
        yield url


@pytest.mark.worker
@pytest.mark.timeout(240)
def test_a_run_and_an_erp_worker_work_on_quorum_queues(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    tmp_path: Path,
    *,
    vhost_url: str,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The run declares a quorum items queue and publishes every entry; a worker books each once.

    The job completes only once the worker's report flushes ran, and each is sent with a
    countdown (below a second in these settings): on quorum queues Celery routes those through
    RabbitMQ's native delayed delivery, which needs the queues' topic exchanges, every queue's
    exchange declared, and whole seconds; the worker says it turned global QoS off.
    """
    job_id = sim_state.add_job(JobSpec(items=120, item_statuses={"pending": 1.0}))
    quorum = with_settings(settings, broker_url=vhost_url, rabbitmq_queue_type="quorum")
    summary = produce(job_id, settings=quorum, app=make_app(quorum))

    assert queue_types(vhost_url)[ITEMS_QUEUE] == "quorum"
    on_queue = [kwargs["accounting_entry_id"] for _, kwargs in peek(vhost_url)]
    plan = {item.accounting_entry_id for item in sim_state.items(job_id)}
    assert summary.enqueued == len(on_queue) == len(plan) == 120
    assert set(on_queue) == plan
    assert set(rdb.hvals(marks_key(job_id))) == {b"p"}

    start_worker("consumers", ITEMS_QUEUE, settings_=quorum, PLEO_RABBITMQ_QUEUE_TYPE="quorum")
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=180,
        what="the job to complete on quorum queues",
    )
    assert sorted(journal_ids(quorum)) == sorted(plan)
    assert set(sim_state.update_counts(job_id).values()) == {1}
    wait_for(lambda: depth(vhost_url) == 0, timeout=60, what="every message acknowledged")
    # The worker declared both queues (the producer's too) before Celery bound them for delays.
    assert queue_types(vhost_url)[PRODUCER_QUEUE] == "quorum"
    log = worker_log(tmp_path)
    assert "Global QoS is disabled" in log
    assert "Direct exchanges are not supported" not in log
    assert "Failed to setup delayed delivery" not in log


def test_quorum_over_an_existing_classic_queue_is_refused_in_one_sentence(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, vhost_url: str
) -> None:
    """A classic items queue cannot become quorum: the run stops with BadInput, nothing marked."""
    job_id = sim_state.add_job(JobSpec(items=10, item_statuses={"pending": 1.0}))
    classic = with_settings(settings, broker_url=vhost_url)
    produce(job_id, settings=classic, app=make_app(classic))
    assert queue_types(vhost_url)[ITEMS_QUEUE] == "classic"

    other = sim_state.add_job(JobSpec(items=10, item_statuses={"pending": 1.0}))
    quorum = with_settings(classic, rabbitmq_queue_type="quorum")
    with pytest.raises(BadInput) as refused:
        produce(other, settings=quorum, app=make_app(quorum))

    assert refused.value.exit_code == 2
    assert "PLEO_RABBITMQ_QUEUE_TYPE" in refused.value.message
    assert "quorum" in refused.value.message
    assert rdb.hlen(marks_key(other)) == 0
    assert depth(vhost_url) == 10
