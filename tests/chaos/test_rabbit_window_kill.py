"""SIGKILL the producer while a window of RabbitMQ batches awaits its confirms: nothing lost.

The RabbitMQ path keeps several batches published but not yet marked (``KombuPublisher``
reserves a batch, publishes it, and marks it only once RabbitMQ acknowledged all of it, while the
next batches go out). Each kill here lands while at least two whole batches are reserved and
unmarked, so the kill provably hit an open window: whatever of it RabbitMQ holds is a duplicate
to be, whatever it does not is only reserved. After the final rerun every entry is on the queue,
the repeats are only entries that were reserved at a kill, and real ERP workers book and report
each entry once.
"""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from tests.chaos import test_producer_kill
from tests.chaos.conftest import chaos_seed, scale, tally
from tests.chaos.test_producer_kill import (
    KillChain,
    chain_settings,
    marks_by_kind,
    plan_order,
    posted_events,
)
from tests.conftest import wait_for
from tests.support.local import journal_ids
from tests.support.rabbit import depth, peek

pytestmark = pytest.mark.integration

# The RabbitMQ fixture (items queue purged before and after, taking turns on the broker).
amqp_url = test_producer_kill.amqp_url

ITEMS = scale(2_000, 6_000)
BATCH = 100
# KombuPublisher keeps up to 4 batches awaiting confirms, and reserves a 5th while it publishes.
WINDOW = 5 * BATCH


@pytest.mark.rabbitmq
@pytest.mark.worker
@pytest.mark.timeout(scale(300, 600))
def test_producer_killed_with_a_window_of_batches_unconfirmed_loses_nothing(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    tmp_path: Path,
    *,
    amqp_url: str,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """Killed 2 (4) times with >= 2 batches reserved and unmarked; each entry booked once."""
    seed = chaos_seed()
    rng = random.Random(seed)
    job_id = sim_state.add_job(
        JobSpec(items=ITEMS, item_statuses={"pending": 1.0}, seed=rng.randrange(10**6))
    )
    plan = plan_order(sim_state, job_id)
    rabbit = chain_settings(settings, broker_url=amqp_url)
    chain = KillChain(rabbit, job_id, rdb, tmp_path, seed)

    reserved_at_kills: set[str] = set()
    confirmed = 0
    for _ in range(scale(2, 4)):
        # Past the last run's reservations (re-sent first) and into fresh batches, then killed
        # while two whole batches or more wait for their confirms.
        past = confirmed + WINDOW + rng.randrange(BATCH)

        def open_window(probe: object, past: int = past) -> bool:
            marks = marks_by_kind(rdb, job_id)
            return len(marks["p"]) >= past and len(marks["r"]) >= 2 * BATCH

        chain.kill_when(
            lambda p, ready=open_window: p.state == "publishing" and ready(p),
            f"publish with a window open past {past} confirmed",
            publish_batch=BATCH,
        )
        where = f"after the kill of run {chain.killed}; {chain.replay()}"
        marks = marks_by_kind(rdb, job_id)
        on_queue = Counter(kwargs["accounting_entry_id"] for _, kwargs in peek(amqp_url))
        assert len(marks["r"]) >= 2 * BATCH, f"the kill missed the open window {where}"
        assert len(marks["p"]) < ITEMS, f"the run had finished publishing {where}"
        assert marks["p"] <= set(on_queue), f"an entry marked without its message {where}"
        assert set(on_queue) <= marks["p"] | marks["r"], f"a message without a mark {where}"
        # Marks are written per batch in plan order: confirmed entries are a prefix of the plan.
        assert marks["p"] == set(plan[: len(marks["p"])]), f"marks not a plan prefix {where}"
        reserved_at_kills |= marks["r"]
        confirmed = len(marks["p"])

    summary = chain.finish()
    messages = peek(amqp_url)
    copies = Counter(kwargs["accounting_entry_id"] for _, kwargs in messages)
    repeated = {entry for entry, n in copies.items() if n > 1}
    tally("duplicates on RabbitMQ (before the ERP)", sum(copies.values()) - len(copies))

    assert set(copies) == set(plan), f"entries lost or foreign; {chain.replay()}"
    assert repeated <= reserved_at_kills, f"a confirmed entry was sent again; {chain.replay()}"
    assert list(copies) == plan, f"first copies not in plan order; {chain.replay()}"
    assert (summary["status"], summary["planned"]) == ("enqueued", ITEMS)
    assert marks_by_kind(rdb, job_id) == {"p": set(plan), "r": set()}

    erp_workers = [
        start_worker(
            "consumers", ITEMS_QUEUE, settings_=rabbit, CELERY_WORKER_HOSTNAME=f"erp{n}@%h"
        )
        for n in range(2)
    ]
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=scale(240, 500),
        what="the job to complete",
        explain=chain.status,
    )
    assert sorted(journal_ids(rabbit)) == sorted(plan), "an entry missing from the ERP or twice"
    updates = sim_state.update_counts(job_id)
    assert set(updates) == set(plan)
    assert set(updates.values()) == {1}, "an entry reported to Pleo more than once"
    assert posted_events(sim_state, job_id) == [("started", True), ("completed", True)]
    wait_for(lambda: depth(amqp_url) == 0, timeout=60, what="every message acknowledged")
    assert [worker.poll() for worker in erp_workers] == [None, None], "an ERP worker had exited"
    tally("producer kills survived", chain.killed)
