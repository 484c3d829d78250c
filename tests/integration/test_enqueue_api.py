"""The HTTP enqueue API over real HTTP: uvicorn on 127.0.0.1:0, real Redis, real Celery messages.

``openapi/enqueue-api.yaml`` is the contract: schemathesis generates requests from it (valid and
invalid bodies, missing and wrong credentials, other methods) and checks every answer against it;
the exact-outcome tests below pin what each answer did to the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings

from contract.errors import BadInput
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from producer.enqueue_api import ENQUEUE_PATH, MAX_BODY_BYTES, check_token, create_app, serve
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "enqueue-api.yaml"
TOKEN = "3f9c2a7e41b8d6059e1c7a4b2d8f6e03"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOB = "b4c4d068-6a3b-4a8e-9f3c-0e6f1d2c3b4a"
COMPANY = "b5fd1c0e-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The test settings with an enqueue API token."""
    return replace(settings, enqueue_api_token=TOKEN)


@pytest.fixture
def client(served_apps: Any, api_settings: Settings) -> Iterator[httpx.Client]:
    """An HTTP client for an API backed by the test Redis."""
    with httpx.Client(base_url=served_apps(create_app(api_settings)).url, timeout=10) as http:
        yield http


@pytest.fixture
def api_url(served_apps: Any, api_settings: Settings) -> str:
    """The URL of an API backed by the test Redis."""
    url: str = served_apps(create_app(api_settings)).url
    return url


# Read from the file, as a caller would; few examples, and the same ones every run.
schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(max_examples=15, deterministic=True, database="none")


@schema.parametrize()
# One server and one Redis for all of a test's examples, on purpose: a valid request repeated
# within the window is deduplicated, which is also a 202 the document allows.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_answer_conforms_to_the_openapi_document(
    case: Any, api_url: str, rdb: redis.Redis
) -> None:
    """Generated requests, valid and not, get only answers the document allows, and no 5xx."""
    case.call_and_validate(base_url=api_url, headers=AUTH)


def enqueue(http: httpx.Client, body: object, headers: dict[str, str] = AUTH) -> httpx.Response:
    return http.post(ENQUEUE_PATH, json=body, headers=headers)


def test_first_request_enqueues_one_producer_task(client: httpx.Client, rdb: redis.Redis) -> None:
    """A first POST gets 202 deduplicated=false and one producer task with the ids on the queue."""
    response = enqueue(client, {"job_id": JOB.upper(), "company_id": COMPANY})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["job_id"] == JOB
    assert answer["deduplicated"] is False
    [message] = redis_queue(rdb, PRODUCER_QUEUE)
    assert message.task == PRODUCER_TASK
    assert message.args == [JOB]
    assert message.kwargs == {"company_id": COMPANY}
    assert message.task_id == answer["task_id"]


def test_same_job_within_the_window_is_deduplicated(client: httpx.Client, rdb: redis.Redis) -> None:
    """The same job again within the trigger window: 202 deduplicated=true and no second task."""
    first = enqueue(client, {"job_id": JOB}).json()
    again = enqueue(client, {"job_id": JOB, "company_id": None})
    assert again.status_code == 202
    assert again.json() == {"job_id": JOB, "task_id": first["task_id"], "deduplicated": True}
    assert [m.task_id for m in redis_queue(rdb, PRODUCER_QUEUE)] == [first["task_id"]]


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        pytest.param({}, None, id="no-header"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, None, id="not-bearer"),
        pytest.param({"Authorization": "Bearer"}, None, id="bare-scheme"),
        pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid_token", id="wrong"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, "invalid_token", id="longer"),
    ],
)
def test_missing_or_wrong_token_is_refused(
    client: httpx.Client, rdb: redis.Redis, headers: dict[str, str], error: str | None
) -> None:
    """Without the configured Bearer token: 401 with a Bearer challenge, and nothing queued."""
    response = enqueue(client, {"job_id": JOB}, headers)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ("invalid_token" in challenge) == (error is not None)
    assert response.json()["error"].endswith(".")
    assert rdb.keys("pleo-export:*") == []
    assert rdb.llen(PRODUCER_QUEUE) == 0


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        pytest.param(b'{"job_id": ', "The body is not JSON.", id="malformed-json"),
        pytest.param(b"", "The body is not JSON.", id="empty"),
        pytest.param(b"[]", "The body is not a JSON object.", id="not-an-object"),
        pytest.param(b"{}", "The body has no job_id.", id="no-job-id"),
        pytest.param(b'{"job_id": "exp-123"}', "Job id 'exp-123' is not a UUID.", id="bad-job"),
        pytest.param(b'{"job_id": 7}', "Job id 7 is not a UUID.", id="number-job"),
        pytest.param(
            b'{"job_id": "%s", "company_id": "acme"}' % JOB.encode(),
            "Company id 'acme' is not a UUID.",
            id="bad-company",
        ),
        pytest.param(
            b'{"jobId": "%s"}' % JOB.encode(),
            "The body has a field 'jobId' besides job_id and company_id.",
            id="unknown-field",
        ),
        pytest.param(b"[" * 5000 + b"]" * 5000, None, id="deep-nesting"),
    ],
)
def test_a_body_that_is_not_a_request_is_refused(
    client: httpx.Client, rdb: redis.Redis, body: bytes, sentence: str | None
) -> None:
    """A body or id that is not valid gets 400 with one sentence, and nothing is queued."""
    response = client.post(ENQUEUE_PATH, content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error == sentence if sentence else error.endswith(".")
    assert rdb.keys("pleo-export:*") == []


def test_body_over_the_cap_is_refused(client: httpx.Client, rdb: redis.Redis) -> None:
    """A body over 16 KiB gets 413, whether its Content-Length says so or it is streamed."""
    body = b'{"job_id": "%s"}' % JOB.encode()
    body += b" " * (MAX_BODY_BYTES + 1 - len(body))
    assert client.post(ENQUEUE_PATH, content=body, headers=AUTH).status_code == 413
    streamed = client.post(ENQUEUE_PATH, content=iter([body[:8000], body[8000:]]), headers=AUTH)
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert rdb.llen(PRODUCER_QUEUE) == 0


def test_redis_down_answers_503(served_apps: Any, api_settings: Settings) -> None:
    """With Redis and the broker unreachable a valid request gets 503, so the caller retries."""
    dead = replace(api_settings, redis_url=DEAD_REDIS, broker_url=DEAD_REDIS)
    with httpx.Client(base_url=served_apps(create_app(dead)).url, timeout=10) as http:
        response = enqueue(http, {"job_id": JOB})
        ready = http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"error": "Redis or the broker is unavailable; retry later."}
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "down": ["redis", "broker"]}


def test_health_readiness_and_http_errors(client: httpx.Client) -> None:
    """/healthz and /readyz answer 200; other paths 404 and other methods 405 with Allow."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.post("/v1/other", json={}, headers=AUTH).status_code == 404
    response = client.get(ENQUEUE_PATH, headers=AUTH)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "short",
        "replace-with-a-long-random-enqueue-api-token",
        "changeme-changeme-changeme-changeme",
        "a" * 64,
        "has spaces but is long enough to pass the length",
    ],
)
def test_serve_refuses_a_missing_or_weak_token(api_settings: Settings, token: Any) -> None:
    """serve() raises BadInput (exit 2) naming PLEO_ENQUEUE_API_TOKEN before it binds anything."""
    with pytest.raises(BadInput, match=r"^PLEO_ENQUEUE_API_TOKEN ") as caught:
        serve(replace(api_settings, enqueue_api_token=token), "127.0.0.1", 0)
    assert caught.value.exit_code == 2
    assert caught.value.message.count(". ") == 0
    if token:
        assert token not in caught.value.message


def test_a_random_token_passes_the_check() -> None:
    """A token from `openssl rand -hex 32` or base64url is accepted as it is."""
    for token in (TOKEN * 2, "q8Zr3-Jk_x7PbV0tN2mWc9sLfY4hA1dE6uGiO5Re-Ts="):
        assert check_token(token) == token


def test_logs_name_the_job_and_never_the_token(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Each API log line names the job id (or -), and none holds the token, right or wrong."""
    caplog.set_level(logging.INFO, logger="producer")
    wrong = f"{TOKEN[:-4]}beef"
    assert enqueue(client, {"job_id": JOB}).status_code == 202
    assert enqueue(client, {"job_id": JOB}, {"Authorization": f"Bearer {wrong}"}).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "producer.enqueue_api"]
    assert len(lines) == 2
    assert all("job_id=" in line for line in lines)
    assert JOB in lines[0]
    assert TOKEN not in caplog.text
    assert wrong not in caplog.text
