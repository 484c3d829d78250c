"""Redis Sentinel: ledger and broker on the master the Sentinel names, and after a failover.

A master ``redis-server`` (AOF on, so the start-up check passes without PLEO_REDIS_EPHEMERAL)
and one ``redis-server --sentinel`` watching it, both on free ports; ``pleo-export run`` and a
real ERP worker are given only the Sentinel's address and the master's name. Then a failover:
the master killed, its replica promoted, the same ledger client and Celery app write to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from contract.celery_app import make_app
from contract.keys import marks_key, progress_key
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from contract.store import ledger_client
from devtools.simulator import JobSpec, SimState
from producer.triggers import enqueue
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
        # Started first, so that its start overlaps the run's.
        start_worker("consumers", ITEMS_QUEUE, settings_=via_sentinel, PLEO_REDIS_EPHEMERAL="0")
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
        # The one-script publish marked every entry in the master (and queued it there: the
        # worker, which knows only the Sentinel, finishes the job, and the suite's Redis is empty).
        assert master.hlen(marks_key(job_id)) == ITEMS
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


def test_after_a_failover_the_same_clients_write_to_the_promoted_replica(tmp_path: Path) -> None:
    """Master shut down, replica promoted by the Sentinel: a ledger client and a Celery app made
    before it send the next trigger (ledger key and producer task) to the new master."""
    with (
        # No 5 s wait for more replicas before the first sync (Redis 7's diskless default).
        redis_server(tmp_path / "old", "--save", "", "--repl-diskless-sync-delay", "0") as old_port,
        redis_server(tmp_path / "new", "--save", "") as new_port,
    ):
        replica = redis.Redis(port=new_port)
        replica.replicaof("127.0.0.1", old_port)
        wait_for(
            lambda: replica.info("replication").get("master_link_status") == "up",
            timeout=10,
            what="the replica to sync",
        )
        sentinel_config = (
            f"sentinel monitor {MASTER} 127.0.0.1 {old_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 200\n"
            f"sentinel failover-timeout {MASTER} 2000\n"
            # Known from the start: otherwise the Sentinel learns of it at its next INFO (10 s).
            f"sentinel known-replica {MASTER} 127.0.0.1 {new_port}\n"
        )
        with redis_server(tmp_path / "sentinel", "--sentinel", config=sentinel_config) as port:
            url = f"sentinel://127.0.0.1:{port}/0"
            settings = Settings(
                redis_url=url, broker_url=url, redis_sentinel_master=MASTER, redis_ephemeral=True
            )
            sentinel = redis.Redis(port=port)
            wait_for(
                lambda: sentinel.execute_command("SENTINEL", "REPLICAS", MASTER),
                timeout=15,
                what="the Sentinel to see the replica",
            )
            client, app = ledger_client(settings), make_app(settings)
            before = enqueue(JOB_BEFORE, settings=settings, app=app, client=client)
            assert redis.Redis(port=old_port).llen(PRODUCER_QUEUE) == 1
            # Replication is asynchronous: the kill waits until the first task has reached it.
            wait_for(lambda: replica.llen(PRODUCER_QUEUE) == 1, timeout=10, what="replication")

            killed = time.monotonic()
            # No retries: redis-py's default ones would spend 3.7 s reconnecting to a server
            # that went away on purpose.
            redis.Redis(port=old_port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
            wait_for(
                lambda: replica.info("replication")["role"] == "master",
                timeout=20,
                what="the Sentinel to promote the replica",
            )
            after = wait_for(
                lambda: _enqueued(JOB_AFTER, settings, app, client),
                timeout=20,
                what="a trigger to go through once the replica is master",
            )
            print(f"failover: first trigger through {time.monotonic() - killed:.1f} s after")
            assert not before.deduplicated
            assert not after.deduplicated
            # Both triggers' tasks are on the new master (the first came with replication).
            assert replica.llen(PRODUCER_QUEUE) == 2
            assert replica.hget(progress_key(JOB_AFTER), "task_id") == after.task_id.encode()
            client.close()
            app.close()


JOB_BEFORE = "1b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"
JOB_AFTER = "2b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"


def _enqueued(job_id: str, settings: Settings, app: Any, client: redis.Redis) -> Any:
    """The trigger's result, or None while the failover is still under way."""
    try:
        return enqueue(job_id, settings=settings, app=app, client=client)
    except Exception:  # noqa: BLE001 - BrokerUnavailable or a kombu error until it settles
        time.sleep(0.1)
        return None
