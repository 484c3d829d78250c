"""Retention against a real Redis: closing finished jobs, fencing counters that expire, purge,
and retried item messages that keep their short reprs."""

from __future__ import annotations

import json
import random
import sqlite3
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Retry
from sqlalchemy.exc import IntegrityError

from consumers.closing import Closer
from consumers.erp import Entry
from consumers.erp_sql import SqlJournal
from consumers.payloads import PayloadCache
from contract.celery_app import make_app
from contract.dead_letters import park, parked
from contract.errors import LeaseLost, TransientUpstreamError
from contract.keys import (
    ACTIVE_JOBS_KEY,
    CLOSING_KEY,
    KombuKeys,
    dropped_keys,
    fence_key,
    job_keys,
    lease_key,
    marks_key,
    payloads_key,
    placed_key,
    progress_key,
    reported_key,
    results_key,
)
from contract.lease import Leases
from contract.ledger import Ledger
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import short_repr
from devtools.simulator import JobSpec, SimState
from devtools.simulator.payloads import export_item
from pleo.client import PleoClient, make_http_client
from pleo.final_event import record_final
from producer.components import produce
from producer.purge import purge_job

pytestmark = pytest.mark.integration
DEDUP_MS = 3600 * 1000


def finished_job(rdb: redis.Redis, job_id: str) -> Ledger:
    """A job as the producer and the workers leave it at its final event (two entries)."""
    ledger = Ledger(rdb, lease_ttl=1.0, dedup_ttl=3600)
    with ledger.held(job_id, wait=0) as lease:
        ledger.start_run(job_id, lease.fence)
    outcome = json.dumps({"accountingEntryId": "e1", "status": "successful", "externalId": "JE-1"})
    with rdb.pipeline(transaction=True) as pipe:
        pipe.hset(marks_key(job_id), mapping={"e1": "p", "e2": "p"})
        pipe.hset(placed_key(job_id), mapping={"e1": "[0,2,null,null]", "e2": "[1,2,null,null]"})
        pipe.hset(results_key(job_id), mapping={"e1": outcome, "e2": outcome})
        pipe.sadd(reported_key(job_id), "e1", "e2")
        pipe.hset(payloads_key(job_id), mapping={"e1": '{"note": "Team lunch"}'})
        for key in (marks_key, placed_key, results_key, reported_key, payloads_key):
            pipe.pexpire(key(job_id), DEDUP_MS)
        pipe.execute()
    record_final(rdb, job_id, "completed", ttl_ms=DEDUP_MS)
    return ledger


def present(rdb: redis.Redis, job_id: str) -> dict[str, int]:
    """The job's keys that exist, with their PTTL."""
    return {key: rdb.pttl(key) for key in job_keys(job_id) if rdb.exists(key)}


def test_final_event_drops_payloads_and_closing_calls_the_hook_first_and_retries(
    rdb: redis.Redis,
) -> None:
    """Payloads go at the final event; closing runs the hook on intact records, retries on error."""
    job_id = str(uuid.uuid4())
    finished_job(rdb, job_id)
    assert rdb.exists(payloads_key(job_id)) == 0
    assert rdb.zscore(CLOSING_KEY, job_id) is not None
    assert rdb.zscore(ACTIVE_JOBS_KEY, job_id) is None
    intact = present(rdb, job_id)
    seen: list[dict[str, int]] = []

    def before_retention(closing: str) -> None:
        assert closing == job_id
        seen.append(present(rdb, job_id))
        if len(seen) == 1:
            raise RuntimeError("the audit sink is down")

    closer = Closer(
        rdb, retention=600, leases=Leases(rdb, ttl=5), before_retention=before_retention
    )
    assert closer.step() == []
    assert closer.waiting() == [job_id]
    assert present(rdb, job_id).keys() == intact.keys()
    assert closer.step() == [job_id]
    # Both calls saw every record with its running expiry (dedup TTL, not yet retention).
    assert [set(s) for s in seen] == [set(intact)] * 2
    assert all(ttl > 600_000 for s in seen for ttl in s.values())
    kept = present(rdb, job_id)
    assert set(kept) == {
        progress_key(job_id),
        marks_key(job_id),
        results_key(job_id),
        *(k for k in job_keys(job_id) if k.endswith((":items", ":final", ":fence"))),
    }
    assert all(0 < ttl <= 600_000 for ttl in kept.values()), kept
    assert closer.waiting() == []
    assert closer.step() == []
    assert len(seen) == 2


def test_retention_zero_deletes_records_but_keeps_a_live_lease_fence(rdb: redis.Redis) -> None:
    """Retention 0 deletes the closed job's records; a lease still held keeps its fence."""
    job_id = str(uuid.uuid4())
    ledger = finished_job(rdb, job_id)
    flush = ledger.acquire(job_id, wait=0, name="flush")
    assert Closer(rdb, retention=0, leases=Leases(rdb, ttl=5)).step() == [job_id]
    left = present(rdb, job_id)
    assert set(left) == {flush.key, flush.fence_key}
    assert 0 < left[flush.fence_key] <= left[flush.key] + 50
    assert [key for key in dropped_keys(job_id) if rdb.exists(key)] == []


def test_closing_and_purge_delete_the_jobs_parked_messages(rdb: redis.Redis) -> None:
    """A parked message carries its export item: it goes when its job is closed, or purged."""
    closed, purged, other = (str(uuid.uuid4()) for _ in range(3))
    finished_job(rdb, closed)
    for job_id in (closed, purged, other):
        kwargs = {"schema": 9, "job_id": job_id, "export_item": {"note": "a supplier's name"}}
        for task in ("t1", "t2"):
            park(rdb, kwargs, reason="schema 9", task_id=task, worker="w", ttl=3600)
    assert Closer(rdb, retention=600, leases=Leases(rdb, ttl=5)).step() == [closed]
    assert [p.job_id for p in parked(rdb, closed)] == []
    gone = purge_job(rdb, purged, kombu=KombuKeys(), queues=(), force=False)
    assert gone.parked == 2
    assert [p.job_id for p in parked(rdb, purged)] == []
    assert sorted(p.task_id for p in parked(rdb, other)) == ["t1", "t2"]


def test_fencing_counters_expire_and_a_restarted_counter_still_fences(rdb: redis.Redis) -> None:
    """A fence that expired restarts at 1, and the old holder still writes nothing."""
    ledger = Ledger(rdb, lease_ttl=1.0, dedup_ttl=3600)
    old = ledger.acquire("job-a", wait=0)
    assert 0 < rdb.pttl(fence_key("job-a")) <= DEDUP_MS
    rdb.pexpire(fence_key("job-a"), 5000)
    assert ledger.renew(old)
    assert rdb.pttl(fence_key("job-a")) > 5000  # every renewal refreshes the counter too
    # A month later both are gone (old's holder froze, say) and a new run starts the count again.
    rdb.delete(lease_key("job-a"), fence_key("job-a"))
    new = ledger.acquire("job-a", wait=0)
    assert new.fence == old.fence == 1
    assert new.token != old.token
    assert not ledger.renew(old)
    with pytest.raises(LeaseLost):
        ledger.publish_batch(old, "queue", [("e1", b"message", "[0,1,null,null]")])
    assert rdb.llen("queue") == 0
    assert ledger.renew(new)


def test_purge_refuses_a_busy_job_then_force_removes_its_messages_and_records(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, cli_in_process: Any
) -> None:
    """A published job: refused (exit 2, nothing gone); --force removes it; others untouched."""
    busy, other = (sim_state.add_job(JobSpec(items=n, seed=n)) for n in (30, 5))
    for job_id in (busy, other):
        produce(job_id, settings=settings, app=make_app(settings))
    others = present(rdb, other)
    before = {key: rdb.type(key) for key in rdb.scan_iter()}
    refused = cli_in_process("purge", busy)
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1
    assert "is busy (it is still active, 30 of its messages are queued" in refused.stderr
    assert "--force" in refused.stderr
    assert {key: rdb.type(key) for key in rdb.scan_iter()} == before

    # One message taken by a worker, as kombu's Redis transport records it (BRPOP, then unacked).
    taken = rdb.rpop(ITEMS_QUEUE)
    assert taken is not None
    tag = json.loads(taken)["properties"]["delivery_tag"]
    kombu = KombuKeys()
    rdb.hset(kombu.unacked, tag, json.dumps([json.loads(taken), "", ITEMS_QUEUE]))
    rdb.zadd(kombu.unacked_index, {tag: 1.0})
    forced = cli_in_process("purge", busy, "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    summary = json.loads(forced.stdout)
    assert summary["queued_messages"] == 29
    assert summary["unacked_messages"] == 1
    assert rdb.exists(kombu.unacked, kombu.unacked_index) == 0
    assert summary["keys"] >= 4  # progress, marks, placed, fence at least
    assert [k for k in rdb.scan_iter() if busy.encode() in k] == []
    assert [m for m in rdb.lrange(ITEMS_QUEUE, 0, -1) if busy.encode() in m] == []
    assert rdb.llen(ITEMS_QUEUE) == 5
    assert rdb.zscore(ACTIVE_JOBS_KEY, busy) is None
    assert present(rdb, other).keys() == others.keys()

    closed = str(uuid.uuid4())
    finished_job(rdb, closed)
    Closer(rdb, retention=600, leases=Leases(rdb, ttl=5)).step()
    done = cli_in_process("purge", closed)
    assert done.exit_code == 0, done.stderr
    assert (
        done.stdout.strip()
        == f"purged export job {closed}: 6 keys, 0 queued, 0 unacked and 0 parked messages"
    )
    assert present(rdb, closed) == {}
    assert cli_in_process("purge", "42; DROP").exit_code == 2


def test_a_retried_item_message_keeps_its_short_kwargsrepr(
    settings: Settings, rdb: redis.Redis
) -> None:
    """A retry sent through Celery's real retry carries the short repr, not the payload's."""
    from consumers.tasks import app, export_item, retry_item

    kwargs = {
        "schema": 1,
        "job_id": str(uuid.uuid4()),
        "company_id": None,
        "accounting_entry_id": str(uuid.uuid4()),
        "sequence": 3,
        "total": 9,
        "status_at_fetch": "pending",
        "booked_at": None,
        "export_item": {"note": "Client dinner", "supplier": {"name": "Cafe Norden"}},
    }
    app.conf.broker_url = settings.broker_url
    # The request a worker would hand the task (``called_directly=False``: not an eager call).
    export_item.push_request(
        id=str(uuid.uuid4()), kwargs=kwargs, retries=0, delivery_info={}, called_directly=False
    )
    try:
        with pytest.raises(Retry):
            raise retry_item(export_item, RuntimeError("ERP down"), 30)
    finally:
        export_item.pop_request()
    (message,) = rdb.lrange(ITEMS_QUEUE, 0, -1)
    headers = json.loads(message)["headers"]
    assert headers["kwargsrepr"] == short_repr(kwargs)
    assert headers["argsrepr"] == "()"
    assert b"Cafe Norden" not in message.replace(b"\\", b"")


def test_a_journal_error_carries_no_payload_value(tmp_path: Path) -> None:
    """A database error while booking (logged with its traceback) names no bound value."""
    path = tmp_path / "journal.sqlite3"
    entry_id = str(uuid.uuid4())
    rng = random.Random(3)
    booked = datetime(2026, 3, 1, tzinfo=UTC)
    payload = export_item(
        rng, entry_id, str(uuid.uuid4()), booked, with_account=True, vendor_based=False
    )
    payload["note"] = "Dinner with Ada at Cafe Norden"
    with SqlJournal(f"sqlite:///{path}") as journal:
        assert journal.find(entry_id) is None  # the tables exist now
        with sqlite3.connect(path) as raw:
            raw.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON journal_entries "
                "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
        entry = Entry(entry_id, str(uuid.uuid4()), None, 0, payload["date"], payload)
        with pytest.raises(IntegrityError) as caught:
            journal.post(entry)
    shown = "".join(traceback.format_exception(caught.value))
    assert "refused by a trigger" in shown
    assert "parameters hidden" in shown
    assert "Cafe Norden" not in shown


def test_a_payload_reader_writes_nothing_once_the_job_has_its_final_event(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A data layer read racing the final event leaves no export item behind; the item retries."""
    job_id = sim_state.add_job(JobSpec(items=30, status="in_progress"))
    entry_id = sim_state.export_items(job_id)[0]["accountingEntryId"]
    record_final(rdb, job_id, "failed", ttl_ms=DEDUP_MS)
    with make_http_client(settings) as http:
        cache = PayloadCache(rdb, PleoClient(http, settings), dedup_ttl=3600)
        with pytest.raises(TransientUpstreamError, match="finished while its data layer"):
            cache.get(job_id, entry_id)
    assert rdb.exists(payloads_key(job_id)) == 0
