"""End-to-end rate: items posted to the SQL journal per second with 1 and 2 ERP worker processes.

Runs the producer in-process against the simulator (real HTTP on loopback) and a real Redis, then
starts `celery -A consumers worker -c W` (through ``bench/worker_probe.py``, which clocks each
process's Redis and SQL calls) and times from the first message taken off the queue to the job's
final event. Every row is the median of ``--runs`` runs, for both journals (SQLite; PostgreSQL
when ``--postgres URL`` or ``BENCH_POSTGRES`` is given), both posting paths (governed: the
journal's declared batches of 500, posted by poster threads; direct: ``ERP_BATCH_SIZE=1``, one
entry per message) and, with ``--before DIR``, the worker code of another checkout (an older
commit, its dependencies installed in this virtualenv) side by side.

Usage: ``python -m bench.e2e [--items 10000] [--quick] [--redis URL] [--postgres URL]
[--before DIR] [--runs 3] [--paths governed,direct] [--processes 1,2] [--pools]`` (``--pools``
adds one-process rows of the new code with a prefetch of 8, the threads pool and the solo pool).
Each row's runs go round robin with the other rows of its journal, path and process count.
The Redis database given is emptied before each run and at the end;
the PostgreSQL database's two journal tables are dropped before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import redis

from bench.common import ROOT, TOKEN, bench_redis_url, own_redis, print_table, worker_env
from consumers.erp_sql import SqlJournal
from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState, start_in_thread
from producer.components import produce

PROBE = Path(__file__).resolve().parent / "worker_probe.py"


@dataclass(frozen=True)
class Run:
    """One run's figures: wall seconds, entries in the journal, and per-item costs."""

    seconds: float
    posted: int
    ours_rtt: float  # the ledger client's Redis round trips per item
    broker_rtt: float  # every other Redis round trip (kombu, events) per item
    ours_ms: float  # ms per item in the ledger client's Redis calls (all processes)
    broker_ms: float
    sql_ms: float
    busy_ms: float  # processes x wall / items: what one item costs a process
    cpu_ms: float  # CPU per item, every worker process (main and pool) together

    @property
    def rate(self) -> float:
        return self.posted / self.seconds


def _probe_totals(folder: Path) -> dict[str, float]:
    totals: dict[str, float] = {}
    for path in folder.glob("*.json"):
        for name, value in json.loads(path.read_text()).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def one_run(
    base: Settings,
    items: int,
    workers: int,
    workdir: Path,
    *,
    journal_url: str,
    env: dict[str, str],
) -> Run:
    """Post one job of ``items`` entries with ``workers`` pool processes; the run's figures."""
    redis.Redis.from_url(base.redis_url).flushdb()
    with SqlJournal(journal_url) as journal:
        journal.drop_tables()
    state = SimState(token=TOKEN, max_page_size=1000)
    sim = start_in_thread(state)
    settings = replace(base, api_url=sim.url, erp_database_url=journal_url)
    probes = Path(tempfile.mkdtemp(dir=workdir))
    try:
        job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
        produce(job_id, settings=settings, app=make_app(settings))
        log_path = workdir / f"worker-{workers}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, str(PROBE), str(probes), "-A", "consumers", "worker"),
                    *("-Q", ITEMS_QUEUE, "-c", str(workers), "--without-mingle"),
                    *("--without-gossip", "-l", "WARNING"),
                ],
                env={**worker_env(settings), **env},
                cwd=env.get("PYTHONPATH", ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        queue = redis.Redis.from_url(settings.redis_url)
        try:
            # The clock starts when the first message leaves the queue (worker start-up excluded).
            while queue.llen(ITEMS_QUEUE) >= items and proc.poll() is None:
                time.sleep(0.005)
            before = _probe_totals(probes)
            started = time.monotonic()
            deadline = started + 1800
            while state.jobs[job_id].status == "in_progress":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the job did not finish; see {log_path}")
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            time.sleep(0.3)  # the probes' last writes
            after = _probe_totals(probes)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        with SqlJournal(journal_url) as journal:
            posted = journal.entries_count()
    finally:
        sim.stop()

    def per_item(name: str, scale: float = 1.0) -> float:
        return (after.get(name, 0.0) - before.get(name, 0.0)) * scale / items

    return Run(
        seconds=elapsed,
        posted=posted,
        ours_rtt=per_item("redis_ours_n"),
        broker_rtt=per_item("redis_other_n"),
        ours_ms=per_item("redis_ours_s", 1000),
        broker_ms=per_item("redis_other_s", 1000),
        sql_ms=per_item("sql_s", 1000),
        busy_ms=workers * elapsed * 1000 / items,
        cpu_ms=per_item("cpu_s", 1000),
    )


def median_run(runs: list[Run]) -> Run:
    """The run of median rate (its per-item figures kept together with its rate)."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def main() -> None:
    """Post one job's items with 1, then 2, ERP worker processes and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--items", type=int, default=10_000, help="items in each job")
    parser.add_argument("--quick", action="store_true", help="a 2,000-item job")
    parser.add_argument(
        "--redis", default=bench_redis_url(), help="a Redis database to empty and use"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES") or None,
        help="a PostgreSQL database for the journal rows too (default: BENCH_POSTGRES)",
    )
    parser.add_argument("--before", type=Path, help="another checkout's worker code, side by side")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (the median is shown)")
    parser.add_argument(
        "--paths", default="governed,direct", help="posting paths: governed, direct or both"
    )
    parser.add_argument("--processes", default="1,2", help="worker process counts")
    parser.add_argument(
        "--pools",
        action="store_true",
        help="also the new code with a prefetch of 8, the threads pool (4) and the solo pool",
    )
    args = parser.parse_args()
    items = 2_000 if args.quick else args.items
    base = Settings(redis_url=args.redis, broker_url=args.redis, api_token=TOKEN, page_size=1000)
    # (row name, checkout, extra environment, worker options).
    codes: list[tuple[str, str, dict[str, str]]] = [("after", str(ROOT), {})]
    if args.before is not None:
        codes.insert(0, ("before", str(args.before.resolve()), {}))
    if args.pools:
        codes += [
            ("after, prefetch 8", str(ROOT), {"ERP_PREFETCH_MULTIPLIER": "8"}),
            ("after, -P threads -c 4", str(ROOT), {"PROBE_WORKER_ARGS": "-P threads -c 4"}),
            ("after, -P solo", str(ROOT), {"PROBE_WORKER_ARGS": "-P solo"}),
        ]
    paths = {"governed": {}, "direct": {"ERP_BATCH_SIZE": "1"}}
    rows: list[list[str]] = []
    with own_redis(args.redis), tempfile.TemporaryDirectory() as tmp:
        journals = [("SQLite", f"sqlite:///{Path(tmp) / 'journal.sqlite3'}")]
        if args.postgres:
            journals.append(("PostgreSQL", args.postgres))
        for journal_name, journal_url in journals:
            for path_name in args.paths.split(","):
                for workers in (int(w) for w in args.processes.split(",")):
                    # The pool comparison is of one process, on SQLite.
                    here = [
                        c for c in codes if not c[2] or (workers == 1 and journal_name == "SQLite")
                    ]
                    # Round robin (before, after, before, after, ...): a shared machine's load
                    # moves over minutes, so each row's runs are spread over the same minutes.
                    runs: dict[str, list[Run]] = {name: [] for name, _, _ in here}
                    for _ in range(args.runs):
                        for code_name, code, extra in here:
                            env = {**paths[path_name], **extra, "PYTHONPATH": code}
                            run = one_run(
                                base, items, workers, Path(tmp), journal_url=journal_url, env=env
                            )
                            if run.posted != items:
                                raise SystemExit(f"{run.posted} entries posted, not {items}")
                            runs[code_name].append(run)
                    for code_name, _, _ in here:
                        m = median_run(runs[code_name])
                        rest = m.busy_ms - m.ours_ms - m.broker_ms - m.sql_ms
                        rows.append(
                            [
                                f"{journal_name} {path_name} {workers}p {code_name}",
                                f"{statistics.median(r.rate for r in runs[code_name]):,.0f}",
                                f"{m.ours_rtt:.2f}",
                                f"{m.broker_rtt:.2f}",
                                f"{m.busy_ms:.2f}",
                                f"{m.cpu_ms:.2f}",
                                f"{m.ours_ms:.2f}",
                                f"{m.broker_ms:.2f}",
                                f"{m.sql_ms:.2f}",
                                f"{rest:.2f}",
                            ]
                        )
                        print(" | ".join(rows[-1]), flush=True)
    print_table(
        f"ERP workers: {items:,} items posted, first take to final event, median of {args.runs}",
        [
            "journal, path, processes, code",
            "items/s",
            "ledger RTT/item",
            "broker RTT/item",
            "ms/item/process",
            "CPU ms/item",
            "ledger Redis ms",
            "broker Redis ms",
            "SQL ms",
            "rest (Celery, Python) ms",
        ],
        rows,
        [
            "Each journal was checked to hold exactly one entry per item.",
            "CPU ms/item: every worker process's CPU (main and pool) per item; on a shared machine",
            "it moves less than the rates do.",
            "ms/item/process = processes x wall / items. Redis and SQL ms are summed over every",
            "process and thread (posters run beside the task thread, so the rest can go below 0).",
            "Broker RTT: kombu's and Celery's Redis round trips (fetch, unacked index, ack, and",
            "one PUBLISH per task event: received, started, succeeded).",
        ],
    )


if __name__ == "__main__":
    main()
