"""``write_manifest`` on the edges of what Redis recorded, and ``pleo-export report``'s refusals:
bad input (exit 2), no manifest (exit 3), a sink that cannot be reached (exit 4)."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from consumers.audit import write_manifest
from consumers.audit_sinks import open_sink
from consumers.audit_sql import SqlManifestSink, manifest_entries, manifest_jobs
from consumers.erp_sql import engine_url, journal_engine
from contract.keys import attempts_key, items_key, placed_key, reported_key, results_key
from contract.manifest import AuditSinkUnavailable, JobNotFinished, RecordsIncomplete
from contract.message import placement
from contract.settings import Settings
from tests.conftest import need_service, with_settings
from tests.support.local import free_port

pytestmark = pytest.mark.integration
Cli = Callable[..., CompletedProcess[str]]
PG_URL = os.environ.get("POSTGRES_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")


def one_sentence(proc: Any, code: int, *words: str) -> None:
    """``proc`` (a subprocess or click's result) exited ``code`` with one line on stderr."""
    seen = proc.returncode if isinstance(proc, CompletedProcess) else proc.exit_code
    assert seen == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def recorded_job(rdb: redis.Redis, *, final: bool = True) -> tuple[str, list[str]]:
    """A job's records as the workers leave them: published out of plan order, one entry
    booked, one refused by the ERP, one dropped after Pleo refused it five times, one never
    posted (the job failed first). Its id and entries in plan order."""
    job_id = str(uuid.uuid4())
    entries = [str(uuid.UUID(int=n + 1)) for n in range(4)]
    for sequence in (3, 0, 2, 1):
        rdb.hset(placed_key(job_id), entries[sequence], placement(sequence, 4, "pending", None))
    booked = {"status": "successful", "externalId": "JE-000007", "recordedAt": 1764579600}
    refused = {
        "status": "failed",
        "failureReasonType": "missing_configuration",
        "failureReason": "The entry has no expense account.",
    }
    rdb.hset(results_key(job_id), entries[0], json.dumps(booked | {"reportedAt": 1764579602}))
    rdb.hset(results_key(job_id), entries[1], json.dumps(refused | {"erpAttempts": 3}))
    rdb.hset(results_key(job_id), entries[2], json.dumps(booked | {"externalId": "JE-000008"}))
    rdb.sadd(reported_key(job_id), entries[0], entries[1])
    rdb.hset(attempts_key(job_id), entries[2], 5)
    rdb.hset(items_key(job_id), mapping={"report_dropped": 1, "successful": 2, "failed": 1})
    if final:
        rdb.hset(items_key(job_id), mapping={"final_event": "failed", "final_event_at": "T"})
    return job_id, entries


def test_the_manifest_keeps_plan_order_and_every_fate(
    settings: Settings, rdb: redis.Redis, tmp_path: Path
) -> None:
    """Plan order whatever the publish order; booked, refused, dropped, never posted; counts."""
    job_id, entries = recorded_job(rdb)
    sink = with_settings(settings, audit_sink=f"file://{tmp_path}")
    header = write_manifest(rdb, job_id, sink)
    stored = open_sink(sink).read(job_id)
    assert stored is not None
    assert [e.accounting_entry_id for e in stored.entries] == entries
    fates = [(e.outcome, e.external_id, e.reported, e.report_attempts) for e in stored.entries]
    assert fates == [
        ("successful", "JE-000007", True, 1),
        ("failed", None, True, 1),
        ("successful", "JE-000008", False, 5),
        ("none", None, False, 0),
    ]
    assert stored.entries[1].failure_reason == "The entry has no expense account."
    # Tries of the message as the worker recorded them; None where nothing was recorded.
    assert [e.erp_attempts for e in stored.entries] == [1, 3, 1, None]
    assert (stored.entries[0].recorded_at, stored.entries[0].reported_at) == (
        "2025-12-01T09:00:00Z",
        "2025-12-01T09:00:02Z",
    )
    assert stored.entries[1].recorded_at is None
    assert (header.entries, header.successful, header.failed, header.no_outcome) == (4, 2, 1, 1)
    assert (header.reported, header.report_dropped, header.final_event) == (2, 1, "failed")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_writers_racing_on_one_job_store_one_manifest(
    settings: Settings, rdb: redis.Redis, database: str
) -> None:
    """Four writers of one job at once, twice over: one header row, one row per entry."""
    url = settings.erp_database_url
    if database == "postgresql":
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        except OSError:
            need_service("PostgreSQL on 127.0.0.1:5432")
        url = PG_URL
    job_id, entries = recorded_job(rdb)
    target = with_settings(settings, erp_database_url=url)

    def write(start: threading.Barrier) -> None:
        start.wait(timeout=10)
        write_manifest(rdb, job_id, target)

    with SqlManifestSink(url) as sink:
        sink.drop_tables()
        try:
            for _ in range(2):
                start = threading.Barrier(4)
                with ThreadPoolExecutor(max_workers=4) as pool:
                    for done in [pool.submit(write, start) for _ in range(4)]:
                        done.result(timeout=30)
            stored = sink.read(job_id)
            assert stored is not None
            assert [e.accounting_entry_id for e in stored.entries] == entries
            engine = journal_engine(engine_url(url))
            with engine.connect() as conn:
                counts = [
                    conn.execute(select(func.count()).select_from(table)).scalar()
                    for table in (manifest_jobs, manifest_entries)
                ]
            engine.dispose()
            assert counts == [1, len(entries)]
        finally:
            sink.drop_tables()


def test_no_manifest_before_the_final_event_and_a_sink_away_is_retryable(
    settings: Settings, rdb: redis.Redis, tmp_path: Path
) -> None:
    """Before the final event: JobNotFinished; outcomes without their plan: RecordsIncomplete;
    a folder or database not there: the typed error the caller retries on, password hidden."""
    unfinished, _ = recorded_job(rdb, final=False)
    with pytest.raises(JobNotFinished):
        write_manifest(rdb, unfinished, settings)
    unplaced, entries = recorded_job(rdb)
    rdb.hdel(placed_key(unplaced), entries[1])
    with pytest.raises(RecordsIncomplete, match="1 entry whose plan placement is gone"):
        write_manifest(rdb, unplaced, settings)
    job_id, _ = recorded_job(rdb)
    gone = with_settings(settings, audit_sink=f"file://{tmp_path / 'gone'}")
    with pytest.raises(AuditSinkUnavailable):
        write_manifest(rdb, job_id, gone)
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{free_port()}/audit"
    with pytest.raises(AuditSinkUnavailable) as down:
        write_manifest(rdb, job_id, with_settings(settings, erp_database_url=url))
    assert "s3cret-pw" not in down.value.message
    assert "***" in down.value.message


def test_report_refuses_with_one_sentence_and_its_exit_code(
    cli: Cli, cli_in_process: Any, tmp_path: Path
) -> None:
    """Bad job id or flags or sink: 2; no manifest: 3 (also as JSON); sink unreachable: 4."""
    job_id = str(uuid.uuid4())
    one_sentence(cli("report", "not-a-job"), 2, "Job id 'not-a-job' is not a UUID")
    absent = cli("report", job_id, "--json", PLEO_AUDIT_SINK=f"file://{tmp_path}")
    one_sentence(absent, 3, f"No audit manifest of job {job_id}", str(tmp_path))
    failure = json.loads(absent.stdout)
    assert (failure["exit_code"], failure["error_type"]) == (3, "ManifestNotFound")

    one_sentence(cli_in_process("report", job_id, "--json", "--csv"), 2, "--json and --csv")
    bad_sink = cli_in_process("report", job_id, PLEO_AUDIT_SINK="s3://bucket")
    one_sentence(bad_sink, 2, "PLEO_AUDIT_SINK must be 'erp' or a file:///folder URL")
    # A journal database with no manifest tables yet: none written, not an error of the sink.
    one_sentence(cli_in_process("report", job_id), 3, "No audit manifest")
    gone = cli_in_process("report", job_id, PLEO_AUDIT_SINK=f"file://{tmp_path / 'gone'}")
    one_sentence(gone, 4, "does not exist")
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{free_port()}/audit"
    down = cli_in_process("report", job_id, ERP_DATABASE_URL=url)
    one_sentence(down, 4, "cannot be reached now")
    assert "s3cret-pw" not in down.stderr
