"""The webhook receiver over real HTTP: uvicorn on 127.0.0.1:0, real Redis, real Celery messages."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from contract.errors import BadInput
from contract.keys import trigger_key, webhook_delivery_key
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from producer.signature import sign
from producer.triggers import enqueue
from producer.webhook import (
    MAX_BODY_BYTES,
    create_app,
    serve,
)
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OTHER_SECRET = "whsec_QW5vdGhlciBzdWJzY3JpcHRpb24ncyBrZXk="
JOB = "b4c4d068-6a3b-4a8e-9f3c-0e6f1d2c3b4a"
COMPANY = "b5fd1c0e-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
EVENT_ID = "a257a31e-e8a6-4c36-a98d-451250e5b5c4"
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def wh_settings(settings: Settings) -> Settings:
    """The test settings with a webhook secret."""
    return replace(settings, webhook_secret=SECRET)


@pytest.fixture
def serve_app(served_apps: Any) -> Any:
    """Start receivers for ``Settings``, each with a client; every one is stopped after the test."""

    def start(settings_: Settings) -> httpx.Client:
        return httpx.Client(base_url=served_apps(create_app(settings_)).url, timeout=10)

    return start


@pytest.fixture
def client(serve_app: Any, wh_settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client for a receiver backed by the test Redis."""
    with serve_app(wh_settings) as http:
        yield http


def event(
    job_id: object = JOB, *, company_id: object = COMPANY, event_type: str = "v1.export-job.created"
) -> bytes:
    data = {"id": job_id, "companyId": company_id, "status": "pending", "numberOfItems": 1}
    return json.dumps({"data": data, "eventId": EVENT_ID, "eventType": event_type}).encode()


def signed(
    body: bytes, *, msg_id: str | None = None, timestamp: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, secret),
        "content-type": "application/json",
    }


def deliver(http: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post("/webhooks/pleo", content=body, headers=headers)


def test_signed_export_job_created_enqueues_one_producer_task(
    client: httpx.Client, rdb: redis.Redis
) -> None:
    """A signed v1.export-job.created gives 202 and one producer task with the job and company."""
    body = event(JOB.upper())
    response = deliver(client, body, signed(body))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "enqueued"
    assert answer["job_id"] == JOB
    [message] = redis_queue(rdb, PRODUCER_QUEUE)
    assert message.task == PRODUCER_TASK
    assert message.args == [JOB]
    assert message.kwargs == {"company_id": COMPANY}
    assert message.task_id == answer["task_id"]


def test_metrics_show_the_delivered_job_as_requested(client: httpx.Client) -> None:
    """GET /metrics serves Prometheus's text format; a job just triggered counts as requested."""
    body = event()
    assert deliver(client, body, signed(body)).status_code == 202
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    got = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    assert got[("pleo_export_active_jobs", (("state", "requested"),))] == 1
    assert got[("pleo_export_ledger_up", ())] == 1
    assert got[("pleo_export_oldest_active_job_age_seconds", ())] < 60


def test_concurrent_redeliveries_enqueue_once(client: httpx.Client, rdb: redis.Redis) -> None:
    """The same delivery sent 20 times at once is enqueued once; the others are duplicates."""
    body = event()
    headers = signed(body)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: deliver(client, body, headers), range(20)))
    assert {r.status_code for r in responses} == {202}
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["duplicate"] * 19 + ["enqueued"]
    assert len(redis_queue(rdb, PRODUCER_QUEUE)) == 1


def test_new_delivery_of_same_job_within_window_is_deduplicated(
    client: httpx.Client, rdb: redis.Redis
) -> None:
    """A second webhook id for the same job within the trigger window sends no second task."""
    first = deliver(client, event(), signed(event()))
    body = event()
    second = deliver(client, body, signed(body))
    assert first.json()["status"] == "enqueued"
    assert second.status_code == 202
    assert second.json()["status"] == "deduplicated"
    assert second.json()["task_id"] == first.json()["task_id"]
    assert len(redis_queue(rdb, PRODUCER_QUEUE)) == 1


def _tampered() -> tuple[bytes, dict[str, str]]:
    headers = signed(event())
    return event(str(uuid.uuid4())), headers


def _missing_headers() -> tuple[bytes, dict[str, str]]:
    body = event()
    headers = signed(body)
    del headers["webhook-signature"]
    return body, headers


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param(_tampered, "no signature matches", id="tampered-body"),
        pytest.param(
            lambda: (event(), signed(event(), secret=OTHER_SECRET)),
            "no signature matches",
            id="wrong-secret",
        ),
        pytest.param(
            lambda: (event(), signed(event(), timestamp=int(time.time()) - 301)),
            "webhook-timestamp is too old",
            id="stale",
        ),
        pytest.param(_missing_headers, "missing header webhook-signature", id="missing-headers"),
    ],
)
def test_unverifiable_delivery_is_refused(
    client: httpx.Client, rdb: redis.Redis, case: Any, reason: str
) -> None:
    """A delivery that fails verification gets 401 with the reason, and nothing is written."""
    body, headers = case()
    response = deliver(client, body, headers)
    assert response.status_code == 401
    assert response.json() == {"error": reason}
    assert rdb.keys("pleo-export:*") == []
    assert rdb.llen(PRODUCER_QUEUE) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"eventType": "v1.export-job.created", "data": {', id="malformed-json"),
        pytest.param(b'["v1.export-job.created"]', id="not-an-object"),
        pytest.param(b'{"data": {"id": "%s"}}' % JOB.encode(), id="no-event-type"),
        pytest.param(
            b'{"eventType": "v1.export-job.created", "data": {"status": "pending"}}',
            id="no-data-id",
        ),
        pytest.param(event("exp-123"), id="non-uuid-id"),
        pytest.param(event(company_id="acme"), id="non-uuid-company"),
    ],
)
def test_malformed_payload_is_refused(client: httpx.Client, rdb: redis.Redis, body: bytes) -> None:
    """A signed body that is not a readable event gets 400, and nothing is enqueued or marked."""
    response = deliver(client, body, signed(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert rdb.keys("pleo-export:*") == []
    assert rdb.llen(PRODUCER_QUEUE) == 0


def test_body_over_one_mebibyte_is_refused(client: httpx.Client, rdb: redis.Redis) -> None:
    """A body over 1 MiB gets 413, whether its Content-Length says so or it is streamed."""
    body = b" " * (MAX_BODY_BYTES - len(event())) + event() + b" "
    assert len(body) == MAX_BODY_BYTES + 1
    assert deliver(client, body, signed(body)).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    streamed = client.post("/webhooks/pleo", content=chunks(), headers=signed(body))
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert rdb.llen(PRODUCER_QUEUE) == 0


def test_body_of_exactly_one_mebibyte_is_accepted(client: httpx.Client, rdb: redis.Redis) -> None:
    """The cap is inclusive: a padded 1 MiB event is still processed."""
    body = b" " * (MAX_BODY_BYTES - len(event())) + event()
    assert deliver(client, body, signed(body)).status_code == 202
    assert rdb.llen(PRODUCER_QUEUE) == 1


def test_other_event_type_is_ignored(client: httpx.Client, rdb: redis.Redis) -> None:
    """A verified event of another type gets 202 ignored, and nothing is enqueued or marked."""
    body = event(event_type="v1.vendor.created")
    response = deliver(client, body, signed(body))
    assert response.status_code == 202
    assert response.json() == {"status": "ignored"}
    assert rdb.keys("pleo-export:*") == []


def test_redis_down_answers_503(serve_app: Any, wh_settings: Settings) -> None:
    """With Redis unreachable a verified delivery gets 503, so Pleo retries it later."""
    with serve_app(replace(wh_settings, redis_url=DEAD_REDIS, broker_url=DEAD_REDIS)) as http:
        body = event()
        response = deliver(http, body, signed(body))
    assert response.status_code == 503
    assert "unavailable" in response.json()["error"]


def test_broker_down_answers_503_and_forgets_the_delivery(
    serve_app: Any, client: httpx.Client, wh_settings: Settings, rdb: redis.Redis
) -> None:
    """A failed send leaves no delivery mark or trigger claim, so Pleo's retry is enqueued."""
    dead_broker = replace(wh_settings, broker_url="amqp://guest:guest@127.0.0.1:1//")
    body = event()
    headers = signed(body)
    with serve_app(dead_broker) as http:
        assert deliver(http, body, headers).status_code == 503
    assert rdb.get(webhook_delivery_key(headers["webhook-id"])) is None
    assert rdb.get(trigger_key(JOB)) is None
    retry = deliver(client, body, headers)
    assert retry.status_code == 202
    assert retry.json()["status"] == "enqueued"
    assert len(redis_queue(rdb, PRODUCER_QUEUE)) == 1


def test_healthz(client: httpx.Client) -> None:
    """/healthz answers 200 while the process runs."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_up(client: httpx.Client) -> None:
    """/readyz answers 200 when Redis and the broker answer."""
    response = client.get("/readyz")
    assert response.status_code == 200, response.text


def test_readyz_down(serve_app: Any, wh_settings: Settings) -> None:
    """/readyz answers 503 naming Redis and the broker when neither answers."""
    with serve_app(replace(wh_settings, redis_url=DEAD_REDIS, broker_url=DEAD_REDIS)) as http:
        started = time.monotonic()
        response = http.get("/readyz")
        assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert response.json()["down"] == ["redis", "broker"]


def test_unknown_path_and_wrong_method(client: httpx.Client) -> None:
    """Other paths get 404 and other methods 405, both as JSON."""
    assert client.post("/webhooks/other", content=b"{}").status_code == 404
    response = client.get("/webhooks/pleo")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("secret", [None, "", "not-a-whsec-secret", "whsec_%%%"])
def test_serve_refuses_a_missing_or_malformed_secret(wh_settings: Settings, secret: Any) -> None:
    """serve() raises BadInput naming PLEO_WEBHOOK_SECRET before it binds or connects anything."""
    with pytest.raises(BadInput, match="PLEO_WEBHOOK_SECRET") as caught:
        serve(replace(wh_settings, webhook_secret=secret), "127.0.0.1", 0)
    if secret:
        assert secret not in caught.value.message


def test_logs_name_the_ids_and_never_the_secret(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Each receiver log line names the webhook id and job id; none holds secret or signature."""
    caplog.set_level(logging.INFO, logger="producer")
    body = event()
    good = signed(body)
    bad = signed(body, secret=OTHER_SECRET)
    assert deliver(client, body, good).status_code == 202
    assert deliver(client, body, bad).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "producer.webhook"]
    assert len(lines) == 2
    assert all("webhook_id=" in line and "job_id=" in line for line in lines)
    assert good["webhook-id"] in lines[0]
    assert JOB in lines[0]
    text = caplog.text
    for secret_part in (SECRET[6:], OTHER_SECRET[6:], good["webhook-signature"][3:]):
        assert secret_part not in text


def test_enqueue_api_dedupes_within_the_window_only(
    wh_settings: Settings, rdb: redis.Redis
) -> None:
    """triggers.enqueue with its own clients sends once per window, and again once it passed."""
    # 2 s: each call connects its own clients, which a loaded machine may take a second to do.
    first = enqueue(JOB, settings=wh_settings, window=2.0)
    again = enqueue(JOB.upper(), settings=wh_settings, window=2.0)
    assert (first.deduplicated, again.deduplicated) == (False, True)
    assert again.task_id == first.task_id
    time.sleep(2.1)
    later = enqueue(JOB, settings=wh_settings, window=2.0)
    assert not later.deduplicated
    messages = redis_queue(rdb, PRODUCER_QUEUE)
    assert [m.task_id for m in messages] == [first.task_id, later.task_id]
    assert messages[0].kwargs == {"company_id": None}


@pytest.mark.parametrize(("job_id", "company_id"), [("exp-123", None), (JOB, "acme")])
def test_enqueue_api_rejects_non_uuids(
    wh_settings: Settings, rdb: redis.Redis, job_id: str, company_id: str | None
) -> None:
    """triggers.enqueue raises BadInput for a job or company id that is not a UUID."""
    with pytest.raises(BadInput, match="not a UUID"):
        enqueue(job_id, company_id=company_id, settings=wh_settings)
    assert rdb.keys("pleo-export:*") == []
