"""A real job through a real producer worker and a prefork ERP worker (-c 4), one of whose pool
processes is SIGKILLed mid-run; both workers' ``GET /metrics`` then add up to what the run did.

The scrapes are read with prometheus-client's own parser; the figures are checked against the
simulator (what Pleo saw) and the journal (what the ERP booked), not against each other.
"""

from __future__ import annotations

import math
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.erp_sql import BATCH_SIZE
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.status import job_status
from tests.conftest import wait_for
from tests.support.local import free_port, journal_ids, pool_children
from tests.support.metrics import answering, metrics_env, scrape

pytestmark = [pytest.mark.integration, pytest.mark.worker]

ITEMS = 1000


@pytest.mark.timeout(300)
def test_metrics_add_up_to_the_run_across_a_killed_pool_process(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    cli: Any,
    tmp_path: Path,
) -> None:
    """Published = plan, posted + failed = entries, reported = entries, one final event."""
    job_id = sim_state.add_job(
        JobSpec(items=ITEMS, item_statuses={"pending": 1.0}, missing_account_ratio=0.05, seed=3)
    )
    producer_port, erp_port = free_port(), free_port()
    start_worker("producer", PRODUCER_QUEUE, **metrics_env(tmp_path, "producer", producer_port))
    erp_env = metrics_env(tmp_path, "erp", erp_port)
    erp = start_worker("consumers", ITEMS_QUEUE, concurrency=4, **erp_env)
    for port in (producer_port, erp_port):
        wait_for(lambda p=port: answering(p), timeout=60, what=f"metrics on port {port}")

    assert cli("enqueue", job_id).returncode == 0
    wait_for(
        lambda: _journal(settings) and len(journal_ids(settings)) >= ITEMS // 4,
        timeout=120,
        what="a quarter of the entries booked",
        explain=lambda: job_status(rdb, job_id),
    )
    during = scrape(erp_port)
    metrics_dir = Path(erp_env["PROMETHEUS_MULTIPROC_DIR"])

    def counting_child() -> int | None:
        # A pool process that has counted something (its own file): on a loaded machine one of
        # the four may not have had a message yet, and its death would prove nothing here.
        names = [p.name for p in metrics_dir.iterdir()]
        return next((c for c in pool_children(erp) if any(f"_{c}." in n for n in names)), None)

    victim = wait_for(counting_child, timeout=30, what="a pool process with metrics of its own")
    os.kill(victim, signal.SIGKILL)

    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed_with_errors",
        timeout=180,
        what="the job to finish",
        explain=lambda: job_status(rdb, job_id),
    )
    statuses = Counter(item.status for item in sim_state.items(job_id))
    booked = len(set(journal_ids(settings)))
    assert booked == statuses["successful"] > 0
    assert statuses["failed"] > 0
    assert statuses["successful"] + statuses["failed"] == ITEMS
    # The final event is counted just after Pleo accepted it: give the counter that instant.
    wait_for(
        lambda: scrape(erp_port).value("pleo_export_final_events_total") >= 1,
        timeout=10,
        what="the final event counted",
    )
    producer, consumer = scrape(producer_port), scrape(erp_port)
    print("--- producer scrape (pleo_export_ lines) ---", *_ours(producer.text), sep="\n")
    print("--- ERP worker scrape (pleo_export_ lines) ---", *_ours(consumer.text), sep="\n")

    # The killed pool process wrote its own file; its counts stay in the totals.
    assert any(f"_{victim}." in p.name for p in metrics_dir.iterdir())
    status = job_status(rdb, job_id)

    # The producer: one run, every entry published once, both layers read page by page.
    assert producer.value("pleo_export_producer_runs_total") == 1
    assert producer.value("pleo_export_producer_runs_total", outcome="enqueued") == 1
    assert producer.value("pleo_export_producer_run_duration_seconds_count") == 1
    assert producer.value("pleo_export_entries_published_total") == status["planned"] == ITEMS
    assert producer.value("pleo_export_entries_already_published_total") == 0
    assert producer.value("pleo_export_entries_read_total", layer="control") == ITEMS
    assert producer.value("pleo_export_entries_read_total", layer="data") == ITEMS
    assert producer.value("pleo_export_pages_read_total") == status["pages"]
    assert producer.value("pleo_export_pages_read_total", layer="control") == math.ceil(
        ITEMS / settings.page_size
    )

    # The ERP workers: each entry's one outcome counted once, across the killed process too.
    # An outcome is counted just after it is recorded: the killed process may have died between
    # the two, and the entry's redelivery finds the outcome and counts nothing. So each of these
    # counts what happened, less at most the one entry the victim was on (never more: none twice).
    posted = consumer.value("pleo_export_entries_posted_total")
    failed = consumer.value("pleo_export_entries_failed_total")
    assert statuses["successful"] - 1 <= posted <= statuses["successful"]
    assert statuses["failed"] - 1 <= failed <= statuses["failed"]
    assert ITEMS - 1 <= posted + failed <= ITEMS
    assert consumer.value("pleo_export_entries_failed_total", failure_reason_type="other") == 0
    assert consumer.value("pleo_export_entries_reported_total") == ITEMS
    assert consumer.value("pleo_export_final_events_total") == 1
    assert consumer.value("pleo_export_final_events_total", status="completed_with_errors") == 1
    # The SQL journal books up to BATCH_SIZE entries a call; an entry the killed process held is
    # posted again (idempotently), so there are at least this many calls, and at most one a try.
    calls = consumer.value("pleo_export_erp_calls_total")
    assert math.ceil(statuses["successful"] / BATCH_SIZE) <= calls <= ITEMS
    assert consumer.value("pleo_export_erp_rate_limited_total") == 0
    assert consumer.value("pleo_export_erp_errors_total") == 0
    assert consumer.value("pleo_export_writeback_calls_total", result="ok") >= ITEMS / 100
    assert consumer.value("pleo_export_writeback_calls_total", result="job_finished") == 0
    assert consumer.value("pleo_export_writeback_refusals_total") == 0

    # The active-job gauges: the job was active mid-run, with Pleo's clock running; now none.
    assert during.value("pleo_export_active_jobs") == 1
    assert during.value("pleo_export_active_jobs", state="enqueued") == 1
    assert 0 < during.value("pleo_export_active_job_expiry_seconds") <= 3600
    for now in (producer, consumer):
        assert now.value("pleo_export_ledger_up") == 1
        assert now.value("pleo_export_active_jobs") == 0
        assert "pleo_export_active_job_expiry_seconds" not in now.names()


def _journal(settings: Settings) -> bool:
    """Whether the ERP journal's file exists yet (the first booking creates it)."""
    return Path(settings.erp_database_url.removeprefix("sqlite:///")).exists()


def _ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("pleo_export_")]
