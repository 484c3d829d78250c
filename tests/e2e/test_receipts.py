"""Receipts through the whole pipeline: real producer run, real ERP workers, both simulators.

Each test prints the receipt outcomes it observed (the README's figures come from these lines).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from consumers.erp_sql import SqlJournal
from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.erp_simulator import RunningErpSimulator
from devtools.processes import signal_group
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import wait_for
from tests.support.local import free_port
from tests.support.metrics import metrics_env, scrape

pytestmark = [pytest.mark.integration, pytest.mark.worker]

RECEIPTS_ON = {"ERP_RECEIPTS": "1", "PLEO_CLOSE_INTERVAL": "3600"}


def finished(state: SimState, job_id: str) -> str | None:
    status = state.jobs[job_id].status
    return status if status in {"completed", "completed_with_errors", "failed"} else None


def await_end(state: SimState, rdb: redis.Redis, job_id: str, timeout: float = 60) -> str:
    status: str = wait_for(
        lambda: finished(state, job_id),
        timeout=timeout,
        what="the job to finish",
        explain=lambda: job_status(rdb, job_id),
    )
    return status


def http_env(erp: RunningErpSimulator, **extra: str) -> dict[str, str]:
    """A worker posting to the ERP simulator, receipts on, uploaded to its attachments route."""
    return {
        **RECEIPTS_ON,
        "ERP_ADAPTER": "consumers.erp_http:from_settings",
        "ERP_HTTP_URL": erp.url,
        "ERP_HTTP_ATTACHMENTS_URL": f"{erp.url}/journal/attachments",
        "ERP_HTTP_TIMEOUT": "10",
        **extra,
    }


def stored_per_entry(erp: RunningErpSimulator) -> Counter[str]:
    return Counter(s.accounting_entry_id for s in erp.state.attachments.stored())


@pytest.mark.parametrize("path", ["governed", "direct"])
def test_receipts_fetched_after_their_urls_expired_are_all_uploaded(
    *,
    path: str,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Callable[..., Any],
    erp_sim: Callable[..., RunningErpSimulator],
    tmp_path: Path,
) -> None:
    """The worker starts after every URL of the job expired: it reads the data layer again for
    fresh ones (before trying any, since the message says when it was fetched), and every
    receipt lands once; the worker's metrics count each file, its bytes and its download.
    (Without the fetch time, schema 1, each URL is tried, refused 403 and renewed:
    tests/integration/test_receipts.py.)"""
    sim_state.receipts.configure(lifetime=2.0, size=2048)
    job_id = sim_state.add_job(JobSpec(items=12, item_statuses={"pending": 1.0}))
    # Schema 2 carries published_at, the fetch's time (no worker has announced it yet).
    settings = dataclasses.replace(settings, message_schema=2)
    produce(job_id, settings=settings, app=make_app(settings))
    reads_before = sum(1 for c in sim_state.calls if c.endpoint == "export_items")
    time.sleep(2.2)
    # The SQL journal is a governed connection (it batches); the HTTP one without limits is not.
    erp = erp_sim() if path == "direct" else None
    env = RECEIPTS_ON if erp is None else http_env(erp)
    port = free_port()
    metrics = metrics_env(tmp_path, "erp", port)
    start_worker("consumers", ITEMS_QUEUE, **env, **metrics, PLEO_FILE_URL_LIFETIME="2")
    assert await_end(sim_state, rdb, job_id) == "completed"
    if erp is None:
        with SqlJournal(settings.erp_database_url) as journal:
            rows = journal.attachments()
        stored = [r["accounting_entry_id"] for r in rows]
        stored_bytes = sum(r["size"] for r in rows)
    else:
        stored = list(stored_per_entry(erp).elements())
        stored_bytes = sum(s.size for s in erp.state.attachments.stored())
    planned = sorted(i.accounting_entry_id for i in sim_state.items(job_id))
    assert sorted(stored) == planned
    counts = sim_state.receipts.counts()
    rereads = sum(1 for c in sim_state.calls if c.endpoint == "export_items") - reads_before
    print(f"receipts ({path}): stored={len(stored)} {counts} data-layer re-reads={rereads}")
    assert counts["expired"] == 0
    assert counts["downloads"] == 12
    assert rereads >= 1
    seen = scrape(port)
    transferred = seen.value("pleo_export_receipts_transferred_total")
    downloads = seen.value("pleo_export_receipt_download_seconds_count")
    download_seconds = seen.value("pleo_export_receipt_download_seconds_sum")
    print(
        f"receipt metrics ({path}): transferred={transferred:g} "
        f"bytes={seen.value('pleo_export_receipt_bytes_total'):g} downloads={downloads:g} "
        f"download_seconds={download_seconds:.3f} "
        f"failures={seen.value('pleo_export_receipt_failures_total'):g}"
    )
    assert transferred == len(stored)
    assert seen.value("pleo_export_receipt_bytes_total") == stored_bytes
    assert downloads == len(stored) <= counts["downloads"]  # one delivered download per file
    assert download_seconds > 0
    assert seen.value("pleo_export_receipt_failures_total") == 0


def test_an_oversized_receipt_fails_its_entry_with_the_size_reason(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Files over ERP_RECEIPT_MAX_BYTES (SQL journal, governed): each entry is reported
    receipt_file_size_limit_exceeded (and counted by that reason), the job ends
    completed_with_errors, nothing is stored."""
    sim_state.receipts.configure(size=5000)
    job_id = sim_state.add_job(JobSpec(items=6, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    port = free_port()
    metrics = metrics_env(tmp_path, "erp", port)
    start_worker("consumers", ITEMS_QUEUE, **RECEIPTS_ON, **metrics, ERP_RECEIPT_MAX_BYTES="4096")
    assert await_end(sim_state, rdb, job_id) == "completed_with_errors"
    reasons = Counter(i.failure_reason_type for i in sim_state.items(job_id))
    seen = scrape(port)
    for kind, entries in reasons.items():
        counted = seen.value("pleo_export_receipt_failures_total", reason=str(kind))
        assert counted == entries, (kind, counted)
    assert seen.value("pleo_export_receipts_transferred_total") == 0
    print(f"receipts: item reasons={dict(reasons)} downloads={sim_state.receipts.counts()}")
    assert reasons == {"receipt_file_size_limit_exceeded": 6}
    assert all("4096" in (i.failure_reason or "") for i in sim_state.items(job_id))
    with SqlJournal(settings.erp_database_url) as journal:
        assert journal.attachments() == []
    assert sim_state.receipts.counts()["downloads"] == 0


def test_a_failed_upload_is_retried_without_a_second_copy(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Callable[..., Any],
    erp_sim: Callable[..., RunningErpSimulator],
) -> None:
    """On a governed connection (HTTP with a rate limit): two uploads fail (503) and the ERP
    stores three more whose answers are lost (503);
    the posters try again with the same key and the ERP keeps one copy of each receipt."""
    sim_state.receipts.configure(size=1500)
    erp = erp_sim()
    erp.state.attachments.configure({"lose_next": 3, "fail_next": 2})
    job_id = sim_state.add_job(JobSpec(items=10, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    start_worker("consumers", ITEMS_QUEUE, **http_env(erp, ERP_CALLS="200", ERP_PERIOD="1"))
    assert await_end(sim_state, rdb, job_id) == "completed"
    view = erp.state.attachments.view()
    planned = [i.accounting_entry_id for i in sim_state.items(job_id)]
    print(
        f"receipts: stored={len(view['data'])} uploads={view['uploads']} replays={view['replays']}"
    )
    assert stored_per_entry(erp) == dict.fromkeys(planned, 1)
    assert view["uploads"] == 10 + 3 + 2
    assert view["replays"] == 3
    assert erp.state.stats()["duplicateBookings"] == 0


def test_a_worker_killed_mid_upload_leaves_every_receipt_once(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Callable[..., Any],
    erp_sim: Callable[..., RunningErpSimulator],
) -> None:
    """On the direct path (HTTP, no limits), a worker SIGKILLed (its whole process group) while
    the ERP holds its upload's answer:
    the message comes back, the entry's post and upload are replays, each receipt stored once."""
    sim_state.receipts.configure(size=1500)
    erp = erp_sim()
    erp.state.attachments.configure({"hold": 30.0})
    job_id = sim_state.add_job(JobSpec(items=6, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    victim = start_worker("consumers", ITEMS_QUEUE, **http_env(erp))
    wait_for(lambda: erp.state.attachments.uploads >= 1, timeout=30, what="the first upload")
    signal_group(victim, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    erp.state.attachments.configure({"hold": 0.0})
    start_worker("consumers", ITEMS_QUEUE, **http_env(erp))
    assert await_end(sim_state, rdb, job_id, timeout=90) == "completed"
    view = erp.state.attachments.view()
    planned = [i.accounting_entry_id for i in sim_state.items(job_id)]
    print(
        f"receipts: stored={len(view['data'])} uploads={view['uploads']} "
        f"replays={view['replays']} recovered in {time.monotonic() - killed_at:.1f} s"
    )
    assert stored_per_entry(erp) == dict.fromkeys(planned, 1)
    assert view["replays"] >= 1  # the killed worker's upload, sent again with its key
    assert erp.state.stats()["duplicateBookings"] == 0
    assert httpx.get(f"{erp.url}/_sim/attachments", timeout=5).json()["uploads"] == view["uploads"]
