"""The Pleo API simulator over real HTTP: spec-shaped pages, the job state machine, auth, faults."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devtools.simulator import FaultRule, JobSpec, RunningSimulator, SimState, start_in_thread
from tests.support.stops import BackgroundStops

pytestmark = pytest.mark.integration

CURSOR = re.compile(r"^[A-Z2-7=~]+$")
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BEARER = {"Authorization": "Bearer test-token"}
MAX_PAGES = 10_000

Serve = Callable[..., httpx.Client]


@pytest.fixture
def serve(background_stops: BackgroundStops) -> Iterator[Serve]:
    """Start simulators on 127.0.0.1:0 and hand back a client for each; stop them all afterwards."""
    started: list[tuple[RunningSimulator, httpx.Client]] = []

    def start(state: SimState, headers: dict[str, str] | None = None) -> httpx.Client:
        sim = start_in_thread(state, host="127.0.0.1", port=0)
        client = httpx.Client(
            base_url=sim.url, headers=BEARER if headers is None else headers, timeout=5.0
        )
        started.append((sim, client))
        return client

    yield start
    for sim, client in started:
        client.close()
        background_stops.stop(sim.stop)


def walk(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Follow ``endCursor`` until ``hasNextPage`` is false; return every page body."""
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while len(pages) < MAX_PAGES:
        response = client.get(path, params={**params, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        pages.append(response.json())
        pagination = pages[-1]["pagination"]
        if not pagination["hasNextPage"]:
            return pages
        after = pagination["endCursor"]
    raise AssertionError("the walk did not end")


def ids(pages: list[dict[str, Any]]) -> list[str]:
    return [entry["accountingEntryId"] for page in pages for entry in page["data"]]


def items_path(job_id: str) -> str:
    return f"/v3/export-jobs/{job_id}/items"


def post_event(client: httpx.Client, job_id: str, event: str, **extra: str) -> httpx.Response:
    return client.post("/v3/export-job-events", json={"jobId": job_id, "event": event, **extra})


# --- pagination ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 37, 1000])
def test_pages_walk_the_whole_job_with_any_limit(serve: Serve, limit: int) -> None:
    """Walking both layers with any limit yields every entry once, with valid cursors and totals."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=150, missing_export_items=4, seed=3))
    client = serve(state)

    pages = walk(client, items_path(job_id), limit=limit)
    assert len(pages) == -(-150 // limit)
    assert sorted(ids(pages)) == sorted(item.accounting_entry_id for item in state.items(job_id))
    assert len(set(ids(pages))) == 150
    for page in pages:
        pagination = page["pagination"]
        assert pagination["total"] == 150
        assert "parameters" in pagination["currentRequestPagination"]
        assert CURSOR.fullmatch(pagination["startCursor"])
        assert CURSOR.fullmatch(pagination["endCursor"])
    assert pages[0]["pagination"]["hasPreviousPage"] is False

    data = walk(client, "/v3/export-items", job_id=job_id, limit=limit)
    expected = sorted(entry["accountingEntryId"] for entry in state.export_items(job_id))
    assert sorted(ids(data)) == expected
    assert len(expected) == 146


def test_limit_is_capped_at_max_page_size_and_defaults_to_20(serve: Serve) -> None:
    """A page never exceeds max_page_size whatever limit asks; without limit it holds 20."""
    state = SimState(max_page_size=50)
    job_id = state.add_job(JobSpec(items=120))
    client = serve(state)

    capped = client.get(items_path(job_id), params={"limit": 1000}).json()
    assert len(capped["data"]) == 50
    assert capped["pagination"]["hasNextPage"] is True
    assert capped["pagination"]["currentRequestPagination"]["limit"] == 50
    assert len(client.get(items_path(job_id)).json()["data"]) == 20
    assert len(ids(walk(client, items_path(job_id), limit=1000))) == 120


def test_malformed_or_foreign_cursors_are_refused(serve: Serve) -> None:
    """A cursor that breaks the pattern, does not decode, or belongs to another job gets 400."""
    state = SimState()
    first = state.add_job(JobSpec(items=10, seed=1))
    second = state.add_job(JobSpec(items=10, seed=2))
    client = serve(state)
    foreign = client.get(items_path(second), params={"limit": 2}).json()["pagination"]["endCursor"]

    for cursor in ("abc", "AB1", "AAAA", foreign):
        response = client.get(items_path(first), params={"after": cursor})
        assert response.status_code == 400, cursor
    assert client.get(items_path(first), params={"limit": -1}).status_code == 400
    assert client.get(items_path(first), params={"limit": 2, "offset": 1}).status_code == 200
    both = {"offset": 1, "after": foreign}
    assert client.get(items_path(first), params=both).status_code == 400


def test_before_cursor_pages_backwards(serve: Serve) -> None:
    """``before=<startCursor>`` of a page serves the page that preceded it."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=25))
    client = serve(state)

    pages = walk(client, items_path(job_id), limit=10)
    start = pages[1]["pagination"]["startCursor"]
    back = client.get(items_path(job_id), params={"limit": 10, "before": start}).json()
    assert ids([back]) == ids(pages[:1])
    assert back["pagination"]["hasPreviousPage"] is False
    assert back["pagination"]["hasNextPage"] is True


def test_status_filter_pages_only_matching_items(serve: Serve) -> None:
    """``status=`` returns only items in that status and a total that counts only them."""
    state = SimState()
    shares = {"pending": 0.9, "successful": 0.05, "failed": 0.05}
    job_id = state.add_job(JobSpec(items=200, item_statuses=shares, seed=5))
    client = serve(state)

    pages = walk(client, items_path(job_id), limit=30, status="pending")
    statuses = {entry["status"] for page in pages for entry in page["data"]}
    assert statuses == {"pending"}
    assert len(ids(pages)) == pages[0]["pagination"]["total"] == 180
    assert client.get(items_path(job_id), params={"status": "done"}).status_code == 400


def test_items_carry_explicit_nulls_and_export_items_the_required_fields(serve: Serve) -> None:
    """Control items show unset optional fields as null; export items have every required field."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=30, missing_account_ratio=0.5, seed=9))
    client = serve(state)

    item = client.get(items_path(job_id), params={"limit": 1}).json()["data"][0]
    assert item["externalId"] is None
    assert item["failureReasonType"] is None
    assert item["exportJobId"] == job_id
    required = {"_links", "accountingEntryId", "accountingEntryLines", "additionalInformation"}
    required |= {"amount", "companyId", "date", "type"}
    exports = [e for page in walk(client, "/v3/export-items", job_id=job_id) for e in page["data"]]
    for export in exports:
        assert required <= export.keys()
        assert DATE_TIME.fullmatch(export["date"])
        assert set(export["amount"]) == {"inSupplierCurrency", "inWalletCurrency"}
        assert "reconciliationId" in export["additionalInformation"]
    without_account = [e for e in exports if e["accountingEntryLines"][0]["account"] is None]
    assert len(without_account) == 15


def test_pages_are_unsorted_and_the_layers_disagree_on_order(serve: Serve) -> None:
    """Neither layer is sorted by id or date, and the two layers list entries in other orders."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=60, seed=4))
    client = serve(state)

    control = ids(walk(client, items_path(job_id), limit=25))
    exports = [e for p in walk(client, "/v3/export-items", job_id=job_id) for e in p["data"]]
    data = [entry["accountingEntryId"] for entry in exports]
    assert control != sorted(control)
    assert data != sorted(data)
    assert [e["date"] for e in exports] != sorted(e["date"] for e in exports)
    assert control != data


def test_data_is_deterministic_from_the_seed() -> None:
    """The same specs give the same ids, statuses, dates and orders; another seed gives others."""
    spec = JobSpec(items=80, missing_export_items=3, same_date_groups=2, seed=11)
    one, two = SimState(), SimState()
    job_one, job_two = one.add_job(spec), two.add_job(spec)

    assert job_one == job_two
    assert one.items(job_one) == two.items(job_two)
    assert one.export_items(job_one) == two.export_items(job_two)
    other = SimState()
    other_job = other.add_job(JobSpec(items=80, seed=12))
    assert other.items(other_job) != one.items(job_one)


def test_planted_quirks_are_present() -> None:
    """missing_export_items and same_date_groups plant exactly what they say."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=50, missing_export_items=5, same_date_groups=3, seed=2))

    exports = state.export_items(job_id)
    assert len(exports) == 45
    dates = [entry["date"] for entry in exports]
    shared = {date for date in dates if dates.count(date) > 1}
    assert len(shared) == 3


# --- the job state machine -----------------------------------------------------------------------


def test_job_goes_pending_started_completed_and_refuses_other_moves(serve: Serve) -> None:
    """started moves pending to in_progress, completed ends it; repeats and reversals get 422."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=5))
    client = serve(state)

    assert client.get(f"/v3/export-jobs/{job_id}").json()["data"]["status"] == "pending"
    assert post_event(client, job_id, "completed").status_code == 422
    started = post_event(client, job_id, "started")
    assert started.status_code == 202
    assert started.content == b""
    job = client.get(f"/v3/export-jobs/{job_id}").json()["data"]
    assert job["status"] == "in_progress"
    assert job["startedAt"] is not None
    again = post_event(client, job_id, "started")
    assert again.status_code == 422
    assert again.json()["type"] == "INVALID_EXPORT_JOB_STATUS_CHANGE"
    assert post_event(client, job_id, "completed_with_errors").status_code == 202
    assert post_event(client, job_id, "completed").status_code == 422
    assert state.jobs[job_id].status == "completed_with_errors"
    assert state.jobs[job_id].completed_at is not None
    events = [(event.event, event.accepted) for event in state.events(job_id)]
    assert events == [
        ("completed", False),
        ("started", True),
        ("started", False),
        ("completed_with_errors", True),
        ("completed", False),
    ]


def test_failed_job_abandons_unfinished_items(serve: Serve) -> None:
    """pending --failed--> failed, and its pending items become abandoned; finished ones stay."""
    state = SimState()
    shares = {"pending": 0.8, "successful": 0.2}
    job_id = state.add_job(JobSpec(items=10, item_statuses=shares))
    client = serve(state)

    reason = {"failureReason": "ERP down", "failureReasonType": "accounting_system_unreachable"}
    assert post_event(client, job_id, "failed", **reason).status_code == 202
    job = client.get(f"/v3/export-jobs/{job_id}").json()["data"]
    assert (job["status"], job["failureReasonType"]) == ("failed", "accounting_system_unreachable")
    assert state.item_counts(job_id) == {"abandoned": 8, "successful": 2}


def test_bad_events_and_unknown_jobs_are_refused(serve: Serve) -> None:
    """Malformed event bodies and job ids get 400; an unknown job gets 404 EXPORT_NOT_FOUND."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=1))
    client = serve(state)
    unknown = str(uuid.uuid4())

    assert client.post("/v3/export-job-events", content=b"{not json").status_code == 400
    assert post_event(client, job_id, "cancelled").status_code == 400
    assert post_event(client, "not-a-uuid", "started").status_code == 400
    bad_reason = post_event(client, job_id, "failed", failureReasonType="bored")
    assert bad_reason.status_code == 400
    missing = post_event(client, unknown, "started")
    assert missing.status_code == 404
    assert missing.json() == {"type": "EXPORT_NOT_FOUND", "message": "Export job not found."}
    assert client.get(f"/v3/export-jobs/{unknown}").status_code == 404
    assert client.get("/v3/export-jobs/42").status_code == 400
    assert client.get(items_path(unknown)).status_code == 404


def test_jobs_list_filters_by_status_and_company_oldest_first(serve: Serve) -> None:
    """GET /v3/export-jobs pages jobs in creation order, filtered by statuses and company_id."""
    state = SimState()
    company = str(uuid.uuid4())
    first = state.add_job(JobSpec(items=1, seed=1))
    second = state.add_job(JobSpec(items=1, seed=2, status="in_progress"))
    state.add_job(JobSpec(items=1, seed=3, status="completed"))
    fourth = state.add_job(JobSpec(items=1, seed=4, company_id=company))
    client = serve(state)

    pages = walk(client, "/v3/export-jobs", statuses=["pending", "in_progress"], limit=1)
    assert [job["id"] for page in pages for job in page["data"]] == [first, second, fourth]
    by_company = client.get("/v3/export-jobs", params={"company_id": company}).json()
    assert [job["id"] for job in by_company["data"]] == [fourth]
    assert client.get("/v3/export-jobs", params={"statuses": "done"}).status_code == 400


# --- item updates and finished jobs --------------------------------------------------------------


def test_put_updates_items_and_lists_unknown_entries_as_errors(serve: Serve) -> None:
    """A PUT updates known entries and returns errors[] for unknown ones, with a 200."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=5, status="in_progress"))
    client = serve(state)
    first, second = (item.accounting_entry_id for item in state.items(job_id)[:2])
    unknown = str(uuid.uuid4())
    body = [
        {
            "accountingEntryId": first,
            "status": "successful",
            "exportedAt": "2026-04-22T10:08:56Z",
            "externalId": "ext-1",
            "externalUrl": "https://erp.example.com/1",
        },
        {
            "accountingEntryId": second,
            "status": "failed",
            "failureReason": "Vendor not found in ERP",
            "failureReasonType": "vendor_unknown",
        },
        {"accountingEntryId": unknown, "status": "successful"},
    ]

    response = client.put(items_path(job_id), json=body)
    assert response.status_code == 200
    answer = response.json()
    assert [item["status"] for item in answer["data"]] == ["successful", "failed"]
    assert answer["errors"] == [
        {
            "accountingEntryId": unknown,
            "message": "Accounting entry does not exist.",
            "type": "ACCOUNTING_ENTRY_DOES_NOT_EXIST",
        }
    ]
    current = {item.accounting_entry_id: item for item in state.items(job_id)}
    assert current[first].external_id == "ext-1"
    assert current[second].failure_reason_type == "vendor_unknown"
    assert state.calls[-1].items == 3


def test_put_refuses_more_than_100_items_and_bad_bodies(serve: Serve) -> None:
    """Over 100 updates get 413 EXPORT_JOB_ITEMS_UPDATE_LIMIT; bad statuses or shapes get 400."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=101, status="in_progress"))
    client = serve(state)
    updates = [
        {"accountingEntryId": item.accounting_entry_id, "status": "successful"}
        for item in state.items(job_id)
    ]

    too_many = client.put(items_path(job_id), json=updates)
    assert too_many.status_code == 413
    assert too_many.json()["type"] == "EXPORT_JOB_ITEMS_UPDATE_LIMIT"
    assert client.put(items_path(job_id), json=updates[:100]).status_code == 200
    bad_status = [{**updates[0], "status": "done"}]
    assert client.put(items_path(job_id), json=bad_status).status_code == 400
    bad_reason = [{**updates[0], "status": "failed", "failureReasonType": "meh"}]
    assert client.put(items_path(job_id), json=bad_reason).status_code == 400
    assert client.put(items_path(job_id), json={"items": []}).status_code == 400
    assert client.put(items_path(job_id), json=[{"status": "failed"}]).status_code == 400


def test_finished_job_refuses_updates_and_export_items(serve: Serve) -> None:
    """After completion PUT and GET export-items answer 422; the control layer stays readable."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=3, status="in_progress"))
    client = serve(state)
    entry = state.items(job_id)[0].accounting_entry_id
    assert client.get("/v3/export-items", params={"job_id": job_id}).status_code == 200

    assert post_event(client, job_id, "completed").status_code == 202
    put = client.put(items_path(job_id), json=[{"accountingEntryId": entry, "status": "failed"}])
    assert put.status_code == 422
    assert put.json() == {
        "type": "EXPORT_JOB_STATUS_UNPROCESSABLE",
        "message": "Export job is finished.",
    }
    exports = client.get("/v3/export-items", params={"job_id": job_id})
    assert exports.status_code == 422
    assert exports.json()["type"] == "EXPORT_JOB_STATUS_UNPROCESSABLE"
    assert client.get(items_path(job_id)).status_code == 200
    assert client.get("/v3/export-items").status_code == 400


# --- authentication and latency ------------------------------------------------------------------


def test_requests_without_valid_credentials_get_401(serve: Serve) -> None:
    """A missing, wrong or wrong-kind credential gets 401 UNAUTHORIZED; the right one passes."""
    key_auth = "Basic " + base64.b64encode(b"the-key:").decode()
    state = SimState(token="the-token", api_key="the-key")
    job_id = state.add_job(JobSpec(items=1))
    client = serve(state, headers={})
    path = f"/v3/export-jobs/{job_id}"

    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.json()["type"] == "UNAUTHORIZED"
    for header in ("Bearer nope", "Basic " + base64.b64encode(b"nope:").decode(), "Token x"):
        assert client.get(path, headers={"Authorization": header}).status_code == 401, header
    assert client.get(path, headers={"Authorization": "Bearer the-token"}).status_code == 200
    assert client.get(path, headers={"Authorization": key_auth}).status_code == 200

    state.api_key = None
    assert client.get(path, headers={"Authorization": key_auth}).status_code == 401
    state.token = None
    assert client.get(path, headers={"Authorization": "Bearer anything"}).status_code == 200
    assert client.get(path, headers={"Authorization": key_auth}).status_code == 200
    assert client.get(path).status_code == 401


def test_latency_delays_requests_without_serialising_them(serve: Serve) -> None:
    """Each request waits ``latency`` seconds, and concurrent requests wait at the same time."""
    state = SimState(latency=0.3)
    job_id = state.add_job(JobSpec(items=1))
    client = serve(state)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(
            pool.map(lambda _: client.get(f"/v3/export-jobs/{job_id}").status_code, range(4))
        )
    elapsed = time.monotonic() - started
    assert codes == [200] * 4
    assert 0.3 <= elapsed < 1.0


# --- faults --------------------------------------------------------------------------------------


def test_status_fault_honours_after_every_and_times(serve: Serve) -> None:
    """A status fault skips ``after`` requests, fires on every ``every``-th, at most ``times``."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=1))
    state.add_fault(FaultRule(endpoint="job", kind="status", status=503, after=1, every=2, times=2))
    client = serve(state)

    responses = [client.get(f"/v3/export-jobs/{job_id}") for _ in range(8)]
    assert [r.status_code for r in responses] == [200, 200, 503, 200, 503, 200, 200, 200]
    assert responses[2].json()["type"] == "SERVICE_UNAVAILABLE"
    assert [call.fault for call in state.calls][:3] == [None, None, "status"]


def test_rate_limit_fault_sends_retry_after_as_configured(serve: Serve) -> None:
    """rate_limit answers 429 with Retry-After in seconds, as an HTTP date, or not at all."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=1))
    http_date = "Wed, 21 Oct 2026 07:28:00 GMT"
    for retry_after in (7, http_date, None):
        state.add_fault(
            FaultRule(endpoint="any", kind="rate_limit", retry_after=retry_after, times=1)
        )
    client = serve(state)

    answers = [client.get(f"/v3/export-jobs/{job_id}") for _ in range(4)]
    assert [r.status_code for r in answers] == [429, 429, 429, 200]
    assert [r.headers.get("Retry-After") for r in answers[:3]] == ["7", http_date, None]
    assert answers[0].json()["type"] == "TOO_MANY_REQUESTS"


def test_timeout_fault_outlasts_the_client_read_timeout(serve: Serve) -> None:
    """A timeout fault holds the answer past the client's read timeout; the next one is normal."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=1))
    state.add_fault(FaultRule(endpoint="job", kind="timeout", delay=5.0, times=1))
    client = serve(state)

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v3/export-jobs/{job_id}", timeout=0.3)
    assert time.monotonic() - started < 3.0
    assert client.get(f"/v3/export-jobs/{job_id}").status_code == 200


def test_drop_fault_closes_the_connection_without_an_answer(serve: Serve) -> None:
    """A drop fault cuts the connection; the client sees a protocol error, the call status 0."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=1))
    state.add_fault(FaultRule(endpoint="job", kind="drop", times=1))
    client = serve(state)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/v3/export-jobs/{job_id}")
    assert client.get(f"/v3/export-jobs/{job_id}").status_code == 200
    assert [call.status for call in state.calls] == [0, 200]


def test_truncated_fault_cuts_the_body_in_half(serve: Serve) -> None:
    """A truncated fault answers 200 with half a JSON body that does not parse."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=10))
    state.add_fault(FaultRule(endpoint="job_items", kind="truncated", times=1))
    client = serve(state)

    cut = client.get(items_path(job_id))
    whole = client.get(items_path(job_id))
    assert cut.status_code == 200
    assert len(cut.content) == len(whole.content) // 2
    with pytest.raises(ValueError, match=r"."):
        cut.json()


def test_cursor_loop_fault_repeats_an_issued_cursor(serve: Serve) -> None:
    """A cursor_loop fault makes a page's endCursor the cursor the client just sent."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=30))
    state.add_fault(FaultRule(endpoint="job_items", kind="cursor_loop", after=1, times=1))
    client = serve(state)

    first = client.get(items_path(job_id), params={"limit": 10}).json()["pagination"]
    sent = first["endCursor"]
    second = client.get(items_path(job_id), params={"limit": 10, "after": sent}).json()
    assert second["pagination"]["endCursor"] == sent
    assert second["pagination"]["hasNextPage"] is True


def test_duplicate_fault_repeats_an_entry_of_the_previous_page(serve: Serve) -> None:
    """A duplicate fault puts an entry of the previous page on the next page too."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=30))
    state.add_fault(FaultRule(endpoint="export_items", kind="duplicate", after=1, times=1))
    client = serve(state)

    pages = walk(client, "/v3/export-items", job_id=job_id, limit=10)
    entries = ids(pages)
    assert len(entries) == 31
    assert len(set(entries)) == 30
    assert pages[1]["data"][-1]["accountingEntryId"] in ids(pages[:1])


def test_total_lie_fault_understates_the_total(serve: Serve) -> None:
    """A total_lie fault reports a total smaller than the entries actually served."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=40))
    state.add_fault(FaultRule(endpoint="job_items", kind="total_lie"))
    client = serve(state)

    pages = walk(client, items_path(job_id), limit=15)
    assert {page["pagination"]["total"] for page in pages} == {20}
    assert len(ids(pages)) == 40


def test_schema_fault_breaks_the_first_entry_a_different_way_each_time(serve: Serve) -> None:
    """A schema fault drops status, then invents a status, then garbles the entry id."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=5))
    state.add_fault(FaultRule(endpoint="job_items", kind="schema", times=3))
    client = serve(state)

    firsts = [client.get(items_path(job_id)).json()["data"][0] for _ in range(4)]
    assert "status" not in firsts[0]
    assert firsts[1]["status"] == "exported"
    assert firsts[2]["accountingEntryId"] == "not-a-uuid"
    assert firsts[3]["status"] == "pending"


def test_rate_faults_are_deterministic_for_a_seed(serve: Serve) -> None:
    """A probabilistic fault fires on the same requests for the same state seed."""
    outcomes = []
    for _ in range(2):
        state = SimState(seed=7)
        job_id = state.add_job(JobSpec(items=1))
        state.add_fault(FaultRule(endpoint="job", kind="status", status=500, rate=0.5))
        client = serve(state)
        outcomes.append([client.get(f"/v3/export-jobs/{job_id}").status_code for _ in range(20)])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


# --- the control API -----------------------------------------------------------------------------


def test_control_api_creates_jobs_adds_faults_and_lists_calls(serve: Serve) -> None:
    """/_sim/ creates jobs, shows their events and item counts, manages faults, lists calls."""
    state = SimState()
    client = serve(state)

    created = client.post("/_sim/jobs", json={"items": 12, "seed": 3})
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert state.jobs[job_id].number_of_items == 12
    assert client.post("/_sim/jobs", json={"items": -1}).status_code == 400
    assert client.post("/_sim/jobs", json={"colour": "red"}).status_code == 400

    fault = {"endpoint": "job_events", "kind": "status", "status": 502, "times": 1}
    assert client.post("/_sim/faults", json=fault).status_code == 201
    assert post_event(client, job_id, "started").status_code == 502
    assert client.delete("/_sim/faults").status_code == 204
    assert post_event(client, job_id, "started").status_code == 202

    view = client.get(f"/_sim/jobs/{job_id}").json()
    assert view["status"] == "in_progress"
    assert view["itemStatusCounts"] == {"pending": 12}
    assert [event["event"] for event in view["events"]] == ["started"]
    calls = client.get("/_sim/calls").json()["data"]
    assert [call["status"] for call in calls] == [502, 202]
    assert client.get(f"/_sim/jobs/{uuid.uuid4()}").status_code == 404
