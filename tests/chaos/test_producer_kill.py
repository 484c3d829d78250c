"""SIGKILL the producer at random instants, again and again, then rerun it: nothing lost or doubled.

One job is run, killed, run again, killed again ... and finally run to the end. Each kill lands at a
condition read from Redis (the run's lease fence, its recorded state, how many entries it marked),
so each provably hit the phase it aims at: the claim, the fetch, or the publish. After every kill
the broker and the ledger must agree (an entry marked without its message, or the reverse, is what
we hunt); after the final run every entry must be on the queue once (Redis) or at least once
(RabbitMQ, duplicates counted), in plan order.

The kill points come from ``random.Random(seed)``; the seed is printed, named in every failure, and
taken from ``CHAOS_SEED`` when set, so ``CHAOS_SEED=<seed>`` replays a failing run's kill points.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.keys import marks_key, progress_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import FaultRule, JobSpec, SimState
from tests.chaos.conftest import chaos_seed, scale, tally
from tests.conftest import env_for, wait_for, with_settings
from tests.integration import test_run_rabbitmq
from tests.support import zygote
from tests.support.local import journal_ids, pleo_export
from tests.support.queues import Queued, decode, redis_queue
from tests.support.rabbit import depth, peek

pytestmark = pytest.mark.integration

# The RabbitMQ fixture (items queue purged before and after) shared with the integration tests.
amqp_url = test_run_rabbitmq.amqp_url

REDIS_ITEMS = scale(6_000, 30_000)
# The fetch kill's run reads pages of this size: both layers have 30 pages, so it has as many
# pages to land after as with 1,000-item pages of a 30,000-item job. The other runs, whose kills
# do not aim at the fetch, read the chain's 1,000-item pages (fewer requests, a quicker fetch).
REDIS_PAGE_SIZE = REDIS_ITEMS // 30
# The publish kills' batch sizes: each run draws one, so batch boundaries move between runs.
REDIS_BATCHES = (20, 50, 100, 250)
# The ERP books ~200 entries/s on this machine, so the RabbitMQ job is smaller: the kills cost the
# same, only the ERP's share of the minutes shrinks.
RABBIT_ITEMS = scale(1_000, 10_000)
# Kill points stay below this share of the plan, so a kill never races the run's last batch: the
# last 25% of the Redis job are at least 6 batches (and up to 75), 150 ms and more at the
# ~10,000 messages/s measured here (RabbitMQ's about as fast): far more
# than the 2 ms between probes and the time a SIGKILL takes to land. Each kill still asserts
# that it landed mid-publish.
KILL_BEFORE = 0.75
PHASE_TIMEOUT = 180.0


def plan_order(state: SimState, job_id: str) -> list[str]:
    """The job's entries in the documented order, worked out here from the simulator's data.

    Every entry of these jobs is pending and has an export item, so the order is simply
    (export item ``date`` in UTC, ``accountingEntryId``).
    """
    dated = sorted(
        (datetime.fromisoformat(item["date"]), item["accountingEntryId"])
        for item in state.export_items(job_id)
    )
    order = [entry_id for _, entry_id in dated]
    assert set(order) == {item.accounting_entry_id for item in state.items(job_id)}
    return order


def kill_points(rng: random.Random, kills: int, planned: int) -> list[int]:
    """``kills`` distinct counts, ascending, past which a publishing run is killed."""
    return sorted(rng.sample(range(1, int(planned * KILL_BEFORE)), kills))


@dataclass(frozen=True)
class Probe:
    """What the ledger says about the job right now: the progress record and the marks."""

    progress: dict[str, str]
    marks: int

    def of_run(self, fence: int) -> bool:
        """True when the progress record is that of the run holding lease ``fence``."""
        return self.progress.get("fence") == str(fence)

    @property
    def state(self) -> str:
        """The producer's recorded state (claiming, fetching, publishing, ...)."""
        return self.progress.get("state", "")


@dataclass
class KillChain:
    """Runs ``pleo-export run`` on one job again and again, SIGKILLing each when a condition holds.

    Runs are strictly one after another, so the n-th run is the one holding lease fence n: every
    condition is checked against that run's own progress record, never a dead run's leftovers.
    """

    settings: Settings
    job_id: str
    rdb: redis.Redis
    logs: Path
    seed: int
    kills: list[str] = field(default_factory=list)

    @property
    def killed(self) -> int:
        """How many runs were killed so far (the next run holds the fence after theirs)."""
        return len(self.kills)

    def replay(self) -> str:
        """The seed and the kills so far: what a failure message needs to be replayed."""
        return f"CHAOS_SEED={self.seed}; kills so far: {self.kills or 'none'}"

    def probe(self) -> Probe:
        """Read the run's progress and the number of marks, in one round trip."""
        with self.rdb.pipeline(transaction=True) as pipe:
            pipe.hgetall(progress_key(self.job_id))
            pipe.hlen(marks_key(self.job_id))
            progress, marks = pipe.execute()
        return Probe({k.decode(): v.decode() for k, v in progress.items()}, int(marks))

    def kill_when(
        self,
        ready: Callable[[Probe], bool],
        what: str,
        *,
        publish_batch: int = 500,
        page_size: int | None = None,
    ) -> Probe:
        """Start a run, SIGKILL it once ``ready`` holds for it, and return the probe at that moment.

        Fails if the run ended by itself first: that kill would have tested nothing.
        """
        fence = self.killed + 1
        run_settings = with_settings(
            self.settings,
            publish_batch=publish_batch,
            page_size=page_size or self.settings.page_size,
        )
        log_path = self.logs / f"run-{fence}.log"
        seen: list[Probe] = []

        def due() -> bool:
            probe = self.probe()
            if probe.of_run(fence) and ready(probe):
                seen.append(probe)
                return True
            return proc.poll() is not None

        args = ["-v", "run", self.job_id, "--json"]
        proc = zygote.start_module("producer", args, env_for(run_settings), None, log_path)
        try:
            # Probed every 2 ms, not wait_for's 50: a run publishes ~2,500 messages in 50 ms.
            deadline = time.monotonic() + PHASE_TIMEOUT
            while not due():
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} kill point within {PHASE_TIMEOUT}s: {self.probe()}")
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.kills.append(f"{what} (run {fence}, batch {publish_batch})")
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        assert proc.returncode == -signal.SIGKILL, (
            f"run {fence} ended by itself (exit {proc.returncode}) before its {what} kill; "
            f"{self.replay()}; log tail: {tail}"
        )
        assert seen, f"run {fence} died of a SIGKILL not ours, before its {what} kill point"
        return seen[0]

    def finish(self) -> dict[str, Any]:
        """The final rerun, to its end: its ``--json`` summary."""
        try:
            return pleo_export(self.settings, "run", self.job_id, timeout=PHASE_TIMEOUT)
        except AssertionError as failed:
            raise AssertionError(f"{failed}; {self.replay()}") from failed

    def status(self) -> dict[str, Any]:
        """``pleo-export status JOB --json``, as an operator would read it."""
        return pleo_export(self.settings, "status", self.job_id, timeout=60)


def chain_settings(settings: Settings, **changes: Any) -> Settings:
    """Big pages; a patient lease wait, so each rerun waits out the dead run's lease (2 s)."""
    chained: dict[str, Any] = {"page_size": 1000, "http_timeout": 30.0, "lease_wait": 30.0}
    return with_settings(settings, **{**chained, **changes})


@dataclass(frozen=True)
class RedisSnapshot:
    """The job's marks and the items queue, read in one transaction."""

    marks: dict[str, str]
    queue: list[Queued]

    @classmethod
    def take(cls, rdb: redis.Redis, job_id: str) -> RedisSnapshot:
        """Read both at one instant, so they can be compared."""
        with rdb.pipeline(transaction=True) as pipe:
            pipe.hgetall(marks_key(job_id))
            pipe.lrange(ITEMS_QUEUE, 0, -1)
            marks, raw = pipe.execute()
        return cls(
            {k.decode(): v.decode() for k, v in marks.items()},
            [decode(message) for message in reversed(raw)],
        )


def assert_marks_match_queue(snapshot: RedisSnapshot, plan: list[str], where: str) -> None:
    """Each marked entry has its one message and each message its mark: a prefix of the plan."""
    queued = [q.kwargs["accounting_entry_id"] for q in snapshot.queue]
    assert set(snapshot.marks.values()) <= {"p"}, f"a mark that is not 'published' {where}"
    assert len(queued) == len(set(queued)), f"an entry queued twice {where}"
    assert set(queued) == set(snapshot.marks), (
        f"{len(set(snapshot.marks) - set(queued))} marked without a message and "
        f"{len(set(queued) - set(snapshot.marks))} queued without a mark {where}"
    )
    assert queued == plan[: len(queued)], f"the queue is not a prefix of the plan {where}"
    assert [q.kwargs["sequence"] for q in snapshot.queue] == list(range(len(queued))), where


def posted_events(state: SimState, job_id: str) -> list[tuple[str, bool]]:
    """Every event posted to the job, with whether the simulator accepted it."""
    return [(event.event, event.accepted) for event in state.events(job_id)]


def holding(state: SimState, rule: FaultRule) -> bool:
    """Whether ``rule`` (a ``timeout`` fault) has caught a request, which it holds until hang-up."""
    return any(active is rule and fired > 0 for active, fired in state.faults)


@pytest.mark.timeout(scale(400, 900))
def test_producer_killed_in_every_phase_then_rerun_queues_each_entry_once_in_order(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, tmp_path: Path
) -> None:
    """6,000 (30,000) entries on Redis: SIGKILLed in the claim, the fetch, 5 (20) times mid-publish.

    After each kill the queue holds exactly the marked entries, once each, as a prefix of the plan;
    after the final rerun it holds every entry once, sequences 0..N-1 in plan order, and the
    status and the simulator agree.
    """
    seed = chaos_seed()
    rng = random.Random(seed)
    job_id = sim_state.add_job(
        JobSpec(items=REDIS_ITEMS, item_statuses={"pending": 1.0}, seed=rng.randrange(10**6))
    )
    plan = plan_order(sim_state, job_id)
    chain = KillChain(chain_settings(settings), job_id, rdb, tmp_path, seed)

    # The claim, before Pleo hears "started": the job's first read is held until the kill.
    hold = FaultRule(endpoint="job", kind="timeout", delay=600.0, times=1)
    sim_state.add_fault(hold)
    chain.kill_when(
        lambda p: p.state == "claiming" and holding(sim_state, hold), "claim, job pending"
    )
    assert RedisSnapshot.take(rdb, job_id) == RedisSnapshot({}, []), chain.replay()
    assert chain.probe().state == "claiming", f"the kill missed the claim; {chain.replay()}"
    assert posted_events(sim_state, job_id) == []

    # The claim, after "started": the read that follows the event is held until the kill.
    hold = FaultRule(endpoint="job", kind="timeout", delay=600.0, after=1, times=1)
    sim_state.add_fault(hold)
    chain.kill_when(
        lambda p: p.state == "claiming" and holding(sim_state, hold), "claim, job started"
    )
    assert RedisSnapshot.take(rdb, job_id) == RedisSnapshot({}, []), chain.replay()
    assert chain.probe().state == "claiming", f"the kill missed the claim; {chain.replay()}"
    assert posted_events(sim_state, job_id) == [("started", True)]
    assert sim_state.jobs[job_id].status == "in_progress"

    # The fetch: in this run both layers have 30 pages; the kill lands after a random page.
    page = rng.randrange(1, 51)
    chain.kill_when(
        lambda p: p.state == "fetching" and int(p.progress.get("pages", 0)) >= page,
        f"fetch after page {page}",
        page_size=REDIS_PAGE_SIZE,
    )
    assert RedisSnapshot.take(rdb, job_id) == RedisSnapshot({}, []), chain.replay()
    assert chain.probe().state == "fetching", f"the kill missed the fetch; {chain.replay()}"

    # The publish, again and again: each run resumes and is killed past a random number of marks,
    # with a random batch size so batch boundaries move between runs.
    marked = 0
    for point in kill_points(rng, scale(5, 20), REDIS_ITEMS):
        batch = rng.choice(REDIS_BATCHES)
        at_kill = chain.kill_when(
            lambda p, point=point, marked=marked: (
                p.state == "publishing" and p.marks >= max(point, marked + 1)
            ),
            f"publish past {point} marks",
            publish_batch=batch,
        )
        snapshot = RedisSnapshot.take(rdb, job_id)
        where = f"after the kill of run {chain.killed}; {chain.replay()}"
        assert marked < at_kill.marks <= len(snapshot.marks) < REDIS_ITEMS, (
            f"not mid-publish {where}"
        )
        assert_marks_match_queue(snapshot, plan, where)
        marked = len(snapshot.marks)

    before = rdb.hlen(marks_key(job_id))
    summary = chain.finish()
    queued = redis_queue(rdb)
    ids = [q.kwargs["accounting_entry_id"] for q in queued]

    assert ids == plan, f"not each entry once in plan order; {chain.replay()}"
    assert [q.kwargs["sequence"] for q in queued] == list(range(REDIS_ITEMS))
    assert {q.kwargs["total"] for q in queued} == {REDIS_ITEMS}
    assert [q.task_id for q in queued] == [task_id_for(job_id, entry) for entry in plan]
    assert set(rdb.hvals(marks_key(job_id))) == {b"p"}
    runs = chain.killed + 1
    assert summary["status"] == "enqueued"
    assert (summary["planned"], summary["fence"], summary["recovery"]) == (REDIS_ITEMS, runs, True)
    assert (summary["enqueued"], summary["already_enqueued"]) == (REDIS_ITEMS - before, before)
    view = chain.status()
    assert (view["state"], view["planned"], view["published_total"]) == (
        "enqueued",
        REDIS_ITEMS,
        REDIS_ITEMS,
    )
    assert (view["runs"], view["fence"], view["recovery"]) == (runs, runs, 1)
    assert (view["enqueued"], view["already_enqueued"]) == (REDIS_ITEMS - before, before)
    assert posted_events(sim_state, job_id) == [("started", True)]
    tally("producer kills survived", chain.killed)


def marks_by_kind(rdb: redis.Redis, job_id: str) -> dict[str, set[str]]:
    """The job's marks grouped by value: ``"p"`` published (confirmed), ``"r"`` reserved."""
    grouped: dict[str, set[str]] = {"p": set(), "r": set()}
    for entry, mark in rdb.hgetall(marks_key(job_id)).items():
        grouped[mark.decode()].add(entry.decode())
    return grouped


@pytest.mark.rabbitmq
@pytest.mark.worker
@pytest.mark.timeout(scale(400, 900))
def test_producer_killed_mid_publish_on_rabbitmq_duplicates_but_erp_books_each_entry_once(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    tmp_path: Path,
    *,
    amqp_url: str,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """RabbitMQ: killed 2 (8) times mid-publish, every entry queued at least once; ERP books once.

    After each kill every confirmed entry has a message and every message a mark; after the rerun
    only entries reserved but unconfirmed at a kill may repeat, first copies in plan order. Real
    ERP workers on RabbitMQ then book each entry once and report it once, and the job completes.
    """
    seed = chaos_seed()
    rng = random.Random(seed)
    job_id = sim_state.add_job(
        JobSpec(items=RABBIT_ITEMS, item_statuses={"pending": 1.0}, seed=rng.randrange(10**6))
    )
    plan = plan_order(sim_state, job_id)
    rabbit = chain_settings(settings, broker_url=amqp_url)
    chain = KillChain(rabbit, job_id, rdb, tmp_path, seed)

    # Kill points count messages on the broker, so a kill lands anywhere inside a batch: messages
    # confirmed by RabbitMQ but not yet marked published are where duplicates come from.
    unconfirmed_at_kills: set[str] = set()
    sent = 0
    for point in kill_points(rng, scale(2, 8), RABBIT_ITEMS):
        batch = rng.choice((50, 100, 200))
        chain.kill_when(
            lambda p, point=point, sent=sent: (
                p.state == "publishing" and depth(amqp_url) >= max(point, sent + 1)
            ),
            f"publish past {point} messages",
            publish_batch=batch,
        )
        where = f"after the kill of run {chain.killed}; {chain.replay()}"
        marks = marks_by_kind(rdb, job_id)
        messages = peek(amqp_url)
        on_queue = Counter(kwargs["accounting_entry_id"] for _, kwargs in messages)
        assert sent < len(messages), f"the run sent nothing before its kill {where}"
        assert len(marks["p"]) < RABBIT_ITEMS, f"the run had finished publishing {where}"
        assert marks["p"] <= set(on_queue), f"confirmed entries without a message {where}"
        assert set(on_queue) <= marks["p"] | marks["r"], f"messages without a mark {where}"
        unconfirmed_at_kills |= marks["r"]
        sent = len(messages)

    before = len(marks_by_kind(rdb, job_id)["p"])
    summary = chain.finish()
    messages = peek(amqp_url)
    ids = [kwargs["accounting_entry_id"] for _, kwargs in messages]
    copies = Counter(ids)
    repeated = {entry for entry, n in copies.items() if n > 1}
    tally("duplicates on RabbitMQ (before the ERP)", len(ids) - len(copies))

    assert set(ids) == set(plan), f"entries lost or foreign; {chain.replay()}"
    assert repeated <= unconfirmed_at_kills, f"a confirmed entry was sent again; {chain.replay()}"
    assert list(copies) == plan, f"first copies not in plan order; {chain.replay()}"
    position = {entry: sequence for sequence, entry in enumerate(plan)}
    for task_id, kwargs in messages:
        entry = kwargs["accounting_entry_id"]
        want = (task_id_for(job_id, entry), position[entry], RABBIT_ITEMS)
        assert (task_id, kwargs["sequence"], kwargs["total"]) == want, entry
    assert (summary["status"], summary["planned"]) == ("enqueued", RABBIT_ITEMS)
    assert summary["enqueued"] + summary["already_enqueued"] == RABBIT_ITEMS
    assert summary["already_enqueued"] == before
    assert marks_by_kind(rdb, job_id) == {"p": set(plan), "r": set()}
    assert depth(amqp_url) == len(messages), "the peek took messages away"

    # The ERP side, on the very same messages: two real workers consuming from RabbitMQ. Each
    # needs a node name of its own (celery's click reads CELERY_WORKER_HOSTNAME for -n): with
    # the same one, RabbitMQ refuses the second its exclusive pidbox queue and it exits at once.
    erp_workers = [
        start_worker(
            "consumers", ITEMS_QUEUE, settings_=rabbit, CELERY_WORKER_HOSTNAME=f"erp{n}@%h"
        )
        for n in range(2)
    ]
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=scale(300, 800),
        what="the job to complete",
        explain=chain.status,
    )
    posted = journal_ids(rabbit)
    assert sorted(posted) == sorted(plan), "the ERP journal lacks an entry or has one twice"
    updates = sim_state.update_counts(job_id)
    assert set(updates) == set(plan)
    assert set(updates.values()) == {1}, "an entry reported to Pleo more than once"
    assert posted_events(sim_state, job_id) == [("started", True), ("completed", True)]
    view = chain.status()
    assert (view["published_total"], view["successful"], view["reported"]) == (RABBIT_ITEMS,) * 3
    assert (view["failed"], view["awaiting_outcome"], view["waiting_report"]) == (0, 0, 0)
    assert view["final_event"] == "completed"
    wait_for(lambda: depth(amqp_url) == 0, timeout=60, what="every message acknowledged")
    assert [worker.poll() for worker in erp_workers] == [None, None], "an ERP worker had exited"
    tally("producer kills survived", chain.killed)
