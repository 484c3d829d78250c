"""Liveness: every claimed job finishes on its own, whatever dies, with the settings users get.

Each case kills something real (a ``pleo-export run``, a producer pool process, a whole producer
worker, a worker in warm shutdown, a task message before its run) and asserts the exact end state
(every entry queued once, in plan order; where ERP workers run, every entry posted and reported
once and one final event) **and** the time from the death to the job fully published, against
the README's bounds: 60 s for a dead producer run, 2 min for a lost item message.

Timings are the defaults (``live`` below checks them against ``Settings()``); only the HTTP retry
knobs keep the suite's quick values, which no bound depends on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.keys import items_key, lease_key, progress_key
from contract.ledger import Ledger
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.triggers import enqueue
from tests.chaos.conftest import FULL, measure, scale, tally
from tests.chaos.test_producer_kill import holding, plan_order
from tests.conftest import env_for, wait_for, with_settings
from tests.support import zygote
from tests.support.local import journal_ids, pleo_export, pool_children
from tests.support.queues import redis_queue

pytestmark = [pytest.mark.integration, pytest.mark.worker]

RESUME_BOUND = 60.0  # a dead producer run: the job fully published again within this
RESEND_BOUND = 120.0  # a lost item message: sent again within this
# The killed runs' job: small enough to generate and check in a second or two. Their run
# publishes in batches of ``KILL_BATCH`` (a size, not a timing), so after ``KILL_AT`` messages
# some 200 Lua round trips remain: far more than the 2 ms between looks at the queue, so the
# signal lands mid-publish, which each case still asserts.
ITEMS = 3_000
KILL_AT = 600
KILL_BATCH = 12
# Timing fields that the liveness bounds depend on: each must be at its default here.
TIMINGS = (
    "lease_ttl",
    "lease_wait",
    "visibility_timeout",
    "repair_stall",
    "repair_interval",
    "supervise_interval",
    "dead_run_after",
    "trigger_window",
    "run_retry_delay",
    "report_interval",
)


@pytest.fixture
def live(settings: Settings) -> Settings:
    """The suite's settings with every timing the bounds depend on back at its default."""
    defaults = Settings()
    return with_settings(
        settings, page_size=1000, **{name: getattr(defaults, name) for name in TIMINGS}
    )


def test_liveness_cases_run_at_the_default_timings(live: Settings) -> None:
    """No case below shortens a lease, a stall, a visibility timeout or the supervisor."""
    defaults = Settings()
    assert {f.name for f in fields(Settings)} >= set(TIMINGS)
    assert {n: getattr(live, n) for n in TIMINGS} == {n: getattr(defaults, n) for n in TIMINGS}
    # The bound by arithmetic, at these defaults: the dead run's last progress update is at most
    # one page before its death; the supervisor acts ``dead_run_after`` later, at its next tick,
    # and a supervisor that died with the run is replaced within its lease (3 ticks).
    worst = live.dead_run_after + 3 * live.supervise_interval + live.supervise_interval
    assert worst < RESUME_BOUND - 20  # 20 s left for a worker to take the task and publish
    stall_bound = live.repair_stall + min(60.0, max(1.0, live.repair_stall / 3))
    assert stall_bound < RESEND_BOUND - 20


# -- helpers ---------------------------------------------------------------------------------


def queued_entries(rdb: redis.Redis) -> list[str]:
    """The items queue's entries in delivery order."""
    return [q.kwargs["accounting_entry_id"] for q in redis_queue(rdb)]


def wait_published(rdb: redis.Redis, total: int, *, since: float, what: str) -> float:
    """Wait until ``total`` item messages are queued; return the seconds since ``since``."""
    wait_for(
        lambda: rdb.llen(ITEMS_QUEUE) >= total,
        timeout=RESUME_BOUND + 30,
        what=what,
        explain=lambda: rdb.llen(ITEMS_QUEUE),
    )
    return time.monotonic() - since


def assert_queued_once_in_plan_order(rdb: redis.Redis, state: SimState, job_id: str) -> None:
    """Every entry on the queue exactly once, in the documented order, sequences 0..N-1."""
    queued = redis_queue(rdb)
    assert [q.kwargs["accounting_entry_id"] for q in queued] == plan_order(state, job_id)
    assert [q.kwargs["sequence"] for q in queued] == list(range(len(queued)))


def until_published(rdb: redis.Redis, job_id: str, at_least: int) -> None:
    """Wait for the run to publish, then poll the queue every 2 ms until ``at_least`` messages.

    The tight polling starts only once the run is publishing, so it does not take the GIL from
    the simulator serving the fetch in this process.
    """
    wait_for(
        lambda: progress(rdb, job_id).get("state") == "publishing",
        timeout=120,
        what="the run to start publishing",
        explain=lambda: progress(rdb, job_id),
    )
    deadline = time.monotonic() + 120
    while rdb.llen(ITEMS_QUEUE) < at_least:
        assert time.monotonic() < deadline, "the run never published its first messages"
        time.sleep(0.002)


def progress(rdb: redis.Redis, job_id: str) -> dict[str, str]:
    """The job's progress record, decoded."""
    return {k.decode(): v.decode() for k, v in rdb.hgetall(progress_key(job_id)).items()}


def resumed_runs(rdb: redis.Redis, job_id: str) -> int:
    """How many runs of the job the ledger counted after the first: each resumed a dead one."""
    return int(progress(rdb, job_id)["runs"]) - 1


def start_run(live: Settings, job_id: str, log: Path) -> subprocess.Popen[bytes]:
    """``pleo-export run JOB --json`` in the background, publishing in small batches."""
    env = env_for(with_settings(live, publish_batch=KILL_BATCH))
    return zygote.start_module("producer", ["-v", "run", job_id, "--json"], env, None, log)


def rerun(live: Settings, job_id: str) -> dict[str, Any]:
    """``pleo-export run JOB --json`` to its end; its summary."""
    return pleo_export(live, "run", job_id)


def status(live: Settings, job_id: str) -> dict[str, Any]:
    """``pleo-export status JOB --json``."""
    return pleo_export(live, "status", job_id, timeout=60)


# -- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_run_is_resumed_by_an_immediate_rerun(
    live: Settings, sim_state: SimState, rdb: redis.Redis, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL or SIGTERM mid-publish, then ``run`` at once: the rerun finishes the job."""
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=3))
    proc = start_run(live, job_id, tmp_path / "run.log")
    until_published(rdb, job_id, KILL_AT)
    proc.send_signal(sig)
    killed = time.monotonic()
    proc.wait(timeout=30)
    assert rdb.llen(ITEMS_QUEUE) < ITEMS, "the run finished before the signal landed"
    if sig == signal.SIGTERM:
        # Documented: 128 + 15, the lease released at once, the run recorded as interrupted.
        assert proc.returncode == 143
        assert not rdb.exists(lease_key(job_id))
        assert "interrupted by SIGTERM" in (tmp_path / "run.log").read_text()
    assert status(live, job_id)["state"] == "interrupted"

    summary = rerun(live, job_id)
    took = time.monotonic() - killed
    assert summary["status"] == "enqueued"
    assert summary["enqueued"] + summary["already_enqueued"] == ITEMS
    assert summary["already_enqueued"] >= KILL_AT
    assert took < RESUME_BOUND
    assert_queued_once_in_plan_order(rdb, sim_state, job_id)
    measure(f"liveness: run {sig.name} → rerun published (s)", took)
    tally("producer deaths survived (liveness)", resumed_runs(rdb, job_id))


def test_a_rerun_steps_aside_only_from_a_live_run_and_names_it(
    live: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """While a live run heartbeats, ``run`` answers ``locked`` (exit 0) naming the holder."""
    job_id = sim_state.add_job(JobSpec(items=10, seed=4))
    ledger = Ledger(rdb, lease_ttl=live.lease_ttl, dedup_ttl=live.dedup_ttl)
    with ledger.held(job_id, wait=0, who="task 1234"):
        started = time.monotonic()
        summary = rerun(live, job_id)
        took = time.monotonic() - started
    assert summary["status"] == "locked"
    assert f"task 1234 (pid {os.getpid()}" in summary["reason"]
    # One heartbeat (a third of the TTL) shows the holder alive; then ``lease_wait``.
    assert took < live.lease_ttl / 3 + live.lease_wait + 5
    assert rdb.llen(ITEMS_QUEUE) == 0


def test_a_lease_left_by_a_run_on_another_host_is_waited_out(
    live: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A dead run elsewhere cannot be checked by PID: the rerun waits out its lease (≤ 10 s)."""
    job_id = sim_state.add_job(JobSpec(items=500, seed=5))
    holder = {"who": "task x", "host": "gone", "pid": 1, "node": "another-boot:1", "started": "1"}
    ttl_ms = int(live.lease_ttl * 1000)
    rdb.set(lease_key(job_id), f"9:{'0' * 32}|{json.dumps(holder)}", px=ttl_ms)
    started = time.monotonic()
    summary = rerun(live, job_id)
    took = time.monotonic() - started
    assert summary["status"] == "enqueued"
    assert summary["enqueued"] == 500
    assert live.lease_ttl - 0.5 <= took < live.lease_ttl + 15
    measure("liveness: foreign dead lease → rerun published (s)", took)


def test_broker_down_during_run_exits_4_and_records_the_error(
    live: Settings, sim_state: SimState, rdb: redis.Redis, cli: Callable[..., Any]
) -> None:
    """An unreachable broker is a transient failure: exit 4, one sentence, recorded in status."""
    job_id = sim_state.add_job(JobSpec(items=50, seed=6))
    down = with_settings(live, broker_url="amqp://guest:guest@127.0.0.1:9//")
    done = cli("run", job_id, settings_=down)
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("pleo-export: The broker")
    assert len(done.stderr.strip().splitlines()) == 1
    record = progress(rdb, job_id)
    assert record["state"] == "interrupted"
    assert "broker" in record["error"]


# -- permanent failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (FaultRule("export_items", "schema", after=1, times=1), "validation_failure"),
        (FaultRule("job_items", "status", status=403, after=1), "authentication_failure"),
    ],
    ids=["page-breaks-spec", "forbidden"],
)
def test_a_permanent_failure_after_the_claim_tells_pleo_once(
    live: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    cli: Callable[..., Any],
    case: tuple[FaultRule, str],
) -> None:
    """The job gets one ``failed`` event with the matching reason; a rerun sends no second."""
    rule, reason_type = case
    job_id = sim_state.add_job(JobSpec(items=300, seed=7))
    sim_state.add_fault(rule)
    first = cli("run", job_id, settings_=with_settings(live, page_size=100))
    assert first.returncode in {1, 3}, first.stderr
    job = sim_state.jobs[job_id]
    assert job.status == "failed"
    assert job.failure_reason_type == reason_type
    sim_state.clear_faults()
    again = cli("run", job_id, "--json", settings_=live)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "skipped"
    failed = [e for e in sim_state.events(job_id) if e.event == "failed"]
    assert len(failed) == 1
    assert failed[0].accepted
    assert rdb.llen(ITEMS_QUEUE) == 0
    assert status(live, job_id)["final_event"] == "failed"


# -- producer workers ------------------------------------------------------------------------


def producer_worker(start_worker: Any, live: Settings) -> subprocess.Popen[bytes]:
    """A producer worker, one pool process, default timings."""
    return start_worker("producer", PRODUCER_QUEUE, settings_=live)


def running_mid_publish(
    start_worker: Any, live: Settings, rdb: redis.Redis, job_id: str
) -> subprocess.Popen[bytes]:
    """A producer worker (small publish batches) running ``job_id``, after ``KILL_AT`` messages."""
    worker = producer_worker(start_worker, with_settings(live, publish_batch=KILL_BATCH))
    enqueue(job_id, settings=live)
    until_published(rdb, job_id, KILL_AT)
    return worker


@pytest.mark.timeout(240)
def test_a_killed_pool_process_is_resumed_at_once(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """SIGKILL of the pool process (the OOM killer): the redelivered task takes the lease over."""
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=8))
    worker = running_mid_publish(start_worker, live, rdb, job_id)
    (child,) = pool_children(worker)
    os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    assert rdb.llen(ITEMS_QUEUE) < ITEMS, "the run finished before the signal landed"
    took = wait_published(rdb, ITEMS, since=killed, what="the job published again")
    assert took < RESUME_BOUND
    wait_for(lambda: progress(rdb, job_id).get("state") == "enqueued", timeout=30, what="the end")
    assert_queued_once_in_plan_order(rdb, sim_state, job_id)
    assert progress(rdb, job_id)["runs"] == "2"
    measure("liveness: producer pool process SIGKILL → published (s)", took)
    tally("producer deaths survived (liveness)", resumed_runs(rdb, job_id))


@pytest.mark.timeout(240)
def test_a_whole_producer_worker_killed_is_resumed_by_a_fresh_one(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """The worker's group SIGKILLed mid-run: its task waits for the visibility timeout (1 h),
    so the fresh worker's supervisor sends a new one."""
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=9))
    worker = running_mid_publish(start_worker, live, rdb, job_id)
    os.killpg(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    worker.wait(timeout=30)
    assert rdb.llen(ITEMS_QUEUE) < ITEMS, "the run finished before the signal landed"
    producer_worker(start_worker, live)
    took = wait_published(rdb, ITEMS, since=killed, what="the job published again")
    assert took < RESUME_BOUND
    assert_queued_once_in_plan_order(rdb, sim_state, job_id)
    assert progress(rdb, job_id)["resumed"] == "1"
    measure("liveness: whole producer worker SIGKILL → published (s)", took)
    tally("producer deaths survived (liveness)", resumed_runs(rdb, job_id))


@pytest.mark.timeout(240)
def test_a_warm_shutdown_hands_the_job_back_at_once(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """SIGTERM to the worker (``docker stop``) mid-run: it exits in seconds, not after the run,
    and the requeued task is resumed by the next worker."""
    job_id = sim_state.add_job(JobSpec(items=ITEMS, seed=10))
    worker = running_mid_publish(start_worker, live, rdb, job_id)
    worker.send_signal(signal.SIGTERM)  # the main process only, as docker stop does
    stopped = time.monotonic()
    worker.wait(timeout=30)
    exited = time.monotonic() - stopped
    assert exited < 10, "the warm shutdown waited for the run"
    assert rdb.llen(ITEMS_QUEUE) < ITEMS
    assert not rdb.exists(lease_key(job_id))
    assert rdb.llen(PRODUCER_QUEUE) == 1, "the task was not handed back"
    producer_worker(start_worker, live)
    took = wait_published(rdb, ITEMS, since=stopped, what="the job published again")
    assert took < RESUME_BOUND
    assert_queued_once_in_plan_order(rdb, sim_state, job_id)
    measure("liveness: warm shutdown → worker exited (s)", exited)
    measure("liveness: warm shutdown → published by the next worker (s)", took)
    tally("producer deaths survived (liveness)", resumed_runs(rdb, job_id))


@pytest.mark.timeout(240)
def test_a_trigger_whose_task_is_lost_before_its_run_is_resumed(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """``enqueue`` answered, then the task message vanished: the supervisor sends it again."""
    job_id = sim_state.add_job(JobSpec(items=500, seed=11))
    result = enqueue(job_id, settings=live)
    assert not result.deduplicated
    assert rdb.delete(PRODUCER_QUEUE) == 1  # lost, as a broker without persistence would
    triggered = time.monotonic()
    producer_worker(start_worker, live)
    took = wait_published(rdb, 500, since=triggered, what="the lost trigger's job published")
    assert took < RESUME_BOUND
    assert_queued_once_in_plan_order(rdb, sim_state, job_id)
    assert progress(rdb, job_id)["resumed"] == "1"
    measure("liveness: lost trigger task → published (s)", took)
    tally("lost producer tasks resumed", int(progress(rdb, job_id)["resumed"]))


@pytest.mark.timeout(300)
def test_the_whole_pipeline_finishes_after_a_producer_death(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """Producer pool process killed mid-fetch with ERP workers running: every entry posted and
    reported once, one final event."""
    items = scale(300, 5_000)
    job_id = sim_state.add_job(JobSpec(items=items, seed=12))
    # The data layer's third page is held until the client hangs up (an HTTP timeout longer
    # than the test, as the suite's 1 s would retry it): the fetch is provably under way,
    # whatever the machine's speed, when the kill lands.
    slow = with_settings(live, page_size=100, http_timeout=600.0)
    hold = FaultRule("export_items", "timeout", delay=600.0, after=2, times=1)
    sim_state.add_fault(hold)
    worker = producer_worker(start_worker, slow)
    start_worker("consumers", ITEMS_QUEUE, concurrency=2, settings_=live)
    enqueue(job_id, settings=slow)
    wait_for(
        lambda: holding(sim_state, hold) and int(progress(rdb, job_id).get("pages", 0)) >= 4,
        timeout=60,
        what="the fetch under way",
        explain=lambda: progress(rdb, job_id),
    )
    (child,) = pool_children(worker)
    os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    assert progress(rdb, job_id)["state"] == "fetching"
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=240,
        what="the job completed",
        explain=lambda: (progress(rdb, job_id), sim_state.item_counts(job_id)),
    )
    finished = time.monotonic() - killed
    measure("liveness: producer killed mid-fetch → final event, ERP running (s)", finished)
    posted = journal_ids(live)
    assert sorted(posted) == sorted(i.accounting_entry_id for i in sim_state.items(job_id))
    assert set(sim_state.update_counts(job_id).values()) == {1}
    finals = [e.event for e in sim_state.events(job_id) if e.accepted and e.event != "started"]
    assert finals == ["completed"]
    assert rdb.zscore("pleo-export:active-jobs", job_id) is None
    tally("producer deaths survived (liveness)", resumed_runs(rdb, job_id))


# -- a lost item message, at the default repair stall ---------------------------------------


@pytest.mark.skipif(not FULL, reason="takes ~80 s at the default repair stall; make chaos runs it")
@pytest.mark.timeout(300)
def test_a_lost_item_message_is_sent_again_within_two_minutes(
    live: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any
) -> None:
    """A message taken off the queue by a worker that died (the BRPOP window) is re-sent by the
    repair sweep at its default stall (60 s) and interval (20 s), and the job completes once."""
    job_id = sim_state.add_job(JobSpec(items=300, seed=13))
    assert rerun(live, job_id)["enqueued"] == 300
    raw = rdb.lindex(ITEMS_QUEUE, -1 - 120)
    assert raw is not None
    assert rdb.lrem(ITEMS_QUEUE, 1, raw) == 1
    lost = time.monotonic()
    start_worker("consumers", ITEMS_QUEUE, concurrency=2, settings_=live)
    wait_for(
        lambda: rdb.hget(items_key(job_id), "republished") == b"1",
        timeout=RESEND_BOUND + 30,
        what="the lost message sent again",
    )
    took = time.monotonic() - lost
    assert took < RESEND_BOUND
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed", timeout=60, what="the job completed"
    )
    posted = journal_ids(live)
    assert sorted(posted) == sorted(i.accounting_entry_id for i in sim_state.items(job_id))
    measure("liveness: lost item message → sent again (s)", took)
    republished = rdb.hget(items_key(job_id), "republished")
    tally("lost item messages re-sent by the repair sweep", int(republished or 0))
