"""Concurrency: one job triggered 20 times at once, every way there is, with 4 producer processes.

Each round fires, from threads released together by a barrier, signed webhook deliveries (each
with its own ``webhook-id``), ``pleo-export enqueue`` subprocesses and raw
``app.send_task("producer.enqueue_export_job")`` calls at one fresh job, while a real producer
worker with 4 pool processes consumes them. The webhook and CLI triggers share the trigger window,
so together they send one task; every raw ``send_task`` sends its own. Whatever ran, the job must
end with one plan's messages: each entry once, ``sequence`` 0..N-1 in plan order, the ledger's
marks equal to the queue, and one ``started`` event at Pleo.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contract.celery_app import make_app
from contract.keys import marks_key
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.signature import sign
from producer.webhook import create_app
from tests.chaos.conftest import scale, tally
from tests.chaos.test_api_chaos import expected_messages
from tests.conftest import env_for, wait_for, with_settings
from tests.support import zygote
from tests.support.queues import redis_queue
from tests.support.serving import Served, start_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.worker]

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
WEBHOOKS, CLI_ENQUEUES, SEND_TASKS = 8, 6, 6
# Celery's line for a finished task, with the summary dict the task returned.
FINISHED = re.compile(
    r"Task producer\.enqueue_export_job\[([0-9a-f-]+)\] succeeded in [^:]+: (.*)$"
)


@pytest.fixture
def receiver(settings: Settings) -> Iterator[Served]:
    """``pleo-export webhook``'s app on a free loopback port, backed by the test Redis."""
    served = start_in_thread(create_app(with_settings(settings, webhook_secret=SECRET)))
    yield served
    served.stop()


def created_event(job_id: str) -> bytes:
    """A ``v1.export-job.created`` body for ``job_id``."""
    data = {"id": job_id, "status": "pending", "numberOfItems": 1}
    return json.dumps(
        {"data": data, "eventId": str(uuid.uuid4()), "eventType": "v1.export-job.created"}
    ).encode()


def deliver(url: str, job_id: str) -> str:
    """One signed delivery under a new webhook id; the receiver's ``status`` answer."""
    body = created_event(job_id)
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(msg_id, stamp, body, SECRET),
        "content-type": "application/json",
    }
    response = httpx.post(f"{url}/webhooks/pleo", content=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    status: str = response.json()["status"]
    return status


def cli_enqueue(settings: Settings, job_id: str) -> str:
    """``pleo-export enqueue JOB``: ``enqueued`` or ``deduplicated``, from what it printed."""
    proc = zygote.run_module("producer", ["enqueue", job_id], env_for(settings), timeout=60)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("enqueued producer task"):
        return "enqueued"
    assert "triggered moments ago" in proc.stdout, proc.stdout
    return "deduplicated"


def raw_send(settings: Settings, job_id: str) -> str:
    """What another service does: ``send_task`` with no deduplication at all."""
    app = make_app(settings)
    try:
        app.send_task(PRODUCER_TASK, args=[job_id], queue=PRODUCER_QUEUE)
    finally:
        app.close()
    return "sent"


def fire_together(triggers: list[Callable[[], str]]) -> list[str]:
    """Run every trigger from its own thread, all released by one barrier; their answers."""
    barrier = threading.Barrier(len(triggers))

    def go(trigger: Callable[[], str]) -> str:
        barrier.wait(timeout=30)
        return trigger()

    with ThreadPoolExecutor(len(triggers)) as pool:
        return list(pool.map(go, triggers))


def finished_runs(log: Path, job_id: str) -> list[dict[str, Any]]:
    """The summaries of the job's producer tasks that finished, from the worker's log."""
    runs = []
    for line in log.read_text(errors="replace").splitlines():
        match = FINISHED.search(line)
        if match:
            summary = ast.literal_eval(match.group(2))
            if summary["job_id"] == job_id:
                runs.append(summary)
    return runs


@dataclass(frozen=True)
class Rig:
    """What a round needs: the simulator, the Redis, the receiver, the worker's log, settings."""

    settings: Settings
    sim: SimState
    rdb: redis.Redis
    webhook_url: str
    log: Path


def play_round(rig: Rig, job_id: str, queued_before: int) -> int:
    """Fire the 20 triggers at ``job_id``, check the outcome, tally it; messages now queued."""
    triggers: list[Callable[[], str]] = (
        [partial(deliver, rig.webhook_url, job_id)] * WEBHOOKS
        + [partial(cli_enqueue, rig.settings, job_id)] * CLI_ENQUEUES
        + [partial(raw_send, rig.settings, job_id)] * SEND_TASKS
    )
    answers = Counter(fire_together(triggers))
    # Webhooks and CLI share the trigger window: one of those 14 sent the task.
    assert answers == {"enqueued": 1, "deduplicated": 13, "sent": SEND_TASKS}, answers
    sent = 1 + SEND_TASKS

    def all_finished() -> list[dict[str, Any]] | None:
        runs = finished_runs(rig.log, job_id)
        return runs if len(runs) == sent else None

    runs: list[dict[str, Any]] = wait_for(
        all_finished,
        timeout=scale(90, 180),
        what=f"all {sent} producer tasks of job {job_id} to finish",
        explain=lambda: finished_runs(rig.log, job_id),
    )
    want = expected_messages(rig.sim, job_id)
    queued = [q.kwargs for q in redis_queue(rig.rdb)]
    assert queued[queued_before:] == want
    assert [m["sequence"] for m in queued[queued_before:]] == list(range(len(want)))
    marks = {k.decode(): v.decode() for k, v in rig.rdb.hgetall(marks_key(job_id)).items()}
    assert marks == {m["accounting_entry_id"]: "p" for m in want}
    assert [(e.event, e.accepted) for e in rig.sim.events(job_id)] == [("started", True)]
    statuses = Counter(run["status"] for run in runs)
    assert set(statuses) <= {"enqueued", "locked"}, statuses
    assert sum(run.get("enqueued", 0) for run in runs) == len(want)
    assert rig.rdb.llen(PRODUCER_QUEUE) == 0

    reruns = sum(1 for run in runs if run["status"] == "enqueued" and run["enqueued"] == 0)
    tally("producer runs stepped aside (lease held)", statuses["locked"])
    tally("producer reruns that found every entry published", reruns)
    print(f"job {job_id}: {len(runs)} producer tasks ran: {dict(statuses)}, {reruns} reruns")
    return len(queued)


@pytest.mark.timeout(600)
def test_twenty_simultaneous_triggers_give_one_plan_and_one_set_of_messages(
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    receiver: Served,
    *,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Webhooks, CLI enqueues and raw send_tasks at once, 4 producers: one claim, one set."""
    # A visibility timeout longer than any run (the README's premise; the fixture's is 5 s), so
    # every task that ran was sent by a trigger, not redelivered by the broker mid-run.
    settings = with_settings(settings, visibility_timeout=900)
    worker = start_worker("producer", PRODUCER_QUEUE, concurrency=4, settings_=settings)
    log = tmp_path / "worker-0.log"
    wait_for(
        lambda: " ready." in log.read_text(errors="replace") or worker.poll() is not None,
        timeout=60,
        what="the producer worker to be ready",
    )
    assert worker.poll() is None, log.read_text(errors="replace")
    rig = Rig(settings, sim_state, rdb, receiver.url, log)
    queued = 0
    for round_ in range(scale(2, 10)):
        job_id = sim_state.add_job(
            JobSpec(
                items=scale(500, 4000),
                item_statuses={"pending": 0.9, "in_progress": 0.05, "successful": 0.05},
                missing_export_items=10,
                seed=100 + round_,
            )
        )
        queued = play_round(rig, job_id, queued)
