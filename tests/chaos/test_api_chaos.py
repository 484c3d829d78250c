"""API chaos: Pleo failing a fifth of its answers, Pleo lying, and items moving between runs.

What each case proves, against the simulator over real HTTP and a real Redis broker:

- a fifth of all requests to every endpoint answering 429 (with and without ``Retry-After``),
  500/502/503, a read timeout, a cut-off body or a dropped connection still leaves exactly the
  plan on the queue, computed here independently from the simulator's own data; through a real
  producer worker too, where one request failing past its retry budget makes Celery rerun the job;
- a page that breaks the schema (every way the simulator knows), a cursor loop or a lying
  ``total``, at the first, a middle or the last page of either layer, stops the run with
  ``ContractViolation`` (exit 1, one sentence), publishes nothing, marks nothing, and the job's
  status says why; a worker fails such a task once and never retries it;
- what is not a lie has a documented outcome: entries repeated across pages are deduplicated by
  the plan, and a ``total`` understated on the first page only is tolerated (``pleo.paging``:
  totals may move; each page's claim is held against what was seen so far);
- the offset walk (the default ``PLEO_PAGE_CONCURRENCY``) refuses a page that breaks the schema
  as the cursor walk does; a ``total`` that moves, a page that repeats or leaves out an entry make
  it read the layer again by cursor, which publishes exactly the plan when the lie came once and
  refuses it when the lie keeps coming;
- an item whose status changes between two runs of the same job is never published twice, and an
  entry that turns pending after the first run is published by the rerun.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.errors import ContractViolation
from contract.keys import marks_key, progress_key
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import Call, FaultRule, JobSpec, SimState
from devtools.simulator.faults import SCHEMA_BREAKS
from producer.components import produce
from producer.status import job_status
from tests.chaos.conftest import FULL, scale, tally
from tests.conftest import wait_for, with_settings
from tests.support.cli import invoke
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration
Cli = Callable[..., CompletedProcess[str]]

ACTIONABLE = frozenset({"pending", "in_progress"})
# The chaos job's page size: small pages mean many requests, so many faults.
CHAOS_PAGE = scale(20, 10)
# The lie job: five pages per layer, so "middle" (page 3) is already past half of the items.
LIE_ITEMS, LIE_PAGE = 500, 100
POSITIONS = {"first": 1, "middle": 3, "last": 5}
LAYERS = ("job_items", "export_items")
# Kinds whose every firing spoils the answer the producer gets (a truncated 202 has no body).
SPOILING = frozenset({"rate_limit", "status", "drop", "timeout"})


def chaos_rules() -> list[FaultRule]:
    """About a fifth of the requests to every endpoint, each way Pleo can fail transiently."""
    return [
        FaultRule(endpoint="any", kind="rate_limit", retry_after=1, rate=0.04),
        FaultRule(endpoint="any", kind="rate_limit", retry_after=None, rate=0.03),
        FaultRule(endpoint="any", kind="status", status=500, rate=0.03),
        FaultRule(endpoint="any", kind="status", status=502, rate=0.02),
        FaultRule(endpoint="any", kind="status", status=503, rate=0.03),
        FaultRule(endpoint="any", kind="drop", rate=0.02),
        # Far longer than the client's read timeout: the client hangs up first.
        FaultRule(endpoint="any", kind="timeout", delay=5.0, rate=0.02),
        FaultRule(endpoint="any", kind="truncated", rate=0.03),
    ]


def chaos_job(items: int, seed: int) -> JobSpec:
    """A job with every status, undated entries and shared dates: all the plan rules at work."""
    return JobSpec(
        items=items,
        item_statuses={
            "pending": 0.84,
            "in_progress": 0.06,
            "successful": 0.05,
            "failed": 0.03,
            "abandoned": 0.02,
        },
        missing_export_items=items // 100,
        same_date_groups=items // 100,
        seed=seed,
    )


def spoiled(call: Call) -> bool:
    """Whether a fault broke the answer to this request, as the producer saw it."""
    kinds = set((call.fault or "").split(","))
    return bool(kinds & SPOILING) or ("truncated" in kinds and call.endpoint != "job_events")


def expected_messages(state: SimState, job_id: str) -> list[dict[str, Any]]:
    """The item messages the plan rules ask for, computed from the simulator's own data.

    Actionable (pending, in_progress) entries, ordered by their export item's ``date`` in UTC and
    then by id, entries without an export item last by id; ``sequence`` 0..N-1.
    """
    status = {
        i.accounting_entry_id: i.status for i in state.items(job_id) if i.status in ACTIONABLE
    }
    exports = {e["accountingEntryId"]: e for e in state.export_items(job_id)}

    def key(entry_id: str) -> tuple[int, datetime, str]:
        export = exports.get(entry_id)
        if export is None:
            return (1, datetime.min.replace(tzinfo=UTC), entry_id)
        return (0, datetime.fromisoformat(export["date"]).astimezone(UTC), entry_id)

    order = sorted(status, key=key)
    company_id = state.job(job_id).company_id
    return [
        {
            "schema": 1,
            "job_id": job_id,
            "company_id": company_id,
            "accounting_entry_id": entry_id,
            "sequence": sequence,
            "total": len(order),
            "status_at_fetch": status[entry_id],
            "booked_at": exports[entry_id]["date"] if entry_id in exports else None,
            "export_item": exports.get(entry_id),
        }
        for sequence, entry_id in enumerate(order)
    ]


def assert_queue_is(rdb: redis.Redis, job_id: str, want: list[dict[str, Any]]) -> None:
    """The items queue holds exactly ``want``, in order, each under its deterministic task id."""
    queued = redis_queue(rdb)
    assert [q.kwargs["accounting_entry_id"] for q in queued] == [
        w["accounting_entry_id"] for w in want
    ]
    assert [q.kwargs for q in queued] == want
    assert [q.task_id for q in queued] == [
        task_id_for(job_id, w["accounting_entry_id"]) for w in want
    ]
    marks = {k.decode(): v.decode() for k, v in rdb.hgetall(marks_key(job_id)).items()}
    assert marks == {w["accounting_entry_id"]: "p" for w in want}


def assert_nothing_published(rdb: redis.Redis, job_id: str) -> None:
    """No message on the items queue and no mark in the ledger."""
    assert rdb.llen(ITEMS_QUEUE) == 0
    assert rdb.exists(marks_key(job_id)) == 0


def run(settings: Settings, job_id: str) -> dict[str, Any]:
    """One producer run in this process, the way ``pleo-export run`` does it."""
    return produce(job_id, settings=settings, app=make_app(settings)).as_dict()


def count_faulted(state: SimState) -> int:
    """Requests whose answer a fault spoiled; every active rule must have fired at least once."""
    assert all(fired > 0 for _, fired in state.faults), state.faults
    return sum(1 for call in state.calls if spoiled(call))


# --- transient chaos -----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_fifth_of_requests_failing_still_queues_the_exact_plan(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """~20% of every endpoint's requests fail transiently; the queue is exactly the plan."""
    job_id = sim_state.add_job(chaos_job(scale(3000, 20000), seed=11))
    for rule in chaos_rules():
        sim_state.add_fault(rule)
    chaotic = with_settings(settings, page_size=CHAOS_PAGE, http_timeout=0.5, retry_budget=60.0)

    summary = run(chaotic, job_id)

    want = expected_messages(sim_state, job_id)
    assert (summary["status"], summary["enqueued"], summary["planned"]) == (
        "enqueued",
        len(want),
        len(want),
    )
    assert_queue_is(rdb, job_id, want)
    calls = sim_state.calls
    faulted = count_faulted(sim_state)
    assert faulted >= 0.12 * len(calls), (faulted, len(calls))
    assert {c.endpoint for c in calls if spoiled(c)} >= {"job", "job_items", "export_items"}
    assert [e.event for e in sim_state.events(job_id) if e.accepted] == ["started"]
    tally("Pleo requests faulted", faulted)
    tally("items checked after API chaos", len(want))


@pytest.mark.worker
@pytest.mark.timeout(600)
def test_producer_worker_reruns_a_job_whose_request_outlived_its_budget(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, cli: Cli
) -> None:
    """Under the same chaos a request fails past its budget: Celery reruns, the plan lands once."""
    job_id = sim_state.add_job(chaos_job(scale(2000, 20000), seed=12))
    attempts = 10
    # First in line, so nothing else counts these: the data layer's first request fails every
    # attempt. The first, because it is alone in flight in both walks (the offset walk reads the
    # first page before any other): a later burst would be shared by the concurrent requests.
    burst = FaultRule(endpoint="export_items", kind="status", status=503, times=attempts)
    sim_state.add_fault(burst)
    for rule in chaos_rules():
        sim_state.add_fault(rule)
    # The broker must not hand a running task to another worker: the README's premise is a
    # visibility timeout longer than the slowest run, and the fixture's 5 s is not, here.
    chaotic = with_settings(
        settings,
        page_size=CHAOS_PAGE,
        http_timeout=0.5,
        retry_attempts=attempts,
        retry_budget=60,
        visibility_timeout=900,
    )
    start_worker("producer", PRODUCER_QUEUE, settings_=chaotic)
    assert cli("enqueue", job_id, settings_=chaotic).returncode == 0

    wait_for(
        lambda: rdb.hget(progress_key(job_id), "state") == b"enqueued",
        timeout=scale(120, 540),
        what="the rerun to publish",
        explain=lambda: job_status(rdb, job_id),
    )
    want = expected_messages(sim_state, job_id)
    assert_queue_is(rdb, job_id, want)
    progress = job_status(rdb, job_id)
    assert (progress["runs"], progress["enqueued"], progress["recovery"]) == (2, len(want), 1)
    assert sim_state.faults[0] == (burst, attempts)
    assert [e.event for e in sim_state.events(job_id) if e.accepted] == ["started"]
    tally("Pleo requests faulted", count_faulted(sim_state))
    tally("items checked after API chaos", len(want))


# --- lies ----------------------------------------------------------------------------------------
#
# A fault counts requests, so "page N" is the Nth request only when pages are read one at a time.
# The cases that name a page by its turn run the cursor walk (``cursor_walk``); the offset walk
# (the default concurrency) has its own cases below, which find the page a fault hit from the
# ``offset`` its request asked for.


def lie_job(state: SimState) -> str:
    """Five pages per layer at ``LIE_PAGE``, every entry dated and pending."""
    return state.add_job(JobSpec(items=LIE_ITEMS, item_statuses={"pending": 1.0}, seed=5))


def cursor_walk(settings: Settings) -> Settings:
    """The lie job's settings, reading one page after the other by cursor."""
    return with_settings(settings, page_size=LIE_PAGE, page_concurrency=1)


def offset_walk(settings: Settings) -> Settings:
    """The lie job's settings at the default concurrency: pages read by offset, several at once."""
    walking = with_settings(settings, page_size=LIE_PAGE)
    assert walking.page_concurrency > 1
    return walking


def faulted_pages(state: SimState, endpoint: str) -> list[int]:
    """The pages a fault hit, by the ``offset`` their request asked for, in listing order."""
    return sorted(
        int(call.query["offset"]) // LIE_PAGE + 1
        for call in state.calls
        if call.endpoint == endpoint and call.fault and "offset" in call.query
    )


def faulted_cursor_page(state: SimState, endpoint: str) -> int:
    """The page a fault hit in a cursor walk: the distinct cursors asked for up to it (the first
    page asks with none), so a retried request counts once."""
    calls = [call for call in state.calls if call.endpoint == endpoint]
    hit = next(n for n, call in enumerate(calls) if call.fault)
    return len({call.query.get("after") for call in calls[: hit + 1]})


def read_by_cursor(state: SimState, endpoint: str) -> bool:
    """Whether the layer was read (again) by cursor after its offset walk: a fallback's trace."""
    calls = [call for call in state.calls if call.endpoint == endpoint]
    return "offset" in calls[0].query and any("after" in call.query for call in calls)


def assert_refused(
    settings: Settings, rdb: redis.Redis, job_id: str, *, page: int | None
) -> ContractViolation:
    """The run raises ContractViolation in one sentence; nothing is published; status says why."""
    with pytest.raises(ContractViolation) as caught:
        run(settings, job_id)
    error = caught.value
    assert error.exit_code == 1
    assert error.job_id == job_id
    assert "\n" not in error.message
    assert error.message.endswith(".")
    if page is not None:
        assert f"page {page}" in error.message, error.message
    assert_nothing_published(rdb, job_id)
    view = job_status(rdb, job_id)
    assert (view["state"], view["error"], view["published_total"]) == ("failed", error.message, 0)
    tally("Pleo lies refused")
    return error


def schema_cases() -> list[tuple[str, int, str]]:
    """Every (layer, break, page) under ``make chaos``; each break at one page in the subset."""
    if FULL:
        return list(itertools.product(LAYERS, range(3), POSITIONS))
    return [(layer, variant, list(POSITIONS)[variant]) for layer in LAYERS for variant in range(3)]


@pytest.mark.parametrize("walk", ["cursor", "offset"])
@pytest.mark.parametrize(("layer", "variant", "position"), schema_cases())
def test_a_page_that_breaks_the_schema_publishes_nothing(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    *,
    layer: str,
    variant: int,
    position: str,
    walk: str,
) -> None:
    """Each way the simulator breaks a page, on any page of either layer, either walk: refused."""
    assert len(SCHEMA_BREAKS[layer]) == 3
    job_id = lie_job(sim_state)
    turn = POSITIONS[position]
    sim_state.add_fault(
        FaultRule(endpoint=layer, kind="schema", variant=variant, after=turn - 1, times=1)
    )
    if walk == "cursor":
        error = assert_refused(cursor_walk(settings), rdb, job_id, page=None)
        # The fault hits the layer's request number ``turn``: page ``turn``, or an earlier one
        # when a request was retried (a loaded machine's timeout).
        page = faulted_cursor_page(sim_state, layer)
        assert page <= turn
        assert f"page {page} " in error.message, error.message
    else:
        # No fallback: a page that breaks the spec is a lie whichever way it was asked for.
        error = assert_refused(offset_walk(settings), rdb, job_id, page=None)
        [page] = faulted_pages(sim_state, layer)
        assert f"page {page} " in error.message, error.message
    field = SCHEMA_BREAKS[layer][variant][0]
    assert f"data[0].{field}" in error.message, error.message


@pytest.mark.parametrize("variant", range(3))
def test_a_job_that_breaks_the_schema_publishes_nothing(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, variant: int
) -> None:
    """The export job itself breaking the spec stops the run before it claims anything."""
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint="job", kind="schema", variant=variant, times=1))
    assert_refused(settings, rdb, job_id, page=None)
    assert sim_state.events(job_id) == []


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_a_cursor_loop_publishes_nothing(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str, position: str
) -> None:
    """A cursor that keeps pointing back (on a first page: to the start) is caught as a loop."""
    job_id = lie_job(sim_state)
    page = POSITIONS[position]
    sim_state.add_fault(FaultRule(endpoint=layer, kind="cursor_loop", after=page - 1))
    # On the first page the loop restarts the walk, so it shows on the second request.
    shown = page + 1 if position == "first" else page
    error = assert_refused(cursor_walk(settings), rdb, job_id, page=shown)
    assert "cursor loop" in error.message


@pytest.mark.parametrize("layer", LAYERS)
def test_a_cursor_loop_on_every_page_is_refused_by_the_offset_walk_too(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str
) -> None:
    """The offset walk follows no cursor, but a last page saying hasNextPage sends it back to one.

    Documented outcome: a loop that spares the last page is invisible to the offset walk, whose
    pages are then complete and correct; one that reaches it makes the walk fall back, and the
    cursor walk refuses the loop.
    """
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint=layer, kind="cursor_loop"))
    error = assert_refused(offset_walk(settings), rdb, job_id, page=None)
    assert "cursor loop" in error.message
    assert read_by_cursor(sim_state, layer)


@pytest.mark.parametrize("position", ["middle", "last"])
@pytest.mark.parametrize("layer", LAYERS)
def test_a_total_exceeded_by_what_was_seen_publishes_nothing(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str, position: str
) -> None:
    """A page claiming half the real total, once more items than that were seen: refused."""
    job_id = lie_job(sim_state)
    page = POSITIONS[position]
    sim_state.add_fault(FaultRule(endpoint=layer, kind="total_lie", after=page - 1, times=1))
    error = assert_refused(cursor_walk(settings), rdb, job_id, page=page)
    assert f"more than its total of {LIE_ITEMS // 2}" in error.message


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_a_total_that_keeps_lying_is_refused_after_the_offset_walk_falls_back(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str, position: str
) -> None:
    """Every page from one on halving total: the offset walk falls back, the cursor walk refuses."""
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint=layer, kind="total_lie", after=POSITIONS[position] - 1))
    error = assert_refused(offset_walk(settings), rdb, job_id, page=None)
    assert f"more than its total of {LIE_ITEMS // 2}" in error.message
    assert read_by_cursor(sim_state, layer)


@pytest.mark.parametrize("walk", ["cursor", "offset"])
@pytest.mark.parametrize("layer", LAYERS)
def test_a_total_understated_on_the_first_page_only_is_tolerated(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str, walk: str
) -> None:
    """Documented outcome: a first-page total that later pages correct is no lie; plan exact.

    The cursor walk holds each page to what was seen so far; the offset walk cannot prove its
    pages against a total that moved, so it reads the layer again by cursor.
    """
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint=layer, kind="total_lie", times=1))
    chosen = cursor_walk(settings) if walk == "cursor" else offset_walk(settings)
    summary = run(chosen, job_id)
    assert summary["status"] == "enqueued"
    assert_queue_is(rdb, job_id, expected_messages(sim_state, job_id))
    assert [c.fault for c in sim_state.calls].count("total_lie") == 1
    assert len(summary["paging_fallbacks"]) == (1 if walk == "offset" else 0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_entries_repeated_across_pages_are_planned_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, layer: str, position: str
) -> None:
    """Documented outcome: a page repeating an entry (of its own or the page before) is deduped."""
    job_id = lie_job(sim_state)
    page = POSITIONS[position]
    sim_state.add_fault(FaultRule(endpoint=layer, kind="duplicate", after=page - 1, times=1))
    summary = run(cursor_walk(settings), job_id)
    want = expected_messages(sim_state, job_id)
    assert (summary["status"], summary["planned"], summary["enqueued"]) == (
        "enqueued",
        LIE_ITEMS,
        LIE_ITEMS,
    )
    assert summary["duplicates"] == (1 if layer == "job_items" else 0)
    assert_queue_is(rdb, job_id, want)


OFFSET_LIES = ("total_moves", "total_lie", "duplicate", "skip")


def offset_lie_cases() -> list[tuple[str, str, str]]:
    """Every (lie, layer, page) under ``make chaos``; each lie at one page per layer otherwise."""
    if FULL:
        return list(itertools.product(OFFSET_LIES, LAYERS, POSITIONS))
    spots = itertools.cycle(POSITIONS)
    return [(kind, layer, next(spots)) for kind in OFFSET_LIES for layer in LAYERS]


@pytest.mark.parametrize(("kind", "layer", "position"), offset_lie_cases())
def test_an_offset_walk_that_cannot_prove_its_pages_reads_the_layer_again_by_cursor(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    *,
    kind: str,
    layer: str,
    position: str,
) -> None:
    """A total that moves, a page repeating or leaving out an entry: fall back, plan exact.

    The lie comes once, so the cursor walk reads honest pages; the run summary names the layer
    that fell back and why, and what is published is exactly the plan (the offset walk's pages
    were forgotten, spooled payloads included).
    """
    job_id = lie_job(sim_state)
    sim_state.add_fault(
        FaultRule(endpoint=layer, kind=kind, after=POSITIONS[position] - 1, times=1)
    )
    summary = run(offset_walk(settings), job_id)
    assert (summary["status"], summary["planned"], summary["enqueued"]) == (
        "enqueued",
        LIE_ITEMS,
        LIE_ITEMS,
    )
    assert summary["paging"] == "offset"
    [fallback] = summary["paging_fallbacks"]
    assert fallback.startswith("control: " if layer == "job_items" else "data: "), fallback
    assert read_by_cursor(sim_state, layer)
    assert summary["duplicates"] == 0
    assert_queue_is(rdb, job_id, expected_messages(sim_state, job_id))
    tally("offset walk lies read again by cursor")


@pytest.mark.parametrize("kind", ["schema", "cursor_loop", "total_lie"])
def test_the_cli_refuses_a_lie_in_one_sentence_and_status_says_why(
    cli: Cli, settings: Settings, sim_state: SimState, rdb: redis.Redis, kind: str
) -> None:
    """`pleo-export run` exits 1 with one sentence on stderr; `status` names the same error."""
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint="job_items", kind=kind, after=POSITIONS["middle"] - 1))
    env = {"PLEO_PAGE_SIZE": str(LIE_PAGE)}
    if kind == "cursor_loop":
        # A loop that may spare the last page is invisible to the offset walk (see above).
        env["PLEO_PAGE_CONCURRENCY"] = "1"
    if kind == "schema":
        # One lie through real processes (exit status and stderr as a shell sees them); the
        # other lies through the same entry point in this process, without an interpreter start.
        proc = cli("run", job_id, **env)
        code, stderr = proc.returncode, proc.stderr
        shown = cli("status", job_id, "--json").stdout
    else:
        result = invoke(settings, "run", job_id, **env)
        code, stderr = result.exit_code, result.stderr
        shown = invoke(settings, "status", job_id, "--json").stdout
    assert code == 1, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("pleo-export: Pleo's job items page") or line.startswith(
        "pleo-export: Pleo's job items for job"
    ), line
    assert job_id in line
    assert line.endswith(".")
    assert_nothing_published(rdb, job_id)
    view = json.loads(shown)
    assert view["state"] == "failed"
    assert f"pleo-export: {view['error']}" == line


@pytest.mark.worker
def test_a_worker_fails_a_lying_job_once_and_never_retries_it(
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    cli: Cli,
    *,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Through a producer worker a ContractViolation fails the task for good, nothing published."""
    job_id = lie_job(sim_state)
    sim_state.add_fault(FaultRule(endpoint="export_items", kind="schema", after=2))
    lying = offset_walk(settings)
    start_worker("producer", PRODUCER_QUEUE, settings_=lying)
    assert cli("enqueue", job_id, settings_=lying).returncode == 0
    log = tmp_path / "worker-0.log"
    # Celery's line for a task that failed for good (a retry logs "Retry in" instead).
    failed = wait_for(
        lambda: [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "raised unexpected: ContractViolation" in line
        ],
        timeout=60,
        what="the task to fail",
    )
    assert len(failed) == 1
    assert "Retry in" not in log.read_text(errors="replace")
    assert_nothing_published(rdb, job_id)
    assert rdb.llen(PRODUCER_QUEUE) == 0
    view = job_status(rdb, job_id)
    assert (view["state"], view["runs"]) == ("failed", 1)
    # The pages are handed on in order, so the first broken one is what the run names.
    first_broken = faulted_pages(sim_state, "export_items")[0]
    assert f"export items page {first_broken} " in view["error"]


# --- items that move between two runs ------------------------------------------------------------


def test_items_moving_between_runs_are_never_published_twice(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Published entries that Pleo then moves are not republished; newly pending ones are.

    Run 1 publishes every pending entry. Pleo then marks four of them successful, failed,
    abandoned and in_progress, and sets three entries that were failed or successful back to
    pending. Run 2 publishes exactly those three, once each, as run 2's plan numbers them, and
    run 3 publishes nothing.
    """
    job_id = sim_state.add_job(
        JobSpec(items=600, item_statuses={"pending": 0.8, "failed": 0.1, "successful": 0.1}, seed=9)
    )
    quick = with_settings(settings, page_size=LIE_PAGE)
    first = run(quick, job_id)
    before = expected_messages(sim_state, job_id)
    assert_queue_is(rdb, job_id, before)
    assert first["enqueued"] == len(before) == 480

    published = [m["accounting_entry_id"] for m in before]
    moved = dict(
        zip(published[:4], ("successful", "failed", "abandoned", "in_progress"), strict=True)
    )
    finished = [
        i.accounting_entry_id for i in sim_state.items(job_id) if i.status not in ACTIONABLE
    ]
    revived = finished[:3]
    for entry_id, status in moved.items():
        sim_state.set_item_status(job_id, entry_id, status)
    for entry_id in revived:
        sim_state.set_item_status(job_id, entry_id, "pending")

    second = run(quick, job_id)

    plan_two = expected_messages(sim_state, job_id)
    new = [m for m in plan_two if m["accounting_entry_id"] in revived]
    assert (second["planned"], second["enqueued"], second["already_enqueued"]) == (
        len(before) - 3 + 3,
        3,
        len(before) - 3,
    )
    assert_queue_is_all(rdb, job_id, before + new)
    third = run(quick, job_id)
    assert (third["enqueued"], len(redis_queue(rdb))) == (0, len(before) + 3)


def assert_queue_is_all(rdb: redis.Redis, job_id: str, want: list[dict[str, Any]]) -> None:
    """The queue holds ``want`` in order (several runs' messages), each entry once and marked."""
    queued = [q.kwargs for q in redis_queue(rdb)]
    assert queued == want
    ids = [w["accounting_entry_id"] for w in want]
    assert len(ids) == len(set(ids))
    marks = {k.decode(): v.decode() for k, v in rdb.hgetall(marks_key(job_id)).items()}
    assert marks == dict.fromkeys(ids, "p")
