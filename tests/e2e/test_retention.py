"""Retention end to end: no key of ours lives forever, and no payload field reaches Redis after a
job or any log line, at DEBUG everywhere.

Two small jobs run through real processes logging at DEBUG: one by ``pleo-export -vv run``
(payloads in the messages), one by ``pleo-export -vv enqueue`` and a producer worker with
``PLEO_ORDERING=entry_id`` (messages without payloads: the ERP worker caches the data layer in
``:payloads``); one ERP worker at ``-l DEBUG`` books both and closes them. Redis is scanned while
they run and after they are closed; every captured line is searched for the simulator's payload
values (notes, supplier and user names, receipt and item URLs, reconciliation ids, amounts).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.audit_sinks import open_sink
from contract.keys import CLOSING_KEY, dropped_keys, payloads_key, retained_keys
from contract.names import ITEMS_QUEUE, PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from tests.conftest import wait_for, with_settings

pytestmark = [pytest.mark.integration, pytest.mark.worker]

RETENTION = 3600
# kombu's own keys (contract/keys.py): the queues and unacked records empty themselves, and the
# binding sets are its routing table.
KOMBU_KEYS = {ITEMS_QUEUE, PRODUCER_QUEUE, "unacked", "unacked_index"}


def kombu_owned(key: str) -> bool:
    """Whether ``key`` is one of kombu's, which we neither expire nor touch."""
    return key in KOMBU_KEYS or key.startswith("_kombu.binding")


def immortal_keys(client: redis.Redis) -> list[str]:
    """Keys of ours with no expiry (TTL -1)."""
    found = []
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if not kombu_owned(key) and client.pttl(raw) == -1:
            found.append(key)
    return found


def payload_patterns(export_items: Iterable[dict[str, Any]]) -> dict[str, re.Pattern[bytes]]:
    """Distinctive values of the export items, each as a pattern to look for in bytes."""
    literal: set[str] = {"https://files.pleo.io/receipts/", "https://app.pleo.io/export/items"}
    amounts: set[int] = set()
    for item in export_items:
        literal.add(item["supplier"]["name"])
        literal.add(item["user"]["name"])
        literal.add(item["additionalInformation"]["reconciliationId"])
        if item["note"]:
            literal.add(item["note"])
        amounts.add(item["amount"]["inSupplierCurrency"]["value"])
    patterns = {value: re.compile(re.escape(value.encode())) for value in literal}
    for cents in amounts:
        # As JSON or a repr writes it, and as an amount in major units ("1234.56").
        patterns[f"amount {cents}"] = re.compile(
            rb"""["']value["']: %d\b|(?<![\d.])%d\.%02d(?![\d])"""
            % (cents, cents // 100, cents % 100)
        )
    return patterns


def leaks(blob: bytes, patterns: dict[str, re.Pattern[bytes]]) -> list[str]:
    """The payload values ``blob`` carries."""
    return sorted(name for name, pattern in patterns.items() if pattern.search(blob))


def redis_blobs(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) for every key name, value and decoded kombu message body in the database."""
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        kind = client.type(raw).decode()
        values: list[bytes] = [raw]
        if kind == "string":
            values.append(client.get(raw) or b"")
        elif kind == "hash":
            values += [part for pair in client.hgetall(raw).items() for part in pair]
        elif kind == "list":
            values += client.lrange(raw, 0, -1)
        elif kind == "set":
            values += client.smembers(raw)
        elif kind == "zset":
            values += client.zrange(raw, 0, -1)
        for value in values:
            yield key, value
            yield key, from_envelope(value)


def from_envelope(value: bytes) -> bytes:
    """A kombu envelope's decoded body (queued or unacked), else nothing."""
    try:
        envelope = json.loads(value)
    except ValueError:
        return b""
    if isinstance(envelope, list) and envelope:
        envelope = envelope[0]
    if isinstance(envelope, dict) and isinstance(envelope.get("body"), str):
        return base64.b64decode(envelope["body"])
    return b""


def finished(state: SimState, job_id: str) -> bool:
    return state.jobs[job_id].status in {"completed", "completed_with_errors"}


def test_payload_detector_finds_every_kind_of_value(sim_state: SimState) -> None:
    """The scan can fail: an export item's JSON and its formatted amount are both caught."""
    job_id = sim_state.add_job(JobSpec(items=3, seed=5))
    item = sim_state.export_items(job_id)[0]
    patterns = payload_patterns([item])
    found = leaks(json.dumps(item).encode(), patterns)
    assert found == sorted(patterns)
    cents = item["amount"]["inSupplierCurrency"]["value"]
    shown = f"amount={cents // 100}.{cents % 100:02d} DKK".encode()
    assert leaks(shown, patterns) == [f"amount {cents}"]
    assert leaks(b"job_id=42 took 0.123456s page=3", patterns) == []


@pytest.mark.timeout(180)
def test_debug_run_leaves_no_payload_in_logs_or_redis_and_no_key_forever(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    *,
    cli: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Producer and ERP worker at DEBUG: every key expires, and payloads leave Redis and logs."""
    ran = sim_state.add_job(JobSpec(items=40, seed=21, missing_account_ratio=0.1))
    queued = sim_state.add_job(JobSpec(items=40, seed=22))
    patterns = payload_patterns([*sim_state.export_items(ran), *sim_state.export_items(queued)])
    closing_env = {"PLEO_RETENTION": str(RETENTION), "PLEO_CLOSE_INTERVAL": "0.5"}

    done = cli("-vv", "run", ran)
    assert done.returncode == 0, done.stderr[-2000:]
    enqueued = cli("-vv", "enqueue", queued)
    assert enqueued.returncode == 0, enqueued.stderr[-2000:]
    (tmp_path / "run.err").write_text(done.stderr + enqueued.stderr)
    # Published, not yet booked: a job in flight keeps no key of ours forever.
    assert immortal_keys(rdb) == []
    assert rdb.llen(ITEMS_QUEUE) == 40

    by_id = with_settings(settings, ordering="entry_id")
    start_worker("producer", PRODUCER_QUEUE, settings_=by_id, loglevel="DEBUG", **closing_env)
    start_worker("consumers", ITEMS_QUEUE, loglevel="DEBUG", **closing_env)
    seen_in_flight: list[str] = []

    def both_closed() -> bool:
        # Looked at on every poll while the jobs run: keys are created and expired atomically.
        seen_in_flight.extend(immortal_keys(rdb))
        return (
            finished(sim_state, ran) and finished(sim_state, queued) and rdb.zcard(CLOSING_KEY) == 0
        )

    wait_for(both_closed, timeout=120, what="both jobs to finish and be closed")
    assert seen_in_flight == []
    assert immortal_keys(rdb) == []

    # What a closed job keeps: its retained records, expiring within the retention period.
    for job_id in (ran, queued):
        for key in retained_keys(job_id):
            assert 0 < rdb.pttl(key) <= RETENTION * 1000, key
        assert [key for key in dropped_keys(job_id) if rdb.exists(key)] == []
    assert rdb.exists(payloads_key(queued)) == 0
    # Closing wrote each job's audit manifest first, from the records it then let expire.
    sink = open_sink(settings)
    try:
        manifests = {job_id: sink.read(job_id) for job_id in (ran, queued)}
    finally:
        sink.close()
    for job_id, manifest in manifests.items():
        assert manifest is not None, job_id
        assert [entry.sequence for entry in manifest.entries] == list(range(40))
        assert {entry.outcome for entry in manifest.entries} <= {"successful", "failed"}
    logs = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("*.log")))
    assert b"payloads_cached job_id=" + queued.encode() in logs  # the cache was used, then gone

    stored = [
        f"{name} in {key}" for key, blob in redis_blobs(rdb) for name in leaks(blob, patterns)
    ]
    assert stored == []
    texts = {path.name: path.read_bytes() for path in sorted(tmp_path.glob("*.log"))}
    texts["run.err"] = (tmp_path / "run.err").read_bytes()
    logged = [
        f"{name} in {file}: {line[:160]!r}"
        for file, text in texts.items()
        for line in text.splitlines()
        for name in leaks(line, patterns)
    ]
    assert logged == []
    # The scan read real DEBUG output from every process.
    everything = b"\n".join(texts.values())
    assert everything.count(b"\n") > 300
    assert b"DEBUG" in texts["run.err"]
    assert b"page_fetched" in texts["run.err"]
    assert all(b"DEBUG" in texts[f"worker-{n}.log"] for n in (0, 1))
    assert b"job_closed job_id=" + ran.encode() in texts["worker-1.log"]
    # The pool's DEBUG line for each task is there, its arguments hidden (contract/log_filters.py).
    assert texts["worker-1.log"].count(b"TaskPool: Apply") >= 80
    assert b"kwargs:(hidden: task arguments are never logged)" in texts["worker-1.log"]
