"""Redis restarted mid-run: runs fail transiently, Celery retries them, nothing is lost or doubled.

Each test starts its own ``redis-server`` on a free loopback port with its data in the test's
tmp_path, so stopping it disturbs no one else. Persistence is on, ``appendonly yes`` with
``appendfsync always``: Redis answers a write only after it reached the append-only file, so a
restart, even after SIGKILL, keeps every write the producer saw acknowledged (marks, messages,
progress), which is what the exactly-once ledger relies on. Without it a restart would be a data
loss, a different chaos case.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from consumers.budget import Budget
from consumers.erp import ERPLimits
from contract.celery_app import make_app
from contract.keys import marks_key, progress_key, ready_items_key, trigger_key
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.signature import sign
from producer.triggers import enqueue
from producer.webhook import create_app
from tests.chaos.conftest import FULL, scale, tally
from tests.conftest import wait_for, with_settings
from tests.support.local import free_port, journal_ids
from tests.support.queues import redis_queue
from tests.support.serving import start_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.worker]

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

# Where the outage lands and how Redis goes down. Losing acknowledged writes to a SIGKILL
# mid-publish is the sharpest case, so the default run keeps it; ``make chaos`` runs all four.
PRODUCER_CASES = (
    [("fetching", True), ("fetching", False), ("publishing", True), ("publishing", False)]
    if FULL
    else [("publishing", True), ("fetching", False)]
)


@dataclass
class OwnRedis:
    """A ``redis-server`` of the test's own: one port and one data dir across restarts."""

    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    # Starts that followed a stop the test saw the server exit from: restarts observed.
    restarts: int = 0
    _stopped: bool = False

    def url(self, db: int = 0) -> str:
        """The URL of database ``db``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        """A fresh client of database 0 that gives up quickly while the server is down."""
        return redis.Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=5)

    def start(self) -> None:
        """Start the server (reloading its append-only file) and wait until it answers."""
        assert self.proc is None, "already running"
        log = (self.data_dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self._answers, timeout=30, what=f"redis-server on port {self.port} to answer")
        if self._stopped:
            self.restarts += 1
            self._stopped = False

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"redis-server exited: {self.log_tail()}"
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused while starting, BUSY/LOADING while reading the AOF
            return False
        finally:
            client.close()

    def stop(self, *, kill: bool) -> None:
        """Stop the server: SIGKILL (a crash) or SIGTERM (a graceful shutdown)."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None
        self._stopped = True

    def restart(self, *, kill: bool, noticed: Callable[[], bool], what: str) -> None:
        """Stop the server, keep it down until ``noticed()`` (its clients saw the outage and
        started retrying), then start it again."""
        self.stop(kill=kill)
        wait_for(noticed, timeout=60, what=what)
        self.start()

    def log_tail(self) -> str:
        """The end of the server's log, for failure messages."""
        lines = (self.data_dir / "redis.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-10:])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A persistent redis-server of this test's own; stopped after the test."""
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    server = OwnRedis(port=free_port(), data_dir=data_dir)
    server.start()
    yield server
    if server.proc is not None:
        server.stop(kill=True)


@pytest.fixture
def own_settings(settings: Settings, own_redis: OwnRedis) -> Settings:
    """The test settings with Redis and the broker on the test's own redis-server.

    The visibility timeout is production's hour: a message held by a worker that lost its broker
    must not come back within the test by redelivery, so only Celery's own retry can finish a run.
    """
    url = own_redis.url()
    return with_settings(settings, redis_url=url, broker_url=url, visibility_timeout=3600)


def progress(client: redis.Redis, job_id: str) -> dict[str, str]:
    """The producer's progress record of ``job_id``."""
    return {k.decode(): v.decode() for k, v in client.hgetall(progress_key(job_id)).items()}


def safely(client: redis.Redis, job_id: str) -> dict[str, str]:
    """The progress record, or an empty one while Redis is down."""
    try:
        return progress(client, job_id)
    except redis.RedisError:
        return {}


def worker_log(tmp_path: Path, index: int = 0) -> str:
    """What the ``index``-th worker started by ``start_worker`` wrote so far."""
    return (tmp_path / f"worker-{index}.log").read_text(errors="replace")


def lost_broker(tmp_path: Path) -> int:
    """How many times the first worker logged losing its broker connection."""
    return worker_log(tmp_path).count("consumer: Connection to broker lost")


def case_id(case: tuple[str, bool]) -> str:
    """``publishing-sigkill``, ``fetching-graceful``..."""
    phase, kill = case
    return f"{phase}-{'sigkill' if kill else 'graceful'}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", PRODUCER_CASES, ids=case_id)
def test_producer_run_survives_redis_restart(
    case: tuple[str, bool],
    own_settings: Settings,
    own_redis: OwnRedis,
    *,
    sim_state: SimState,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Redis restarted mid-fetch or mid-publish: the run retries and queues each entry once.

    The run fails with BrokerUnavailable (transient), Celery retries it once Redis is back, the
    worker reconnects to its restarted broker, and the queue ends up holding every planned entry
    exactly once in plan order, as many messages as marks, with the progress record ``enqueued``.
    """
    phase, kill = case
    items = scale(1500, 6000)
    if phase == "fetching":
        # Slow pages keep the run fetching for seconds: the outage lands mid-walk.
        sim_state.latency = 0.05
        run_settings = with_settings(own_settings, page_size=100)
    else:
        # Small batches make publishing long enough for the outage to land between two of them.
        run_settings = with_settings(own_settings, page_size=1000, publish_batch=10)
    job_id = sim_state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    client = own_redis.client()

    start_worker("producer", PRODUCER_QUEUE, settings_=run_settings)
    enqueue(job_id, settings=run_settings)
    if phase == "fetching":
        wait_for(
            lambda: int(safely(client, job_id).get("pages", 0)) >= 3,
            timeout=60,
            what="the run to fetch a few pages",
            explain=lambda: safely(client, job_id),
        )
    else:
        wait_for(
            lambda: client.hlen(marks_key(job_id)) > 0,
            timeout=60,
            what="the run to publish its first batch",
            explain=lambda: safely(client, job_id),
        )
    own_redis.restart(
        kill=kill,
        noticed=lambda: (
            lost_broker(tmp_path) >= 1 and "producer_task_retry" in worker_log(tmp_path)
        ),
        what="the worker to lose its broker and the run to fail over to a retry",
    )
    partial = client.hlen(marks_key(job_id))
    assert partial == client.llen(ITEMS_QUEUE), "a mark without its message, or the reverse"
    assert partial < items, "the outage came after the run had finished"

    wait_for(
        lambda: safely(client, job_id).get("state") == "enqueued",
        timeout=120,
        what="the retried run to finish",
        explain=lambda: (safely(client, job_id), worker_log(tmp_path)[-3000:]),
    )
    queued = [q.kwargs for q in redis_queue(client)]
    assert [k["sequence"] for k in queued] == list(range(items))
    assert len({k["accounting_entry_id"] for k in queued}) == items
    assert client.hlen(marks_key(job_id)) == items
    record = progress(client, job_id)
    assert int(record["runs"]) >= 2
    assert int(record["enqueued"]) + int(record["already_enqueued"]) == items
    assert int(record["already_enqueued"]) >= partial
    log = worker_log(tmp_path)
    assert "producer_task_retry" in log
    assert "error=BrokerUnavailable" in log
    # Celery's own retry message brought the run back, not a redelivery after the timeout.
    assert "retry: Retry in" in log
    tally("Redis restarts survived", own_redis.restarts)


def final_status(state: SimState, job_id: str) -> str | None:
    """The job's status once it is terminal, else None."""
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "batch_size",
    [
        # The default (the SQL journal's declared batches of 500): a governed connection, where
        # the queue drains into staging at once and the outages find the consumer idle.
        None,
        # Message by message (nothing governed): the worker consumes while it books, so the
        # outages come mid-consume.
        "1",
    ],
    ids=["governed", "direct"],
)
def test_erp_worker_survives_redis_restart(
    *,
    batch_size: str | None,
    own_settings: Settings,
    own_redis: OwnRedis,
    sim_state: SimState,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Redis SIGKILLed and restarted while an ERP worker books a job: each entry booked once.

    Items whose task hit the outage retry; the worker reconnects to its restarted broker; every
    entry ends up in the ERP journal exactly once, is reported to Pleo exactly once, and the job
    gets one ``completed``.
    """
    items = scale(300, 1000)
    restarts = scale(1, 3)
    sim_state.latency = 0.002
    job_id = sim_state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    produce(job_id, settings=own_settings, app=make_app(own_settings))
    # Governed, posters book batches of up to 500 within milliseconds, so the job would be booked
    # before an outage is noticed: the connection is paused (as a 429 would) until the last
    # outage is over (the pause is kept on disk by this Redis).
    governed = batch_size is None
    client = redis.Redis.from_url(own_settings.redis_url)
    budget = Budget(client, ERPLimits(), connection="default", lease_ttl=10)
    company = sim_state.jobs[job_id].company_id
    if governed:
        budget.pause(company, 600)
    # A quick repair sweep: a delivery whose restore failed while Redis was down is re-sent
    # after 3 quiet seconds instead of the visibility timeout (an hour).
    start_worker(
        "consumers",
        ITEMS_QUEUE,
        settings_=own_settings,
        ERP_REPAIR_STALL="3",
        ERP_REPAIR_INTERVAL="0.5",
        **({"ERP_BATCH_SIZE": batch_size} if batch_size else {}),
    )
    for outage in range(1, restarts + 1):
        if governed:
            # Everything staged while the connection is paused: the outage finds the consumer
            # idle and every entry still to book.
            wait_for(
                lambda: client.hlen(ready_items_key(job_id)) == items,
                timeout=90,
                what=f"every entry staged before outage {outage}",
                explain=lambda: worker_log(tmp_path)[-3000:],
            )
        else:
            booked_before = items * outage // (restarts + 2)
            wait_for(
                lambda n=booked_before: len(journal_ids(own_settings)) >= n,
                timeout=90,
                what=f"the worker to book entries before outage {outage}",
                explain=lambda: worker_log(tmp_path)[-3000:],
            )
        own_redis.restart(
            kill=True,
            noticed=lambda n=outage: lost_broker(tmp_path) >= n,
            what=f"the worker to lose its broker in outage {outage}",
        )
        assert len(journal_ids(own_settings)) < items, "the outage came after the last booking"
    if governed:
        with redis.Redis.from_url(own_settings.redis_url) as back:
            back.delete(budget.key(company, "paused"))

    status = wait_for(
        lambda: final_status(sim_state, job_id),
        timeout=120,
        what="the job to finish",
        explain=lambda: (len(journal_ids(own_settings)), worker_log(tmp_path)[-3000:]),
    )
    assert status == "completed"
    posted = Counter(journal_ids(own_settings))
    assert set(posted) == {i.accounting_entry_id for i in sim_state.items(job_id)}
    assert set(posted.values()) == {1}
    updates = sim_state.update_counts(job_id)
    assert len(updates) == items
    assert set(updates.values()) == {1}
    assert [e.event for e in sim_state.events(job_id) if e.accepted] == ["started", "completed"]
    tally("Redis restarts survived", own_redis.restarts)


@pytest.fixture
def receiver(own_settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client of a webhook receiver whose Redis and broker are the test's own."""
    served = start_in_thread(create_app(with_settings(own_settings, webhook_secret=SECRET)))
    with httpx.Client(base_url=served.url, timeout=15) as client:
        yield client
    served.stop()


def signed_delivery(job_id: str) -> tuple[bytes, dict[str, str]]:
    """A ``v1.export-job.created`` body and the headers Pleo would sign it with."""
    body = json.dumps(
        {
            "eventId": str(uuid.uuid4()),
            "eventType": "v1.export-job.created",
            "data": {"id": job_id, "status": "pending", "numberOfItems": 1},
        }
    ).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, SECRET),
        "content-type": "application/json",
    }


def test_webhook_answers_503_while_redis_is_down_and_202_after(
    receiver: httpx.Client, own_redis: OwnRedis
) -> None:
    """With Redis down a signed delivery gets 503 and /readyz says not ready; after the restart
    the same delivery, redelivered, gets 202 and enqueues exactly one producer task."""
    job_id = str(uuid.uuid4())
    body, headers = signed_delivery(job_id)
    assert receiver.get("/readyz").status_code == 200

    own_redis.stop(kill=True)
    down = receiver.get("/readyz")
    assert down.status_code == 503
    assert down.json()["down"] == ["redis", "broker"]
    refused = receiver.post("/webhooks/pleo", content=body, headers=headers)
    assert refused.status_code == 503, refused.text

    own_redis.start()
    wait_for(
        lambda: receiver.get("/readyz").status_code == 200,
        timeout=30,
        what="/readyz to report ready again",
    )
    client = own_redis.client()
    # Nothing of the refused delivery was kept: no delivery mark, no trigger claim, no task.
    assert client.keys("pleo-export:*") == []
    assert client.llen(PRODUCER_QUEUE) == 0
    accepted = receiver.post("/webhooks/pleo", content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "enqueued"
    again = receiver.post("/webhooks/pleo", content=body, headers=headers)
    assert (again.status_code, again.json()["status"]) == (202, "duplicate")
    [message] = redis_queue(client, PRODUCER_QUEUE)
    assert (message.task, message.args) == (PRODUCER_TASK, [job_id])
    assert client.get(trigger_key(job_id)) == message.task_id.encode()
    tally("Redis restarts survived", own_redis.restarts)
