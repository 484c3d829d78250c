"""The Pleo client over httpx.MockTransport: auth, page walks, status mapping, retries, secrecy."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import re
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from contract.errors import (
    AuthenticationFailed,
    BadInput,
    ContractViolation,
    JobNotFound,
    PermanentUpstreamError,
    RateLimited,
    TransientUpstreamError,
    Unprocessable,
)
from contract.retrying import choose_wait, exhausted, is_retryable
from contract.settings import Settings
from pleo.client import PleoClient, make_http_client, tls_context
from pleo.models import ItemError, JobItem
from pleo.responses import parse_retry_after

JOB = "8eb6d4a2-6c1f-4f7e-9a53-2f0c4f1d2b10"
COMPANY = "b5fd3c1e-94a2-4a71-8d0e-1c2b3a4d5e6f"
TOKEN = "tok-SECRET-do-not-leak"
API_KEY = "key-SECRET-do-not-leak"
NOW = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)

Handler = Callable[[httpx.Request], httpx.Response]


def entry(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "api_url": "https://pleo.test",
        "api_token": TOKEN,
        "page_size": 2,
        "retry_attempts": 5,
        "retry_budget": 60.0,
        "backoff_initial": 0.5,
        "backoff_max": 4.0,
        "retry_after_max": 10.0,
    }
    base.update(overrides)
    return Settings(**base)


class Clock:
    """A fake monotonic clock whose sleep records the wait and moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder:
    """Serves the queued answers in turn (the last one repeats) and records every request."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


def make(recorder: Recorder, **overrides: Any) -> tuple[PleoClient, Clock]:
    conf = settings(**overrides)
    clock = Clock()
    http = make_http_client(conf, transport=httpx.MockTransport(recorder))
    return PleoClient(http, conf, sleep=clock.sleep, clock=clock), clock


def ok(payload: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=payload, headers=headers)


def fail(
    status: int, kind: str = "ERROR", message: str = "It failed.", **headers: str
) -> httpx.Response:
    return httpx.Response(status, json={"type": kind, "message": message}, headers=headers)


def job_body(**overrides: Any) -> dict[str, Any]:
    job = {
        "id": JOB,
        "companyId": COMPANY,
        "createdAt": "2025-05-23T15:21:32Z",
        "expiresIn": 3600,
        "isInteractive": True,
        "numberOfItems": 2,
        "status": "pending",
        "vendorBasedBookkeeping": False,
    }
    job.update(overrides)
    return job


def items_page(
    numbers: list[int], *, end: str | None = None, total: int | None = None, status: str = "pending"
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "currentRequestPagination": {"parameters": {}},
        "hasNextPage": end is not None,
        "hasPreviousPage": False,
        "endCursor": end,
        "total": total,
    }
    data = [{"accountingEntryId": entry(n), "exportJobId": JOB, "status": status} for n in numbers]
    return {"data": data, "pagination": info}


def query(request: httpx.Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.url.params.multi_items():
        params.setdefault(key, []).append(value)
    return params


# --- auth and the HTTP client ---------------------------------------------------------------


def test_bearer_token_is_sent_with_accept_and_user_agent() -> None:
    """With a token set, every request carries Authorization: Bearer, Accept JSON and our agent."""
    rec = Recorder(ok({"data": job_body()}))
    client, _ = make(rec)
    client.get_job(JOB)
    headers = rec.requests[0].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("pleo-export-producer/")


def test_api_key_is_sent_as_basic_auth_with_empty_password() -> None:
    """With only an API key, Basic auth carries the key as user name and an empty password."""
    rec = Recorder(ok({"data": job_body()}))
    client, _ = make(rec, api_token=None, api_key=API_KEY)
    client.get_job(JOB)
    expected = base64.b64encode(f"{API_KEY}:".encode()).decode()
    assert rec.requests[0].headers["Authorization"] == f"Basic {expected}"


def test_no_credentials_sends_no_authorization_header() -> None:
    """Without token or key, no Authorization header is sent (the simulator may not need one)."""
    rec = Recorder(ok({"data": job_body()}))
    client, _ = make(rec, api_token=None, api_key=None)
    client.get_job(JOB)
    assert "Authorization" not in rec.requests[0].headers


def test_http_client_uses_settings_base_url_and_timeout() -> None:
    """make_http_client points at api_url with the configured per-request timeout."""
    http = make_http_client(settings(http_timeout=3.5))
    assert str(http.base_url) == "https://pleo.test"
    assert http.timeout == httpx.Timeout(3.5)
    http.close()


def test_secrets_never_appear_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Neither the token nor the API key shows in repr(client), str(error) or log records."""
    caplog.set_level(logging.DEBUG)
    for creds in ({"api_token": TOKEN}, {"api_token": None, "api_key": API_KEY}):
        rec = Recorder(fail(503), fail(401, "UNAUTHORIZED", "Bad credentials."))
        client, _ = make(rec, **creds)
        with pytest.raises(AuthenticationFailed) as caught:
            client.get_job(JOB)
        shown = [repr(client), str(caught.value), repr(caught.value), repr(client._http.auth)]
        shown += [record.getMessage() for record in caplog.records]
        for text in shown:
            assert TOKEN not in text
            assert API_KEY not in text


# --- jobs and events ----------------------------------------------------------------------------


def test_get_job_reads_the_job() -> None:
    """get_job GETs /v3/export-jobs/{id} and returns the checked job."""
    rec = Recorder(ok({"data": job_body(status="in_progress")}))
    client, _ = make(rec)
    job = client.get_job(JOB)
    assert (job.id, job.company_id, job.status) == (JOB, COMPANY, "in_progress")
    assert rec.requests[0].method == "GET"
    assert rec.requests[0].url.path == f"/v3/export-jobs/{JOB}"


def test_post_job_event_sends_job_id_and_event() -> None:
    """post_job_event POSTs {jobId, event, failureReason?, failureReasonType?} and accepts 202."""
    rec = Recorder(httpx.Response(202))
    client, _ = make(rec)
    client.post_job_event(
        JOB, "failed", failure_reason="ERP down.", failure_reason_type="service_unreachable"
    )
    request = rec.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v3/export-job-events")
    assert json.loads(request.content) == {
        "jobId": JOB,
        "event": "failed",
        "failureReason": "ERP down.",
        "failureReasonType": "service_unreachable",
    }


def test_post_job_event_422_is_unprocessable_with_its_type() -> None:
    """A refused status change is Unprocessable carrying Pleo's error type, after one request."""
    rec = Recorder(fail(422, "INVALID_EXPORT_JOB_STATUS_CHANGE", "Export Job status change failed"))
    client, clock = make(rec)
    with pytest.raises(Unprocessable) as caught:
        client.post_job_event(JOB, "started")
    assert caught.value.error_type == "INVALID_EXPORT_JOB_STATUS_CHANGE"
    assert (len(rec.requests), clock.sleeps) == (1, [])


def test_unknown_event_is_refused_before_any_request() -> None:
    """An event outside the spec's enum is a programming error, raised without calling Pleo."""
    rec = Recorder(httpx.Response(202))
    client, _ = make(rec)
    with pytest.raises(ValueError, match="canceled"):
        client.post_job_event(JOB, "canceled")
    assert rec.requests == []


def test_list_jobs_sends_statuses_and_walks_every_page() -> None:
    """list_jobs repeats statuses=, adds company_id, and follows cursors to the last page."""
    other = "0d9b1f52-3c44-4b8e-a1f0-6f2e9b7c5d31"
    first = {"data": [job_body()], "pagination": items_page([], end="JOBSB")["pagination"]}
    last = {"data": [job_body(id=other)], "pagination": items_page([])["pagination"]}
    rec = Recorder(ok(first), ok(last))
    client, _ = make(rec)
    jobs = list(client.list_jobs(["pending", "in_progress"], company_id=COMPANY))
    assert [job.id for job in jobs] == [JOB, other]
    assert query(rec.requests[0]) == {
        "statuses": ["pending", "in_progress"],
        "company_id": [COMPANY],
        "limit": ["2"],
    }
    assert query(rec.requests[1])["after"] == ["JOBSB"]


def test_list_jobs_rejects_unknown_status() -> None:
    """A status outside ExportJobStatus is bad input."""
    client, _ = make(Recorder(ok({})))
    with pytest.raises(BadInput, match="COMPLETED"):
        client.list_jobs(["COMPLETED"])


# --- page walks ---------------------------------------------------------------------------------


def test_full_walk_of_three_pages_sends_limit_then_after_end_cursor() -> None:
    """Three pages are read in turn: limit on every request, after=endCursor from the second on."""
    rec = Recorder(
        ok(items_page([1, 2], end="PAGEB", total=5)),
        ok(items_page([3, 4], end="PAGEC", total=5)),
        ok(items_page([5], total=5)),
    )
    client, _ = make(rec)
    pages = list(client.iter_job_items(JOB))
    assert [item.accounting_entry_id for page in pages for item in page.items] == [
        entry(n) for n in range(1, 6)
    ]
    assert [query(r) for r in rec.requests] == [
        {"limit": ["2"]},
        {"limit": ["2"], "after": ["PAGEB"]},
        {"limit": ["2"], "after": ["PAGEC"]},
    ]
    assert all(r.url.path == f"/v3/export-jobs/{JOB}/items" for r in rec.requests)


def test_status_filter_is_sent() -> None:
    """iter_job_items(status=...) passes the single status filter the spec allows."""
    rec = Recorder(ok(items_page([1])))
    client, _ = make(rec)
    list(client.iter_job_items(JOB, status="pending"))
    assert query(rec.requests[0]) == {"status": ["pending"], "limit": ["2"]}


def test_short_page_that_is_not_last_continues() -> None:
    """A page with fewer items than the limit does not end the walk while hasNextPage is true."""
    rec = Recorder(ok(items_page([1], end="PAGEB")), ok(items_page([2, 3])))
    client, _ = make(rec)
    pages = list(client.iter_job_items(JOB))
    assert [len(page.items) for page in pages] == [1, 2]


def test_empty_page_with_has_next_page_continues() -> None:
    """An empty page that says hasNextPage leads on to the next page."""
    rec = Recorder(ok(items_page([], end="PAGEB")), ok(items_page([1])))
    client, _ = make(rec)
    pages = list(client.iter_job_items(JOB))
    assert [len(page.items) for page in pages] == [0, 1]
    assert len(rec.requests) == 2


def test_export_items_walk_sends_job_id() -> None:
    """iter_export_items reads /v3/export-items?job_id=... with the limit, all pages."""
    item = {
        "_links": {},
        "accountingEntryId": entry(1),
        "accountingEntryLines": [],
        "additionalInformation": {"reconciliationId": "R"},
        "amount": {},
        "companyId": COMPANY,
        "date": "2025-12-10T15:46:34Z",
        "type": "card_purchase",
    }
    page = items_page([], end="PAGEB")
    rec = Recorder(ok({**page, "data": [item]}), ok({**items_page([]), "data": []}))
    client, _ = make(rec)
    pages = list(client.iter_export_items(JOB))
    assert pages[0].items[0].accounting_entry_id == entry(1)
    assert rec.requests[0].url.path == "/v3/export-items"
    assert query(rec.requests[0]) == {"job_id": [JOB], "limit": ["2"]}
    assert query(rec.requests[1]) == {"job_id": [JOB], "limit": ["2"], "after": ["PAGEB"]}


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        ([items_page([1], end="PAGEB"), items_page([2], end="PAGEB")], "cursor loop"),
        (
            [
                {
                    **items_page([1]),
                    "pagination": {**items_page([1])["pagination"], "hasNextPage": True},
                }
            ],
            "endCursor is missing although hasNextPage",
        ),
        (
            [items_page([1, 2], end="PAGEB", total=3), items_page([3, 4], total=3)],
            "more than its total",
        ),
    ],
)
def test_walk_violations_stop_the_walk(answers: list[dict[str, Any]], fragment: str) -> None:
    """A cursor loop, a next page without a cursor or items beyond total raise ContractViolation."""
    rec = Recorder(*(ok(a) for a in answers))
    client, clock = make(rec)
    with pytest.raises(ContractViolation, match=fragment) as caught:
        list(client.iter_job_items(JOB))
    assert caught.value.job_id == JOB
    assert clock.sleeps == []


def test_entry_repeated_across_pages_is_not_counted_against_total() -> None:
    """A page that repeats an earlier entry is passed on (the plan dedupes) without a total lie."""
    rec = Recorder(ok(items_page([1, 2], end="PAGEB", total=3)), ok(items_page([2, 3], total=3)))
    client, _ = make(rec)
    pages = list(client.iter_job_items(JOB))
    assert [len(page.items) for page in pages] == [2, 2]


def test_schema_violation_in_a_page_is_not_retried() -> None:
    """A page with an unknown status fails at once as a ContractViolation, with one request."""
    rec = Recorder(ok(items_page([1], status="exported")))
    client, clock = make(rec)
    with pytest.raises(ContractViolation, match="status"):
        list(client.iter_job_items(JOB))
    assert (len(rec.requests), clock.sleeps) == (1, [])


# --- status mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, PermanentUpstreamError),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, JobNotFound),
        (409, PermanentUpstreamError),
        (413, PermanentUpstreamError),
        (422, Unprocessable),
    ],
)
def test_permanent_refusals_fail_at_once(status: int, error: type[Exception]) -> None:
    """4xx other than 429 fail on the first answer, with one request and no sleep."""
    rec = Recorder(fail(status))
    client, clock = make(rec)
    with pytest.raises(error) as caught:
        client.get_job(JOB)
    assert (len(rec.requests), clock.sleeps) == (1, [])
    assert isinstance(caught.value, PermanentUpstreamError)
    assert caught.value.exit_code == 3
    assert caught.value.status == status


def test_not_found_message_names_request_status_and_reason() -> None:
    """The error is one sentence naming method, path (with the job) and Pleo's explanation."""
    rec = Recorder(fail(404, "EXPORT_NOT_FOUND", "Export job not found."))
    client, _ = make(rec)
    with pytest.raises(JobNotFound) as caught:
        client.get_job(JOB)
    error = caught.value
    assert str(error) == f"Pleo answered 404 to GET /v3/export-jobs/{JOB}: Export job not found."
    assert error.job_id == JOB
    assert error.url == f"https://pleo.test/v3/export-jobs/{JOB}"
    assert isinstance(error.__cause__, httpx.HTTPStatusError)


def test_error_without_job_in_path_names_the_job() -> None:
    """For /v3/export-items, whose path has no job id, the message still names the job."""
    rec = Recorder(fail(422, "EXPORT_JOB_STATUS_UNPROCESSABLE", "Export Job is finished."))
    client, _ = make(rec)
    with pytest.raises(Unprocessable, match=f"GET /v3/export-items for job {JOB}: Export Job"):
        list(client.iter_export_items(JOB))


@pytest.mark.parametrize(
    "method", ["get_job", "iter_job_items", "iter_export_items", "post_event", "update"]
)
@pytest.mark.parametrize("job_id", ["42", "", "../admin", f"{JOB}/items", JOB.replace("-", "")])
def test_non_uuid_job_id_is_bad_input_without_a_request(method: str, job_id: str) -> None:
    """A job id that is not a UUID never becomes part of a URL: BadInput, exit 2, no request."""
    rec = Recorder(ok({}))
    client, _ = make(rec)
    calls: dict[str, Callable[[], object]] = {
        "get_job": lambda: client.get_job(job_id),
        "iter_job_items": lambda: client.iter_job_items(job_id),
        "iter_export_items": lambda: client.iter_export_items(job_id),
        "post_event": lambda: client.post_job_event(job_id, "started"),
        "update": lambda: client.update_job_items(job_id, []),
    }
    with pytest.raises(BadInput) as caught:
        calls[method]()
    assert caught.value.exit_code == 2
    assert rec.requests == []


# --- retries ------------------------------------------------------------------------------------


def test_429_with_retry_after_seconds_waits_that_long_then_succeeds() -> None:
    """A 429 with Retry-After: 3 sleeps 3 s, then the retried request succeeds."""
    rec = Recorder(fail(429, **{"Retry-After": "3"}), ok({"data": job_body()}))
    client, clock = make(rec)
    assert client.get_job(JOB).id == JOB
    assert (len(rec.requests), clock.sleeps) == (2, [3.0])


def test_429_with_retry_after_http_date_is_capped() -> None:
    """An HTTP-date Retry-After is read against the server's Date and capped at retry_after_max."""
    later = format_datetime(NOW + timedelta(seconds=5), usegmt=True)
    much_later = format_datetime(NOW + timedelta(minutes=10), usegmt=True)
    date = format_datetime(NOW, usegmt=True)
    rec = Recorder(
        fail(429, **{"Retry-After": later, "Date": date}),
        fail(429, **{"Retry-After": much_later, "Date": date}),
        ok({"data": job_body()}),
    )
    client, clock = make(rec)
    client.get_job(JOB)
    assert clock.sleeps == [5.0, 10.0]


def test_429_without_usable_retry_after_backs_off_with_jitter() -> None:
    """A 429 with no or an unparseable Retry-After falls back to the jittered backoff."""
    rec = Recorder(fail(429), fail(429, **{"Retry-After": "soon"}), ok({"data": job_body()}))
    client, clock = make(rec)
    client.get_job(JOB)
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.5
    assert 0 <= clock.sleeps[1] <= 1.0


@pytest.mark.parametrize(
    "first",
    [
        fail(503),
        fail(500),
        httpx.Response(502, text="<html>Bad gateway</html>"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.Response(200, content=b'{"data": {"id": "8eb6d4a2-6c1f'),
    ],
    ids=["503", "500", "502-html", "timeout", "connect", "reset", "truncated-json"],
)
def test_transient_failure_is_retried_then_succeeds(first: httpx.Response | Exception) -> None:
    """5xx, timeouts, connection failures and truncated JSON are retried once and then succeed."""
    rec = Recorder(first, ok({"data": job_body()}))
    client, clock = make(rec)
    assert client.get_job(JOB).id == JOB
    assert len(rec.requests) == 2
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= 0.5


def test_transport_failure_message_names_request_and_job_and_keeps_cause() -> None:
    """A timeout that outlives the retries names the request and job and chains back to httpx."""
    rec = Recorder(httpx.ReadTimeout("read timed out"))
    client, _ = make(rec, retry_attempts=2)
    with pytest.raises(TransientUpstreamError) as caught:
        list(client.iter_export_items(JOB))
    error = caught.value
    assert str(error).startswith(
        f"Pleo did not answer GET /v3/export-items for job {JOB} in time (ReadTimeout); gave up"
        " after 2 attempts"
    )
    assert error.job_id == JOB
    assert isinstance(error.__cause__, TransientUpstreamError)
    assert isinstance(error.__cause__.__cause__, httpx.ReadTimeout)


def test_retry_attempts_exhausted_raises_transient_with_attempts() -> None:
    """After retry_attempts failures the last error is raised, saying how many attempts it took."""
    rec = Recorder(fail(503, message="Service Unavailable"))
    client, clock = make(rec, retry_attempts=3)
    with pytest.raises(TransientUpstreamError) as caught:
        client.get_job(JOB)
    error = caught.value
    assert len(rec.requests) == 3
    assert len(clock.sleeps) == 2
    assert error.exit_code == 4
    assert error.status == 503
    assert str(error).startswith(f"Pleo answered 503 to GET /v3/export-jobs/{JOB}")
    assert re.search(r": Service Unavailable; gave up after 3 attempts in \d+\.\d s\.$", str(error))
    assert isinstance(error.__cause__, TransientUpstreamError)


def test_budget_exhausted_raises_transient_within_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries stop when the time budget is spent; no sleep runs past it; each retry is logged."""
    caplog.set_level(logging.INFO)
    rec = Recorder(fail(429, **{"Retry-After": "4"}))
    client, clock = make(rec, retry_attempts=100, retry_budget=10.0)
    with pytest.raises(RateLimited) as caught:
        client.get_job(JOB)
    assert clock.sleeps == [4.0, 4.0, 2.0]
    assert len(rec.requests) == 4
    message = str(caught.value)
    assert message.endswith("; gave up after 4 attempts in 10.0 s.")
    assert caught.value.exit_code == 4
    events = [r.getMessage() for r in caplog.records if r.getMessage().startswith("http_")]
    assert len(events) == 4
    assert events[0].startswith(f"http_retry job_id={JOB} request=GET /v3/export-jobs/{JOB}")
    assert "status=429 attempt=1 wait=4.00" in events[0]
    assert events[-1].startswith("http_gave_up")


def test_put_items_is_retried_and_reads_partial_errors() -> None:
    """An item update is retried on 503 and returns both updated items and per-item errors."""
    answer = {
        "data": [{"accountingEntryId": entry(1), "exportJobId": JOB, "status": "successful"}],
        "errors": [
            {
                "accountingEntryId": entry(2),
                "message": "No such entry.",
                "type": "ACCOUNTING_ENTRY_DOES_NOT_EXIST",
            }
        ],
    }
    rec = Recorder(fail(503), ok(answer))
    client, _ = make(rec)
    updates = [
        {"accountingEntryId": entry(1), "status": "successful"},
        {"accountingEntryId": entry(2), "status": "failed", "failureReasonType": "vendor_unknown"},
    ]
    result = client.update_job_items(JOB, updates)
    assert result.data == (JobItem(entry(1), "successful"),)
    assert result.errors == (
        ItemError(entry(2), "No such entry.", "ACCOUNTING_ENTRY_DOES_NOT_EXIST"),
    )
    assert rec.requests[-1].method == "PUT"
    assert rec.requests[-1].url.path == f"/v3/export-jobs/{JOB}/items"
    assert json.loads(rec.requests[-1].content) == updates


@pytest.mark.parametrize(
    ("first", "applied"),
    [
        (fail(503), False),
        (fail(429), False),
        (httpx.ConnectError("connection refused"), False),
        (httpx.ConnectTimeout("connect timed out"), False),
        (fail(500), True),
        (httpx.Response(502, text="<html>Bad gateway</html>"), True),
        (fail(504), True),
        (httpx.ReadTimeout("read timed out"), True),
        (httpx.RemoteProtocolError("peer closed connection"), True),
        (httpx.Response(200, content=b'{"data": [{"accountingEntryId'), True),
    ],
    ids=[
        "503",
        "429",
        "connect",
        "connect-timeout",
        "500",
        "502",
        "504",
        "read-timeout",
        "reset",
        "truncated-json",
    ],
)
def test_an_item_update_that_may_have_applied_is_not_sent_again(
    first: httpx.Response | Exception, applied: bool
) -> None:
    """A PUT Pleo may have applied (no usable answer came back) is raised at once, saying so;
    one that cannot have reached Pleo is retried. A GET is retried after either."""
    updates = [{"accountingEntryId": entry(1), "status": "successful"}]
    answer = {
        "data": [{"accountingEntryId": entry(1), "exportJobId": JOB, "status": "successful"}],
        "errors": [],
    }
    rec = Recorder(first, ok(answer))
    client, _ = make(rec)
    if applied:
        with pytest.raises(TransientUpstreamError) as caught:
            client.update_job_items(JOB, updates)
        assert caught.value.maybe_applied
        assert "gave up after 1 attempt in" in str(caught.value)
        assert [r.method for r in rec.requests] == ["PUT"]
    else:
        assert client.update_job_items(JOB, updates).data == (JobItem(entry(1), "successful"),)
        assert [r.method for r in rec.requests] == ["PUT", "PUT"]
    rec = Recorder(first, ok({"data": job_body()}))
    client, _ = make(rec)
    assert client.get_job(JOB).id == JOB
    assert len(rec.requests) == 2


def test_update_of_more_than_100_items_is_refused_before_sending() -> None:
    """More than 100 updates raise ValueError without a request, so a 413 can never happen."""
    rec = Recorder(ok({"data": [], "errors": []}))
    client, _ = make(rec)
    updates = [{"accountingEntryId": entry(n), "status": "successful"} for n in range(101)]
    with pytest.raises(ValueError, match="at most 100"):
        client.update_job_items(JOB, updates)
    assert rec.requests == []
    client.update_job_items(JOB, updates[:100])
    assert len(rec.requests) == 1


# --- the pure retry decisions -------------------------------------------------------------------


def test_only_transient_errors_are_retryable() -> None:
    """Transient and rate-limited errors are retried; permanent ones, violations and others not."""
    assert is_retryable(TransientUpstreamError("x"))
    assert is_retryable(RateLimited("x"))
    assert not is_retryable(PermanentUpstreamError("x"))
    assert not is_retryable(ContractViolation("x"))
    assert not is_retryable(ValueError("x"))
    assert not is_retryable(None)


def test_choose_wait_prefers_capped_retry_after_and_never_passes_the_budget() -> None:
    """Retry-After wins (capped), else the backoff; either is cut to what is left of the budget."""
    limited = RateLimited("x", retry_after=50.0)
    assert choose_wait(limited, backoff=1.0, remaining=100.0, retry_after_max=30.0) == 30.0
    assert (
        choose_wait(
            RateLimited("x", retry_after=2.0), backoff=9.0, remaining=100.0, retry_after_max=30.0
        )
        == 2.0
    )
    assert choose_wait(RateLimited("x"), backoff=1.5, remaining=100.0, retry_after_max=30.0) == 1.5
    assert (
        choose_wait(TransientUpstreamError("x"), backoff=1.5, remaining=1.0, retry_after_max=30.0)
        == 1.0
    )
    assert choose_wait(limited, backoff=1.0, remaining=-3.0, retry_after_max=30.0) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        (" 1.5 ", 1.5),
        ("-1", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("Mon, 05 Jan 2026 12:00:30 GMT", 30.0),
        ("Mon, 05 Jan 2026 12:00:30 -0000", 30.0),
        ("Mon, 32 Foo 2026 25:00:00 GMT", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(
    value: str | None, expected: float | None
) -> None:
    """Retry-After is delay-seconds or an HTTP-date; a past date is 0 and nonsense is None."""
    assert parse_retry_after(value, now=NOW) == expected


def test_exhausted_keeps_the_class_and_says_how_long() -> None:
    """The give-up error keeps the last error's class and fields and adds attempts and time."""
    last = RateLimited("Pleo answered 429 to GET /x.", job_id=JOB, url="u", retry_after=3.0)
    error = exhausted(last, 1, 0.04)
    assert isinstance(error, RateLimited)
    assert str(error) == "Pleo answered 429 to GET /x; gave up after 1 attempt in 0.0 s."
    assert (error.job_id, error.status, error.url, error.retry_after) == (JOB, 429, "u", 3.0)


def _context_is_fresh_in_child(parent_id: int, answer: Any) -> None:
    answer.put(id(tls_context()) != parent_id and tls_context() is tls_context())


def test_clients_share_one_verifying_tls_context_per_process() -> None:
    """Every client of a process verifies with one context; a forked process builds its own."""
    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
    fork = multiprocessing.get_context("fork")
    answer = fork.Queue()
    child = fork.Process(target=_context_is_fresh_in_child, args=(id(context), answer))
    child.start()
    child.join(timeout=10)
    assert answer.get(timeout=5) is True
