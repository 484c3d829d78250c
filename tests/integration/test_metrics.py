"""The scrape-time gauges read the active jobs from real Redis; the worker endpoint serves them.

Each scrape is parsed with the library's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contract.celery_app import make_app
from contract.job_gauges import STATES, ActiveJobsCollector
from contract.keys import ACTIVE_JOBS_KEY, final_key
from contract.ledger import Ledger
from contract.metrics_endpoint import MetricsServer, remove_stale_files, render
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from contract.states import JobState
from devtools.simulator import JobSpec, SimState
from pleo.activity import PleoActivity
from producer.components import produce
from tests.support.local import free_port, worker_log

pytestmark = pytest.mark.integration

# Far enough ahead of the real clock that records stamped in real time are older than any
# time the tests set relative to it.
NOW = time.time() + 1_000_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def active_job(
    rdb: redis.Redis,
    *,
    state: str | None,
    requested_ago: float,
    acted_ago: float | None = None,
    expires_in: int = 3600,
) -> str:
    """A job in the index with a progress record in ``state`` (None: no record yet)."""
    job_id = str(uuid.uuid4())
    rdb.zadd(ACTIVE_JOBS_KEY, {job_id: NOW - requested_ago})
    if state is not None:
        ledger = Ledger(rdb, lease_ttl=10, dedup_ttl=3600)
        ledger.record(job_id, state=state, expires_in=expires_in)
    if acted_ago is not None:
        PleoActivity(rdb, dedup_ttl=3600).touch(job_id, NOW - acted_ago)
    return job_id


def test_active_job_gauges_count_states_age_and_the_nearest_expiry(rdb: redis.Redis) -> None:
    """States are counted from the index only, ended jobs left out, the nearest expiry chosen."""
    active_job(rdb, state=JobState.FETCHING, requested_ago=30, acted_ago=20)
    active_job(rdb, state=JobState.ENQUEUED, requested_ago=4000, acted_ago=3000)
    active_job(rdb, state=JobState.ENQUEUED, requested_ago=100, acted_ago=50, expires_in=600)
    active_job(rdb, state=None, requested_ago=5)
    active_job(rdb, state="from-a-newer-release", requested_ago=5)
    active_job(rdb, state=JobState.FAILED, requested_ago=9000)
    finished = active_job(rdb, state=JobState.ENQUEUED, requested_ago=9000)
    rdb.set(final_key(finished), "completed")
    rdb.set("pleo-export:job:not-in-the-index:progress", "ignored")  # never scanned

    registry = CollectorRegistry()
    registry.register(ActiveJobsCollector(rdb, clock=lambda: NOW))
    got = samples(generate_latest(registry).decode())

    by_state = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "pleo_export_active_jobs"}
    assert by_state == {
        **dict.fromkeys(STATES, 0.0),
        "fetching": 1.0,
        "enqueued": 2.0,
        "requested": 1.0,
        "unknown": 1.0,
    }
    assert got[("pleo_export_ledger_up", ())] == 1.0
    assert got[("pleo_export_oldest_active_job_age_seconds", ())] == pytest.approx(4000)
    # 600 - 50 = 550 s left beats 3600 - 3000 = 600 s; the job with no clock is left out.
    assert got[("pleo_export_active_job_expiry_seconds", ())] == pytest.approx(550)
    # The job last acted on 3,000 s before NOW is the quietest (the progress records were written
    # in real time, long before NOW, so their own stamps are older than every other sign).
    assert got[("pleo_export_active_job_idle_seconds", ())] == pytest.approx(3000)


def test_a_scrape_with_redis_down_says_so_and_still_answers() -> None:
    """Redis unreachable: the scrape has ledger_up 0 and no active-job gauges, never an error."""
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    got = samples(render(dead)[0].decode())
    assert got[("pleo_export_ledger_up", ())] == 0.0
    assert not [k for k in got if k[0] == "pleo_export_active_jobs"]
    assert got[("pleo_export_producer_runs_total", (("outcome", "enqueued"),))] >= 0


@pytest.fixture
def served(rdb: redis.Redis) -> Iterator[str]:
    """A MetricsServer on a free port, polled by a thread as the worker's timer would."""
    server = MetricsServer("127.0.0.1", 0, lambda: render(rdb))
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.poll()
            time.sleep(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    stop.set()
    thread.join(5)
    server.close()


def test_worker_endpoint_serves_metrics_and_nothing_else(served: str, rdb: redis.Redis) -> None:
    """GET /metrics answers the text format, a silent client holding no scrape up; else 404."""
    active_job(rdb, state=JobState.PUBLISHING, requested_ago=1)
    idle = socket.create_connection(("127.0.0.1", int(served.rsplit(":", 1)[1])))
    answer = httpx.get(f"{served}/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    got = samples(answer.text)
    assert got[("pleo_export_active_jobs", (("state", "publishing"),))] == 1.0
    assert httpx.get(f"{served}/other", timeout=5).status_code == 404
    idle.close()


def test_stale_files_of_gone_processes_are_removed(tmp_path: Path) -> None:
    """Only files of processes that no longer run go; a live (or unparseable) one stays."""
    for name in ("counter_11.db", "histogram_12.db", "counter_13.db", "notes.db"):
        (tmp_path / name).write_bytes(b"")
    removed = remove_stale_files(str(tmp_path), alive=lambda pid: pid == 13)
    assert removed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_13.db", "notes.db"]


@pytest.mark.worker
def test_a_prefork_worker_without_the_multiprocess_dir_refuses_to_serve_metrics(
    start_worker: Any, tmp_path: Path
) -> None:
    """PLEO_METRICS_PORT without PROMETHEUS_MULTIPROC_DIR would count the main process only."""
    worker = start_worker("producer", PRODUCER_QUEUE, PLEO_METRICS_PORT=str(free_port()))
    assert worker.wait(timeout=60) == 2
    assert "PROMETHEUS_MULTIPROC_DIR is not" in worker_log(tmp_path)


def counted(name: str, **labels: str) -> float:
    """This process's count of ``name`` (the test process keeps the default registry)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_rerun_counts_its_entries_as_already_published(
    settings: Settings, sim_state: SimState
) -> None:
    """Run a job twice in this process: published once, then every entry already published."""
    job_id = sim_state.add_job(JobSpec(items=250, item_statuses={"pending": 1.0}))
    names = [
        ("pleo_export_entries_published_total", {}),
        ("pleo_export_entries_already_published_total", {}),
        ("pleo_export_producer_runs_total", {"outcome": "enqueued"}),
        ("pleo_export_pages_read_total", {"layer": "control"}),
        ("pleo_export_entries_read_total", {"layer": "data"}),
        ("pleo_export_producer_run_duration_seconds_count", {}),
    ]
    before = [counted(name, **labels) for name, labels in names]
    app = make_app(settings)
    for _ in range(2):
        produce(job_id, settings=settings, app=app)
    after = [counted(name, **labels) for name, labels in names]
    pages = math.ceil(250 / settings.page_size)
    deltas = [b - a for a, b in zip(before, after, strict=True)]
    assert deltas == [250, 250, 2, 2 * pages, 2 * 250, 2]
