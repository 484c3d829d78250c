"""End-to-end rate: items posted to the SQL journal per second with 1 and 2 ERP worker processes.

Runs the producer in-process against the simulator (real HTTP on loopback) and a real Redis, then
starts `celery -A consumers worker -c W` and times from the first message taken off the queue to
the job's final event. Usage: `python bench/e2e.py [--items 10000] [--redis redis://127.0.0.1:6379/12]`.
The Redis database given is emptied before each run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis

from consumers.erp_sql import SqlJournal
from producer.celery_app import make_app
from producer.components import produce
from producer.config import ITEMS_QUEUE, Settings
from producer.simulator import JobSpec, SimState, start_in_thread

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env.update(
        PLEO_API_URL=settings.api_url,
        PLEO_API_TOKEN=TOKEN,
        REDIS_URL=settings.redis_url,
        ERP_DATABASE_URL=settings.erp_database_url,
        PLEO_REPORT_INTERVAL="0.5",
        PYTHONPATH=str(ROOT),
    )
    return env


def one_run(base: Settings, items: int, workers: int, workdir: Path) -> tuple[float, int]:
    """Seconds from worker ready to the job's final event, and the journal's entry count."""
    redis.Redis.from_url(base.redis_url).flushdb()
    state = SimState(token=TOKEN, max_page_size=1000)
    sim = start_in_thread(state)
    journal_url = f"sqlite:///{workdir / f'journal-{workers}.sqlite3'}"
    settings = replace(base, api_url=sim.url, erp_database_url=journal_url)
    try:
        job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
        produce(job_id, settings=settings, app=make_app(settings))
        log_path = workdir / f"worker-{workers}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "consumers",
                    "worker",
                    "-Q",
                    ITEMS_QUEUE,
                    "-c",
                    str(workers),
                    "--without-mingle",
                    "--without-gossip",
                    "-l",
                    "WARNING",
                ],
                env=worker_env(settings),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        queue = redis.Redis.from_url(settings.redis_url)
        try:
            # The clock starts when the first message leaves the queue (worker start-up excluded).
            while queue.llen(ITEMS_QUEUE) >= items and proc.poll() is None:
                time.sleep(0.005)
            started = time.monotonic()
            deadline = started + 1800
            while state.jobs[job_id].status == "in_progress":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the job did not finish; see {log_path}")
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        with SqlJournal(journal_url) as journal:
            return elapsed, journal.entries_count()
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    base = Settings(redis_url=args.redis, broker_url=args.redis, api_token=TOKEN, page_size=1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            seconds, posted = one_run(base, args.items, workers, Path(tmp))
            rows.append((workers, posted, seconds, posted / seconds))
    baseline = rows[0][3]
    print(f"{'workers':>7} {'posted':>8} {'seconds':>8} {'items/s':>8} {'vs 1':>6}")
    for workers, posted, seconds, rate in rows:
        print(f"{workers:>7} {posted:>8} {seconds:>8.1f} {rate:>8.0f} {rate / baseline:>5.2f}x")


if __name__ == "__main__":
    main()
