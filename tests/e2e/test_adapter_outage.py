"""The whole pipeline through a broken ERP adapter and a database outage: no entry lost or failed.

Real Redis, the simulator over HTTP, real ``celery -A consumers worker`` processes, the reference
adapter's journal in PostgreSQL (reached through a forwarder the test cuts, in one case).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.audit import write_manifest
from consumers.audit_sql import SqlManifestSink
from consumers.erp_sql import SqlJournal
from contract.celery_app import make_app
from contract.keys import outbox_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.processes import stop_group
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for, with_settings
from tests.support.forwarder import Forwarder
from tests.support.local import journal_ids, worker_log
from tests.support.postgres import empty_journal, read_only, via

pytestmark = [pytest.mark.integration, pytest.mark.worker]

# The scenario: the broken worker has the queue to itself for this long.
BROKEN_FOR = 20.0


def finished(state: SimState, job_id: str) -> str | None:
    """The job's terminal status in Pleo, once it has one."""
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def rows(url: str) -> int:
    """How many entries the journal at ``url`` holds (a cheap poll while workers post)."""
    with SqlJournal(url) as journal:
        return journal.entries_count()


def assert_posted_and_reported_once(state: SimState, job_id: str, journal: Settings) -> None:
    """Each successful entry is one journal row; every entry got exactly one applied update."""
    planned = {i.accounting_entry_id for i in state.items(job_id)}
    successful = sorted(
        i.accounting_entry_id for i in state.items(job_id) if i.status == "successful"
    )
    assert sorted(journal_ids(journal)) == successful
    assert state.update_counts(job_id) == dict.fromkeys(planned, 1)


def test_broken_adapter_for_20s_then_a_healthy_worker(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, tmp_path: Path
) -> None:
    """Broken workers for 20 s, then a healthy one: only validation failures fail, the rest book."""
    job_id = sim_state.add_job(
        JobSpec(items=200, item_statuses={"pending": 1.0}, missing_account_ratio=0.05)
    )
    with empty_journal() as pg_url:
        healthy = with_settings(settings, erp_database_url=pg_url)
        produce(job_id, settings=settings, app=make_app(settings))
        started = time.monotonic()
        # The worker (garbage://x) and one that starts fine on a read-only replica, whose
        # every INSERT fails with an error the task does not know.
        garbage = start_worker(
            "consumers",
            ITEMS_QUEUE,
            settings_=with_settings(settings, erp_database_url="garbage://x"),
        )
        replica = with_settings(settings, erp_database_url=read_only(pg_url))
        broken = start_worker("consumers", ITEMS_QUEUE, concurrency=2, settings_=replica)
        assert wait_for(lambda: garbage.poll() is not None, timeout=10, what="garbage:// to exit")
        assert garbage.returncode == 2
        time.sleep(max(0.0, BROKEN_FOR - (time.monotonic() - started)))

        assert broken.poll() is None
        # The SQL journal posts in batches (a governed connection): each refused batch pauses it.
        assert "erp_call_failed" in worker_log(tmp_path, 1)
        assert journal_ids(healthy) == []
        statuses = Counter(i.status for i in sim_state.items(job_id))
        assert "successful" not in statuses
        # Entries that fail validation never reach the adapter, so they may be reported already.
        assert statuses["failed"] <= 10
        assert finished(sim_state, job_id) is None
        # The healthy worker boots (seconds) while the broken one shuts down warm, which waits
        # out a breaker pause in progress: the broken one has stopped taking messages at once.
        start_worker("consumers", ITEMS_QUEUE, concurrency=2, settings_=healthy)
        stop_group(broken, grace=20)
        status = wait_for(
            lambda: finished(sim_state, job_id),
            timeout=60,
            what="the job to finish",
            explain=lambda: job_status(rdb, job_id),
        )
        assert status == "completed_with_errors"
        failed = [i for i in sim_state.items(job_id) if i.status == "failed"]
        assert len(failed) == 10
        assert {i.failure_reason_type for i in failed} == {"missing_configuration"}
        assert Counter(i.status for i in sim_state.items(job_id)) == {
            "successful": 190,
            "failed": 10,
        }
        assert [e.event for e in sim_state.events(job_id) if e.accepted] == [
            "started",
            "completed_with_errors",
        ]
        assert [e.event for e in sim_state.events(job_id) if e.event != "started"] == [
            "completed_with_errors"
        ]
        assert_posted_and_reported_once(sim_state, job_id, healthy)


def test_database_unreachable_mid_run(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """PostgreSQL cut off for 4 s mid-job: no entry failed for it, each posted once, completed."""
    job_id = sim_state.add_job(JobSpec(items=600, item_statuses={"pending": 1.0}))
    with empty_journal() as pg_url, Forwarder(("127.0.0.1", 5432)) as database:
        direct = with_settings(settings, erp_database_url=pg_url)
        database.restore()
        produce(job_id, settings=settings, app=make_app(settings))
        forwarded = with_settings(settings, erp_database_url=via(pg_url, database.port))
        start_worker("consumers", ITEMS_QUEUE, concurrency=2, settings_=forwarded)
        wait_for(lambda: rows(pg_url) >= 60, timeout=30, what="the first postings")
        database.cut()
        time.sleep(0.5)  # a COMMIT that reached PostgreSQL just before the cut lands meanwhile
        cut_at = rows(pg_url)
        time.sleep(3.5)
        assert rows(pg_url) == cut_at
        database.restore()
        status = wait_for(
            lambda: finished(sim_state, job_id),
            timeout=60,
            what="the job to finish",
            explain=lambda: job_status(rdb, job_id),
        )
        assert cut_at < 600
        assert "erp_unreachable" in worker_log(tmp_path)
        assert status == "completed"
        assert Counter(i.status for i in sim_state.items(job_id)) == {"successful": 600}
        assert [e.event for e in sim_state.events(job_id)] == ["started", "completed"]
        assert_posted_and_reported_once(sim_state, job_id, direct)
        view = job_status(rdb, job_id)
        assert (view["successful"], view["failed"], view["awaiting_outcome"]) == (600, 0, 0)
        assert_manifest_counts_the_retries(rdb, job_id, direct, worker_log(tmp_path))


def assert_manifest_counts_the_retries(
    rdb: redis.Redis, job_id: str, journal: Settings, log: str
) -> None:
    """The job's audit manifest, kept in the journal's PostgreSQL: the journal's ids, and every
    retry the outage caused counted in the tries of the entry it delayed."""
    with SqlManifestSink(journal.erp_database_url) as sink:
        try:
            write_manifest(rdb, job_id, journal)
            manifest = sink.read(job_id)
        finally:
            sink.drop_tables()
    assert manifest is not None
    with SqlJournal(journal.erp_database_url) as booked:
        ids = {row["accounting_entry_id"]: row["external_id"] for row in booked.journal()}
    assert {e.accounting_entry_id: e.external_id for e in manifest.entries} == ids
    assert [e.sequence for e in manifest.entries] == list(range(len(ids)))
    # Each refused call counts one try for each entry it carried (a batch: several).
    retries = sum(
        int(n) for n in re.findall(rf"erp_unreachable job_id={job_id} .*entries=([0-9]+)", log)
    )
    assert retries >= 1
    assert sum((e.erp_attempts or 0) - 1 for e in manifest.entries) == retries


def test_plain_erp_unreachable_past_the_limit_fails_the_job_after_every_booking_is_reported(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, start_worker: Any, erp_sim: Any
) -> None:
    """The ERP behind a plain HTTP connection answers every call 503 from mid-job on, longer
    than ERP_UNREACHABLE_LIMIT: the job ends `failed` with accounting_system_unreachable exactly
    once, and every entry the ERP booked (those in flight when it went down too) is reported;
    nothing is left in the outbox (consumers/ending.py)."""
    erp = erp_sim(latency=0.3)
    job_id = sim_state.add_job(JobSpec(items=400, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    env = {
        "ERP_ADAPTER": "consumers.erp_http:from_settings",
        "ERP_HTTP_URL": erp.url,
        "ERP_UNREACHABLE_LIMIT": "2",
        "PLEO_CLOSE_INTERVAL": "3600",
    }
    for _ in range(2):
        start_worker("consumers", ITEMS_QUEUE, concurrency=2, **env)
    wait_for(lambda: len(erp.state.bookings()) >= 12, timeout=60, what="12 bookings")
    went_down = time.monotonic()
    erp.state.configure(dataclasses.replace(erp.state.config, fail_rate=1.0))
    booked_then = len(erp.state.bookings())
    status = wait_for(
        lambda: (s := sim_state.jobs[job_id].status) in {"completed", "failed"} and s,
        timeout=90,
        what="the job to end",
        explain=lambda: job_status(rdb, job_id),
    )
    took = time.monotonic() - went_down
    time.sleep(1.0)  # a post still on its way would land by now (0.3 s each)
    assert status == "failed"
    finals = [e for e in sim_state.events(job_id) if e.event != "started" and e.accepted]
    assert [(e.event, e.failure_reason_type) for e in finals] == [
        ("failed", "accounting_system_unreachable")
    ]
    booked = {b.accounting_entry_id for b in erp.state.bookings()}
    successful = {
        i.accounting_entry_id for i in sim_state.items(job_id) if i.status == "successful"
    }
    assert 12 <= len(booked) < 400
    assert successful == booked
    assert rdb.hlen(outbox_key(job_id)) == 0
    print(
        f"plain_erp_unreachable booked_when_down={booked_then} booked={len(booked)} "
        f"reported={len(successful)} ended_after={took:.1f}s"
    )
