"""Redis sizing: bytes per queued entry, and per finished job before and after closing.

Runs one job of ``--items`` entries per ordering (``booked_at``: payloads in the messages;
``entry_id``: messages without payloads, the ERP worker caches the data layer in ``:payloads``)
through the real pieces: the producer in-process against the simulator over HTTP, then one real
``celery -A consumers worker`` to the final event, then the closing step in-process with
``PLEO_RETENTION``'s default. After each phase it sums ``MEMORY USAGE key SAMPLES 0`` (exact) over
every key of the database, kombu's included, and prints the bytes by key. Usage:
``python -m bench.redis_size [--items 3000] [--redis URL]`` (the database is emptied before and
after; run it by hand, it is not part of ``make bench``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import redis

from bench.common import ROOT, TOKEN, bench_redis_url, own_redis, print_table, worker_env
from consumers.closing import Closer
from contract.celery_app import make_app
from contract.keys import payloads_key
from contract.lease import Leases
from contract.names import ITEMS_QUEUE
from contract.settings import Ordering, Settings
from devtools.simulator import JobSpec, SimState, start_in_thread
from producer.components import produce

_JOB_PREFIX = "pleo-export:job:"


def sizes(client: redis.Redis) -> Counter[str]:
    """Bytes by key kind (a job key's suffix, else the key itself), from MEMORY USAGE."""
    found: Counter[str] = Counter()
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        used = client.memory_usage(raw, samples=0) or 0
        kind = key.rsplit(":", 1)[1] if key.startswith(_JOB_PREFIX) else key
        found[":" + kind if key.startswith(_JOB_PREFIX) else kind] += int(used)
    return found


def worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """One ERP worker process that will not close the job on its own (closing is measured here)."""
    env = worker_env(settings)
    env.update(PLEO_ORDERING=settings.ordering, PLEO_CLOSE_INTERVAL="3600")
    argv = ["celery", "-A", "consumers", "worker", "-Q", ITEMS_QUEUE, "-c", "2", "-l", "WARNING"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", *argv, "--without-mingle", "--without-gossip"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def measure(
    base: Settings, items: int, ordering: Ordering, workdir: Path
) -> tuple[list[Counter[str]], int]:
    """Sizes while queued, when finished (final event) and after closing; the largest
    ``:payloads`` seen while the worker ran."""
    client = redis.Redis.from_url(base.redis_url)
    client.flushdb()
    state = SimState(token=TOKEN, max_page_size=1000)
    sim = start_in_thread(state)
    journal = f"sqlite:///{workdir / f'journal-{ordering}.sqlite3'}"
    settings = replace(base, api_url=sim.url, erp_database_url=journal, ordering=ordering)
    try:
        job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
        produce(job_id, settings=settings, app=make_app(settings))
        queued = sizes(client)
        proc = worker(settings, workdir / f"worker-{ordering}.log")
        try:
            deadline = time.monotonic() + 1800
            cache = 0
            while state.jobs[job_id].status in {"pending", "in_progress"}:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the job did not finish; see {workdir}")
                cache = max(cache, client.memory_usage(payloads_key(job_id), samples=0) or 0)
                time.sleep(0.1)
            time.sleep(0.5)  # the last write-back's bookkeeping lands after Pleo's answer
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finished = sizes(client)
        closer = Closer(client, retention=settings.retention, leases=Leases(client, ttl=10))
        if closer.step() != [job_id]:
            raise SystemExit("the job was not waiting to be closed")
        return [queued, finished, sizes(client)], cache
    finally:
        sim.stop()
        client.close()


def main() -> None:
    """Measure both orderings and print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--items", type=int, default=3000, help="entries in each job")
    parser.add_argument(
        "--redis", default=bench_redis_url(), help="a Redis database to empty and use"
    )
    args = parser.parse_args()
    items = args.items
    base = Settings(redis_url=args.redis, broker_url=args.redis, api_token=TOKEN, page_size=1000)
    with own_redis(args.redis), tempfile.TemporaryDirectory() as tmp:
        for ordering in ("booked_at", "entry_id"):
            phases, cache = measure(base, items, ordering, Path(tmp))
            kinds = sorted(set().union(*phases), key=lambda k: -max(p[k] for p in phases))
            rows = [[kind, *(f"{p[kind]:,}" if p[kind] else "-" for p in phases)] for kind in kinds]
            totals = [sum(p.values()) for p in phases]
            rows.append(["total", *(f"{t:,}" for t in totals)])
            rows.append(["per entry", *(f"{t / items:,.0f}" for t in totals)])
            print_table(
                f"Redis bytes (MEMORY USAGE), {items:,} entries, PLEO_ORDERING={ordering}",
                ["key", "queued", "finished", "closed"],
                rows,
                [
                    "queued: after the producer run, before any worker; finished: after the "
                    "final event (its export items already deleted); closed: after the closing "
                    f"step, {Settings().retention // 86400} days of retention left.",
                    f"export items cached in :payloads while the worker ran (largest seen): "
                    f"{cache:,} bytes ({cache / items:,.0f} per entry).",
                ],
            )


if __name__ == "__main__":
    main()
