"""SIGKILL a producer mid-publish, run it again: every entry queued exactly once, in plan order."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import redis

from contract.keys import marks_key
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from tests.conftest import env_for, with_settings
from tests.support import zygote
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_producer_then_rerun_leaves_each_entry_once_in_order(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, seed: int
) -> None:
    """A run SIGKILLed mid-publish, then rerun, queues each entry once, in order."""
    items = 3000
    job_id = sim_state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}, seed=seed))
    # Small batches (a size, not a timing): past any kill point below half the plan, at least
    # 150 Lua round trips remain, far longer than the 2 ms between looks at the marks.
    # The rerun takes the dead run's lease at once (a gone local holder), so the lease keeps the
    # suite's TTL: a short one only risks a run under load missing its own heartbeat.
    fast = with_settings(settings, page_size=1000, publish_batch=10)
    env = env_for(fast)
    kill_after = random.Random(seed).randrange(1, items // 2)

    proc = zygote.start_module("producer", ["run", job_id], env, None)
    try:
        deadline = time.monotonic() + 60
        while rdb.hlen(marks_key(job_id)) < kill_after and proc.poll() is None:
            assert time.monotonic() < deadline, f"{kill_after} entries were never marked"
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    partial = len(redis_queue(rdb))
    assert partial == rdb.hlen(marks_key(job_id)), "a mark without its message, or the reverse"

    rerun = zygote.run_module(
        "producer", ["run", job_id, "--json"], {**env, "PLEO_LEASE_WAIT": "5"}, timeout=90
    )
    assert rerun.returncode == 0, rerun.stderr
    queued = [q.kwargs for q in redis_queue(rdb)]
    assert [k["sequence"] for k in queued] == list(range(items))
    assert len({k["accounting_entry_id"] for k in queued}) == items
    assert partial < items, "the kill came too late to test anything"
