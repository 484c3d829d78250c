"""End-to-end rate: items posted to the SQL journal per second with 1 and 2 ERP worker processes.

Runs the producer in-process against the simulator (real HTTP on loopback) and a real Redis, then
starts `celery -A consumers worker -c W` and times from the first message taken off the queue to
the job's final event. Usage: ``python -m bench.e2e [--items 10000] [--quick] [--redis URL]``.
The Redis database given is emptied before each run and at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis

from bench.common import DEFAULT_REDIS, ROOT, TOKEN, own_redis, print_table, rate, worker_env
from consumers.erp_sql import SqlJournal
from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState, start_in_thread
from producer.components import produce


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
    """Post one job's items with 1, then 2, ERP worker processes and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--items", type=int, default=10_000, help="items in each job")
    parser.add_argument("--quick", action="store_true", help="a 2,000-item job")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="a Redis database to empty and use")
    args = parser.parse_args()
    items = 2_000 if args.quick else args.items
    base = Settings(redis_url=args.redis, broker_url=args.redis, api_token=TOKEN, page_size=1000)
    rows: list[tuple[int, int, float]] = []
    with own_redis(args.redis), tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            seconds, posted = one_run(base, items, workers, Path(tmp))
            if posted != items:
                raise SystemExit(f"{workers} worker(s) posted {posted} entries, not {items}")
            rows.append((workers, posted, seconds))
    single = rows[0][1] / rows[0][2]
    print_table(
        f"ERP workers, SQLite journal: {items:,} items posted, first take to final event",
        ["worker processes", "posted", "seconds", "items/s", "vs 1 process"],
        [
            [
                str(w),
                f"{posted:,}",
                f"{seconds:.1f}",
                rate(posted, seconds),
                f"{posted / seconds / single:.2f}x",
            ]
            for w, posted, seconds in rows
        ],
        ["Each journal was checked to hold exactly one entry per item."],
    )


if __name__ == "__main__":
    main()
