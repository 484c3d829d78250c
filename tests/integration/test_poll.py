"""The polling fallback against the simulator over HTTP, real Redis and real Celery messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from subprocess import CompletedProcess

import pytest
import redis

from contract.errors import AuthenticationFailed
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from pleo.client import PleoClient, make_http_client
from producer.poll import poll
from tests.conftest import TEST_TOKEN
from tests.support.clock import ManualClock
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration

OTHER_COMPANY = "0c3f5a9e-7b1d-4e2a-9c8f-6d5e4b3a2f10"


@contextmanager
def pleo(settings: Settings) -> Iterator[PleoClient]:
    """A Pleo client on ``settings`` (its page size included), closed afterwards."""
    with make_http_client(settings) as http:
        yield PleoClient(http, settings)


def add(state: SimState, status: str, company_id: str | None = None) -> str:
    """Add a one-item job in ``status`` (the simulator's company unless told); return its id."""
    return state.add_job(JobSpec(items=1, status=status, company_id=company_id))


@pytest.fixture
def clock() -> ManualClock:
    """The simulator's clock: it stamps each job's createdAt, and moves only when a test says."""
    return ManualClock()


@pytest.fixture
def sim_state(clock: ManualClock) -> SimState:
    """The shared fixture's simulator state, on this module's manual clock."""
    return SimState(token=TEST_TOKEN, max_page_size=1000, seed=7, clock=clock)


def next_second(clock: ManualClock) -> None:
    """Move the simulator's clock a second on, so the next job's createdAt is strictly later."""
    clock.advance(1.0)


def queued_job_ids(rdb: redis.Redis) -> list[str]:
    """Job ids of the producer tasks on the broker, in delivery order."""
    messages = redis_queue(rdb, PRODUCER_QUEUE)
    assert all(m.task == PRODUCER_TASK for m in messages)
    return [m.args[0] for m in messages]


def test_poll_command_enqueues_open_jobs_oldest_first_and_terminal_ones_not(
    cli: Callable[..., CompletedProcess[str]],
    sim_state: SimState,
    clock: ManualClock,
    rdb: redis.Redis,
) -> None:
    """`pleo-export poll --json` enqueues pending and in-progress jobs oldest first, leaves
    terminal ones alone, and says so."""
    # Merged from this module's library-level test and test_cli's poll test, which proved the
    # same selection twice: the command runs the same poll, so this asserts what both did.
    recovering = add(sim_state, "in_progress")
    next_second(clock)
    for terminal in ("completed", "completed_with_errors", "failed"):
        add(sim_state, terminal)
    older = add(sim_state, "pending")
    next_second(clock)
    newer = add(sim_state, "pending")

    proc = cli("poll", "--json")

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["job_ids"] == [recovering, older, newer]
    assert (result["found"], result["enqueued"], result["deduplicated"]) == (3, 3, 0)
    assert queued_job_ids(rdb) == [recovering, older, newer]
    messages = redis_queue(rdb, PRODUCER_QUEUE)
    assert {m.kwargs["company_id"] for m in messages} == {sim_state.company_id}
    assert [c.method for c in sim_state.calls] == ["GET"]


def test_without_in_progress_only_pending_jobs_are_enqueued(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """include_in_progress=False leaves in-progress jobs out of the poll."""
    add(sim_state, "in_progress")
    pending = add(sim_state, "pending")

    with pleo(settings) as client:
        result = poll(settings, client=client, include_in_progress=False)

    assert result.job_ids == (pending,)
    assert queued_job_ids(rdb) == [pending]


def test_a_second_poll_within_the_trigger_window_enqueues_nothing_more(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Polling again within the trigger window deduplicates every job instead of resending."""
    jobs = {add(sim_state, "pending"), add(sim_state, "in_progress")}

    with pleo(settings) as client:
        first = poll(settings, client=client)
        second = poll(settings, client=client)

    assert (first.found, first.enqueued, first.deduplicated) == (2, 2, 0)
    assert (second.found, second.enqueued, second.deduplicated) == (2, 0, 2)
    assert second.job_ids == first.job_ids
    assert sorted(queued_job_ids(rdb)) == sorted(jobs)


def test_polling_posts_no_job_events_and_changes_no_job(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Detection only reads: no job events are posted and every job keeps its status."""
    jobs = [add(sim_state, "pending"), add(sim_state, "in_progress")]
    before = {job_id: sim_state.job(job_id).status for job_id in jobs}

    with pleo(settings) as client:
        poll(settings, client=client)

    assert {job_id: sim_state.events(job_id) for job_id in jobs} == {j: [] for j in jobs}
    assert {job_id: sim_state.job(job_id).status for job_id in jobs} == before
    assert {(call.method, call.path) for call in sim_state.calls} == {("GET", "/v3/export-jobs")}


def test_jobs_on_every_page_are_enqueued(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """With more jobs than fit one page, the poll walks every page and enqueues them all."""
    small = replace(settings, page_size=2)
    jobs = [add(sim_state, "pending") for _ in range(5)]
    expected = sorted(jobs, key=lambda j: (sim_state.job(j).created_at, j))

    with pleo(small) as client:
        result = poll(small, client=client)

    assert result.job_ids == tuple(expected)
    assert queued_job_ids(rdb) == expected
    assert len([c for c in sim_state.calls if c.path == "/v3/export-jobs"]) == 3


def test_company_id_limits_the_poll_to_that_company(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A poll for one company enqueues only that company's jobs, with its company id."""
    ours = add(sim_state, "pending")
    add(sim_state, "pending", company_id=OTHER_COMPANY)

    with pleo(settings) as client:
        result = poll(settings, client=client, company_id=sim_state.company_id)

    assert result.job_ids == (ours,)
    [message] = redis_queue(rdb, PRODUCER_QUEUE)
    assert (message.args, message.kwargs) == ([ours], {"company_id": sim_state.company_id})


def test_a_client_error_propagates_typed_and_nothing_is_enqueued(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A refusal on the second page raises AuthenticationFailed before any job is enqueued."""
    small = replace(settings, page_size=1)
    add(sim_state, "pending")
    add(sim_state, "pending")
    sim_state.add_fault(FaultRule("jobs", "status", status=403, after=1))

    with pleo(small) as client, pytest.raises(AuthenticationFailed):
        poll(small, client=client)

    assert redis_queue(rdb, PRODUCER_QUEUE) == []
