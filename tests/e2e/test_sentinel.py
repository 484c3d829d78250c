"""A job end to end through Redis Sentinel: ledger and broker on the master the Sentinel names.

A master ``redis-server`` (AOF on, so the start-up check passes without PLEO_REDIS_EPHEMERAL)
and one ``redis-server --sentinel`` watching it, both on free ports; ``pleo-export run`` and a
real ERP worker are given only the Sentinel's address and the master's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.keys import marks_key, progress_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from tests.conftest import env_for, wait_for, with_settings
from tests.support.redis_servers import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.worker]

MASTER = "pleo-ledger"
ITEMS = 60


def finished(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def test_a_job_runs_through_sentinel_on_the_master_it_names(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Planned, queued on and finished from the Sentinel-discovered master: every entry posted
    and reported once, the job completed, and nothing written to the suite's own Redis."""
    with (
        redis_server(tmp_path / "master", "--appendonly", "yes", "--save", "") as master_port,
        redis_server(
            tmp_path / "sentinel",
            "--sentinel",
            config=f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n",
        ) as sentinel_port,
    ):
        url = f"sentinel://127.0.0.1:{sentinel_port}/3"
        via_sentinel = with_settings(
            settings, redis_url=url, broker_url=url, redis_sentinel_master=MASTER
        )
        master = redis.Redis(port=master_port, db=3)
        job_id = sim_state.add_job(JobSpec(items=ITEMS, item_statuses={"pending": 1.0}))
        run = subprocess.run(
            [sys.executable, "-m", "producer", "run", job_id, "--json"],
            env=env_for(via_sentinel, PLEO_REDIS_EPHEMERAL="0"),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        # The start-up check read the master's AOF through the Sentinel: no refusal, no doubt.
        assert "warning" not in run.stderr
        assert json.loads(run.stdout)["enqueued"] == ITEMS
        # One-script publish: marks and messages both in the master.
        assert master.hlen(marks_key(job_id)) == master.llen(ITEMS_QUEUE) == ITEMS
        assert master.hget(progress_key(job_id), "state") is not None

        start_worker("consumers", ITEMS_QUEUE, settings_=via_sentinel, PLEO_REDIS_EPHEMERAL="0")
        status = wait_for(
            lambda: finished(sim_state, job_id),
            timeout=90,
            what="the job to finish",
            explain=lambda: master.hgetall(progress_key(job_id)),
        )
        assert status == "completed"
        assert set(sim_state.update_counts(job_id).values()) == {1}
        assert len(sim_state.update_counts(job_id)) == ITEMS
        assert master.llen(ITEMS_QUEUE) == 0
        master.close()
    assert rdb.dbsize() == 0
