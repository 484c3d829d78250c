"""ERP workers against a rate-limited ERP: throughput as a fraction of what the ERP allows.

The ERP simulator allows ``--calls`` calls a second, ``--concurrency`` at once, each answered
after ``--latency`` seconds. ERP workers (``celery -A consumers worker -c 1``, 1 then 4 processes)
post one job through the HTTP adapter, unbatched and in batches, sharing one budget in Redis. The
clock runs from the first message taken off the queue to the job's final event. Usage:
``python -m bench.erp_limit [--calls 50] [--quick] [--redis URL]``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis

from bench.common import ROOT, TOKEN, bench_redis_url, own_redis, print_table, worker_env
from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.erp_simulator import ErpSimConfig, ErpSimState
from devtools.erp_simulator import start_in_thread as start_erp
from devtools.processes import signal_group
from devtools.simulator import JobSpec, SimState, start_in_thread
from producer.components import produce


def one_run(
    base: Settings, args: argparse.Namespace, *, items: int, workers: int, batch: int, tmp: Path
) -> dict[str, float]:
    """One job posted by ``workers`` processes in batches of ``batch``: the figures."""
    redis.Redis.from_url(base.redis_url).flushdb()
    state = SimState(token=TOKEN, max_page_size=1000)
    sim = start_in_thread(state)
    config = ErpSimConfig(
        calls=args.calls, period=1.0, concurrency=args.concurrency, latency=args.latency
    )
    erp = start_erp(ErpSimState(config))
    settings = replace(base, api_url=sim.url)
    env = {
        **worker_env(settings),
        "ERP_ADAPTER": "consumers.erp_http:from_settings",
        "ERP_HTTP_URL": erp.url,
        "ERP_HTTP_BATCH": str(batch),
        "ERP_CALLS": str(args.calls),
        "ERP_PERIOD": "1",
        "ERP_CONCURRENCY": str(args.concurrency),
    }
    procs = []
    try:
        job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
        produce(job_id, settings=settings, app=make_app(settings))
        for n in range(workers):
            log = (tmp / f"worker-{workers}-{batch}-{n}.log").open("wb")
            command = [sys.executable, "-m", "celery", "-A", "consumers", "worker"]
            command += ["-Q", ITEMS_QUEUE, "-c", "1", "-n", f"bench{n}@%h", "-l", "WARNING"]
            procs.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        queue = redis.Redis.from_url(settings.redis_url)
        while queue.llen(ITEMS_QUEUE) >= items:
            time.sleep(0.005)
        started = time.monotonic()
        deadline = started + 1800
        while state.jobs[job_id].status == "in_progress":
            if time.monotonic() > deadline:
                raise SystemExit("the job did not finish in 30 minutes")
            time.sleep(0.02)
        seconds = time.monotonic() - started
        stats = erp.state.stats()
        booked = stats["entriesBooked"]
        if booked != items or stats["duplicateBookings"]:
            events = [(e.event, e.failure_reason) for e in state.events(job_id)]
            raise SystemExit(
                f"booked {booked} of {items}, {stats['duplicateBookings']} twice; job "
                f"{state.jobs[job_id].status}, events {events}; log tail: "
                + (tmp / f"worker-{workers}-{batch}-0.log").read_text()[-3000:]
            )
        posts = stats["calls"].get("post", 0) + stats["calls"].get("batch", 0)
        return {
            "seconds": seconds,
            "calls": posts,
            "rate_limited": stats["rateLimited"],
            "entries_per_s": items / seconds,
            "fraction": (posts / seconds) / args.calls,
            "max_in_flight": stats["maxInFlight"],
        }
    finally:
        # The figures are in: no warm shutdown to wait for.
        for proc in procs:
            signal_group(proc, signal.SIGKILL)  # the worker and its pool
        for proc in procs:
            proc.wait(timeout=30)
        erp.stop()
        sim.stop()


def main() -> None:
    """Print one row per (processes, batch size)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="the ERP's calls a second")
    parser.add_argument("--concurrency", type=int, default=5, help="the ERP's calls at once")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds an answer")
    parser.add_argument("--quick", action="store_true", help="smaller jobs")
    parser.add_argument(
        "--redis", default=bench_redis_url(), help="a Redis database to empty and use"
    )
    args = parser.parse_args()
    base = Settings(redis_url=args.redis, broker_url=args.redis, api_token=TOKEN, page_size=1000)
    # About 20 s of the ERP's calls each (5 s with --quick): long enough for a steady rate.
    seconds = 5 if args.quick else 20
    rows = []
    with own_redis(args.redis), tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 10):
            for workers in (1, 4):
                items = args.calls * seconds * batch
                got = one_run(base, args, items=items, workers=workers, batch=batch, tmp=Path(tmp))
                print(f"{workers} process(es), batch {batch}: {got}", file=sys.stderr)
                rows.append(
                    [
                        str(workers),
                        str(batch),
                        f"{items:,}",
                        f"{got['seconds']:.1f}",
                        f"{got['entries_per_s']:,.0f}",
                        f"{got['calls']:,.0f}",
                        f"{got['fraction']:.0%}",
                        f"{got['rate_limited']:,.0f}",
                        f"{got['max_in_flight']:.0f}",
                    ]
                )
    print_table(
        f"ERP workers against an ERP of {args.calls} calls/s, {args.concurrency} at once, "
        f"{args.latency * 1000:.0f} ms a call (HTTP adapter, ERP simulator)",
        [
            "processes",
            "batch",
            "entries",
            "seconds",
            "entries/s",
            "calls",
            "of the limit",
            "429s",
            "most at once",
        ],
        rows,
        [
            "'of the limit': post calls a second over the ERP's calls a second, first message "
            "taken to final event; each job was checked booked exactly once by the simulator."
        ],
    )


if __name__ == "__main__":
    main()
