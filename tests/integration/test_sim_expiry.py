"""The simulator's job expiry over real HTTP: ``expiresIn`` seconds without an action fail a job.

Time is a ``ManualClock`` injected into ``SimState``: the tests move it past the deadline instead
of waiting, and every answer is decided against it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.simulator import JobSpec, SimState, start_in_thread
from tests.support.clock import ManualClock
from tests.support.stops import BackgroundStops

pytestmark = pytest.mark.integration

EXPIRES_IN = 3600
MIXED = {"pending": 2, "in_progress": 1, "successful": 1, "failed": 1}


@pytest.fixture
def clock() -> ManualClock:
    """The simulator's time, moved by the test."""
    return ManualClock()


@pytest.fixture
def state(clock: ManualClock) -> SimState:
    """A simulator state on the manual clock, open to any credential."""
    return SimState(seed=7, clock=clock)


@pytest.fixture
def api(state: SimState, background_stops: BackgroundStops) -> Iterator[httpx.Client]:
    """A client of the simulator serving ``state`` over HTTP on 127.0.0.1."""
    headers = {"Authorization": "Bearer t"}
    sim = start_in_thread(state, host="127.0.0.1", port=0)
    with httpx.Client(base_url=sim.url, headers=headers, timeout=5.0) as client:
        yield client
    background_stops.stop(sim.stop)


def job_json(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v3/export-jobs/{job_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def item_statuses(api: httpx.Client, job_id: str) -> Counter[str]:
    response = api.get(f"/v3/export-jobs/{job_id}/items", params={"limit": 100})
    assert response.status_code == 200, response.text
    return Counter(item["status"] for item in response.json()["data"])


def put_item(api: httpx.Client, job_id: str, entry_id: str) -> httpx.Response:
    update = {"accountingEntryId": entry_id, "status": "successful", "externalId": "JE-1"}
    return api.put(f"/v3/export-jobs/{job_id}/items", json=[update])


def post_event(api: httpx.Client, job_id: str, event: str) -> httpx.Response:
    return api.post("/v3/export-job-events", json={"jobId": job_id, "event": event})


def pending_entries(state: SimState, job_id: str) -> list[str]:
    return [i.accounting_entry_id for i in state.items(job_id) if i.status == "pending"]


def test_jobs_expire_after_an_hour_by_default() -> None:
    """A job spec expires after 3600 s unless told otherwise, as in Pleo's webhook example."""
    assert JobSpec().expires_in == 3600


@pytest.mark.parametrize("expires_in", [0, -1, 2**31])
def test_expires_in_outside_int32_seconds_is_refused(expires_in: int) -> None:
    """A job spec whose expiresIn is not 1..2^31-1 seconds cannot be made."""
    with pytest.raises(ValueError, match="expires_in"):
        JobSpec(expires_in=expires_in)


@pytest.mark.parametrize("status", ["pending", "in_progress"])
def test_quiet_job_expires_and_abandons_its_unfinished_items(
    api: httpx.Client, state: SimState, clock: ManualClock, status: str
) -> None:
    """One second past expiresIn with no action: failed/job_expired, unfinished items abandoned."""
    job_id = state.add_job(
        JobSpec(items=5, status=status, item_statuses=MIXED, expires_in=EXPIRES_IN)
    )
    clock.advance(EXPIRES_IN)
    assert job_json(api, job_id)["status"] == status  # exactly expiresIn: not yet "more than"

    clock.advance(1)
    job = job_json(api, job_id)
    assert job["status"] == "failed"
    assert job["failureReasonType"] == "job_expired"
    assert job["failureReason"] == "The export job was not updated within 3600 seconds."
    assert job["expiredAt"] == job["completedAt"] == "2026-01-01T01:00:00Z"
    assert job["lastUpdatedAt"] == "2026-01-01T00:00:00Z"
    assert job["expiresIn"] == EXPIRES_IN
    assert item_statuses(api, job_id) == {"abandoned": 3, "successful": 1, "failed": 1}
    listed = api.get("/v3/export-jobs", params={"statuses": "failed"}).json()["data"]
    assert [j["id"] for j in listed] == [job_id]


def test_expired_job_refuses_writes_like_any_finished_job(
    api: httpx.Client, state: SimState, clock: ManualClock
) -> None:
    """After expiry a PUT, every job event and the data layer answer 422; nothing changes."""
    job_id = state.add_job(JobSpec(items=3, status="in_progress", expires_in=EXPIRES_IN))
    entry = pending_entries(state, job_id)[0]
    clock.advance(EXPIRES_IN + 1)

    refused = put_item(api, job_id, entry)
    assert refused.status_code == 422
    assert refused.json()["type"] == "EXPORT_JOB_STATUS_UNPROCESSABLE"
    for event in ("started", "completed", "completed_with_errors", "failed"):
        answer = post_event(api, job_id, event)
        assert answer.status_code == 422, event
        assert answer.json()["type"] == "INVALID_EXPORT_JOB_STATUS_CHANGE"
    assert api.get("/v3/export-items", params={"job_id": job_id}).status_code == 422
    assert state.update_counts(job_id) == {}
    assert not any(e.accepted for e in state.events(job_id))
    assert state.job(job_id).status == "failed"
    assert item_statuses(api, job_id) == {"abandoned": 3}


def test_each_action_restarts_the_expiry_clock(
    api: httpx.Client, state: SimState, clock: ManualClock
) -> None:
    """An accepted event and an applied PUT each give the job a fresh expiresIn from that moment."""
    job_id = state.add_job(JobSpec(items=3, expires_in=EXPIRES_IN))
    clock.advance(EXPIRES_IN - 1)
    assert post_event(api, job_id, "started").status_code == 202

    clock.advance(EXPIRES_IN - 1)  # 2 h after creation: alive, thanks to the event
    assert put_item(api, job_id, pending_entries(state, job_id)[0]).status_code == 200
    clock.advance(EXPIRES_IN)
    job = job_json(api, job_id)
    assert job["status"] == "in_progress"
    assert job["lastUpdatedAt"] == "2026-01-01T01:59:58Z"

    clock.advance(1)
    job = job_json(api, job_id)
    assert job["status"] == "failed"
    assert job["expiredAt"] == "2026-01-01T02:59:58Z"
    assert item_statuses(api, job_id) == {"successful": 1, "abandoned": 2}


def test_reads_refusals_and_puts_that_change_nothing_do_not_count(
    api: httpx.Client, state: SimState, clock: ManualClock
) -> None:
    """GETs, a refused event and a PUT of an unknown entry leave the original deadline in place."""
    job_id = state.add_job(JobSpec(items=2, status="in_progress", expires_in=EXPIRES_IN))
    clock.advance(EXPIRES_IN - 10)
    job_json(api, job_id)
    item_statuses(api, job_id)
    assert post_event(api, job_id, "started").status_code == 422
    unknown = put_item(api, job_id, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["type"] == "ACCOUNTING_ENTRY_DOES_NOT_EXIST"

    clock.advance(11)
    assert job_json(api, job_id)["expiredAt"] == "2026-01-01T01:00:00Z"


@pytest.mark.parametrize("status", ["completed", "completed_with_errors", "failed"])
def test_finished_jobs_never_expire(
    api: httpx.Client, state: SimState, clock: ManualClock, status: str
) -> None:
    """A job already terminal keeps its status and gets no expiredAt, however long it sits."""
    job_id = state.add_job(JobSpec(items=2, status=status, expires_in=1))
    clock.advance(10 * EXPIRES_IN)
    job = job_json(api, job_id)
    assert (job["status"], job["expiredAt"], job["failureReasonType"]) == (status, None, None)


def test_expiry_is_settled_by_any_access_not_a_timer(state: SimState, clock: ManualClock) -> None:
    """Reading the state in-process settles expiry too, at the exact deadline, once."""
    job_id = state.add_job(JobSpec(items=4, status="in_progress", expires_in=2))
    clock.advance(2.5)
    assert state.item_counts(job_id) == {"abandoned": 4}
    first = state.jobs[job_id]
    clock.advance(EXPIRES_IN)
    assert state.job(job_id) == first
    assert first.expired_at == "2026-01-01T00:00:02Z"


def test_control_api_shows_the_expiry(
    api: httpx.Client, state: SimState, clock: ManualClock
) -> None:
    """``GET /_sim/jobs/{id}`` shows the expired job and its abandoned items."""
    created = api.post("/_sim/jobs", json={"items": 3, "expires_in": 60}).json()
    assert created["expiresIn"] == 60
    clock.advance(61)
    view = api.get(f"/_sim/jobs/{created['id']}").json()
    assert (view["status"], view["failureReasonType"]) == ("failed", "job_expired")
    assert view["itemStatusCounts"] == {"abandoned": 3}
