"""The audit manifest of a real job, run to its final event by real ERP workers, checked against
what the journal booked and what the simulator was told; then stored in each sink and printed by
``pleo-export report`` in its three formats.

One pipeline run feeds every check (the manifest is built from Redis, the sinks only store it):
a job with entries the ERP refuses and item updates Pleo refuses once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from consumers.audit import write_manifest
from consumers.audit_sinks import open_sink
from consumers.audit_sql import SqlManifestSink, manifest_entries, manifest_jobs
from consumers.erp_sql import SqlJournal, engine_url, journal_engine
from contract.celery_app import make_app
from contract.keys import items_key, outbox_key, results_key
from contract.manifest import ENTRY_FIELDS, Manifest
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.store import redis_client
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.components import produce
from producer.status import job_status
from tests.conftest import env_for, need_service, wait_for, with_settings
from tests.support.local import worker_log

pytestmark = [pytest.mark.integration, pytest.mark.worker]
PG_URL = os.environ.get("POSTGRES_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
ITEMS = 300


def finished_job(settings: Settings, state: SimState, start_worker: Any) -> str:
    """A job run to ``completed_with_errors``: some entries refused by the ERP, some updates
    refused once by Pleo (every tenth of the first two PUTs); its id."""
    job_id = state.add_job(
        JobSpec(items=ITEMS, item_statuses={"pending": 1.0}, missing_account_ratio=0.05)
    )
    state.add_fault(FaultRule(endpoint="job_items_put", kind="item_errors", times=2))
    produce(job_id, settings=settings, app=make_app(settings))
    # The worker's closing step (which writes the manifest, then drops the records it is built
    # from) stays off for the test: the test writes the manifest itself, several times, and
    # compares what each sink holds. The closing step's own write is tested in test_retention.py.
    start_worker("consumers", ITEMS_QUEUE, concurrency=2, PLEO_CLOSE_INTERVAL="3600")
    wait_for(
        lambda: state.jobs[job_id].status == "completed_with_errors",
        timeout=90,
        what="the job to finish",
        explain=lambda: job_status(redis_client(settings.ledger_url), job_id),
    )
    # Pleo holds the event a moment before the worker that sent it records it (the manifest is
    # built from that record).
    wait_for(
        lambda: redis_client(settings.ledger_url).hget(items_key(job_id), "final_event"),
        timeout=10,
        what="the final event recorded",
    )
    return job_id


def without_write_time(manifest: Manifest) -> Manifest:
    return replace(manifest, header=replace(manifest.header, written_at=""))


def test_manifest_is_what_happened_in_every_sink_and_report_format(
    *,
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    cli: Any,
    tmp_path: Path,
) -> None:
    """Every entry once in plan order with the ERP's id, the refusal and the write-back attempts;
    stored alike in SQLite, PostgreSQL and a file; printed as a table, JSON and CSV."""
    job_id = finished_job(settings, sim_state, start_worker)
    header = write_manifest(rdb, job_id, settings)
    sink = open_sink(settings)
    manifest = sink.read(job_id)
    sink.close()
    assert manifest is not None
    assert manifest.header == header
    entries = manifest.entries

    # Every planned entry once, in plan order.
    items = {i.accounting_entry_id: i for i in sim_state.items(job_id)}
    assert len({e.accounting_entry_id for e in entries}) == len(entries) == ITEMS
    assert {e.accounting_entry_id for e in entries} == set(items)
    assert [e.sequence for e in entries] == list(range(ITEMS))
    # ... as the ERP booked it: the journal's id, posting time and plan position.
    with SqlJournal(settings.erp_database_url) as journal:
        booked = {row["accounting_entry_id"]: row for row in journal.journal()}
    successful = [e for e in entries if e.outcome == "successful"]
    failed = [e for e in entries if e.outcome == "failed"]
    assert len(successful) == len(booked)
    assert len(failed) == ITEMS - len(booked)
    assert 5 <= len(failed) <= 30
    for entry in successful:
        row = booked[entry.accounting_entry_id]
        assert (entry.external_id, entry.exported_at) == (row["external_id"], row["posted_at"])
        assert entry.sequence == row["sequence"]
    # ... and as Pleo was told: its item records hold the same ids and reasons.
    for entry in entries:
        item = items[entry.accounting_entry_id]
        assert (entry.outcome, entry.external_id) == (item.status, item.external_id)
        assert entry.failure_reason_type == item.failure_reason_type
        assert entry.failure_reason == item.failure_reason
    assert {e.failure_reason_type for e in failed} == {"missing_configuration"}
    assert all("expense account" in (e.failure_reason or "") for e in failed)
    # Write-back: all accepted at last; every refusal Pleo answered is one more attempt.
    # (The simulator records a faulted PUT without the updates it held back: the worker's log of
    # each refusal counts them.)
    refused = worker_log(tmp_path).count(f"report_item_refused job_id={job_id}")
    assert 2 <= refused <= 20
    assert all(e.reported for e in entries)
    assert sum(e.report_attempts - 1 for e in entries) == refused
    assert min(e.report_attempts for e in entries) == 1
    # Nothing made a worker retry a message: each outcome came at the first try.
    assert {e.erp_attempts for e in entries} == {1}
    assert "item_retry" not in worker_log(tmp_path)
    assert "erp_unreachable" not in worker_log(tmp_path)
    for entry in entries:
        assert entry.recorded_at is not None
        assert entry.reported_at is not None
        assert entry.recorded_at <= entry.reported_at
    # The header: ids, how and when the job ended, counts.
    event = next(e for e in sim_state.events(job_id) if e.event == "completed_with_errors")
    assert (header.job_id, header.final_event) == (job_id, "completed_with_errors")
    assert event.accepted
    assert header.final_event_at
    assert (header.entries, header.successful, header.failed) == (ITEMS, len(booked), len(failed))
    assert (header.no_outcome, header.reported, header.report_dropped) == (0, ITEMS, 0)
    # The recorded outcome's time stays in Redis: the update sent to Pleo never carries it.
    assert b"recordedAt" in next(iter(rdb.hvals(results_key(job_id))))
    assert not rdb.exists(outbox_key(job_id))

    # Written again: still one manifest, the same but for its write time.
    write_manifest(rdb, job_id, settings)
    with SqlManifestSink(settings.erp_database_url) as sql:
        again = sql.read(job_id)
        assert again is not None
        assert without_write_time(again) == without_write_time(manifest)
    engine = journal_engine(engine_url(settings.erp_database_url))
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(manifest_entries)).scalar()
        jobs = conn.execute(select(func.count()).select_from(manifest_jobs)).scalar()
    engine.dispose()
    assert (rows, jobs) == (ITEMS, 1)

    # PostgreSQL stores the same manifest.
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        need_service("PostgreSQL on 127.0.0.1:5432")
    with SqlManifestSink(PG_URL) as pg:
        pg.drop_tables()
        try:
            write_manifest(rdb, job_id, with_settings(settings, erp_database_url=PG_URL))
            write_manifest(rdb, job_id, with_settings(settings, erp_database_url=PG_URL))
            stored = pg.read(job_id)
            assert stored is not None
            assert without_write_time(stored) == without_write_time(manifest)
        finally:
            pg.drop_tables()

    # ... and so does a folder, one file per job, with no temporary file left behind.
    folder = tmp_path / "audit"
    folder.mkdir()
    file_sink = f"file://{folder}"
    for _ in range(2):
        write_manifest(rdb, job_id, with_settings(settings, audit_sink=file_sink))
    assert [p.name for p in folder.iterdir()] == [f"{job_id}.json"]
    on_file = Manifest.from_dict(json.loads((folder / f"{job_id}.json").read_text()))
    assert without_write_time(on_file) == without_write_time(manifest)

    # The report, from the sink and never from Redis: Redis emptied first.
    rdb.flushdb()
    shown = cli("report", job_id, PLEO_AUDIT_SINK=file_sink)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"job {job_id} (company {header.company_id or '-'})"
    assert f"{ITEMS} entries: {len(booked)} successful, {len(failed)} failed" in lines[2]
    for entry in failed[:3] + successful[:3]:
        row = next(line for line in lines if entry.accounting_entry_id in line)
        assert entry.outcome in row
        assert (entry.external_id or entry.failure_reason_type) in row

    as_json = cli("report", job_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert Manifest.from_dict(json.loads(as_json.stdout)) == again

    # Read as bytes: text mode would turn the CRLF line ends RFC 4180 asks for into LF.
    as_csv = subprocess.run(
        [sys.executable, "-m", "producer", "report", job_id, "--csv"],
        env=env_for(settings),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert as_csv.returncode == 0, as_csv.stderr
    text = as_csv.stdout.decode()
    assert text.count("\r\n") == text.count("\n") == ITEMS + 1
    table = list(csv.reader(io.StringIO(text, newline="")))
    assert table[0] == ["job_id", *ENTRY_FIELDS]
    assert [row[2] for row in table[1:]] == [e.accounting_entry_id for e in again.entries]
    assert {row[0] for row in table[1:]} == {job_id}
    reasons = {row[2]: row[ENTRY_FIELDS.index("failure_reason") + 1] for row in table[1:]}
    assert all(reasons[e.accounting_entry_id] == e.failure_reason for e in failed)
