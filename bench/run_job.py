"""``pleo-export run`` of a large simulated job: wall time against the ideal, and peak memory.

Starts the simulator (a real HTTP server on loopback, in a thread of this process, with a fixed
latency per request), adds one job, then runs ``python -m producer run JOB --json`` as a
subprocess with page size 1,000 and measures: wall time, pages/s, the ideal fetch time (pages x
latency; both the sum of the two layers and their max, which is the ideal when the producer reads
the control and data layers concurrently), fetch and publish times, the ratio of wall time to
ideal fetch + publish, the producer's peak RSS (VmHWM from
``/proc``), and the simulator's own CPU time per page (its server thread's CPU clock).
Each run is followed, in the same process, by the physical limit (``bench/raw_limit.py``: a raw
client reading both layers' pages side by side, bytes only, then a raw pipelined LPUSH of as many
byte strings as the run queued, each as long as one of its messages), and the table shows wall /
physical limit. Every figure is the median of ``--repeat`` runs (3), each on a fresh Redis db.
``-n 1000000 --repeat 1`` is the million-entry run (about 8 minutes; Redis grows to ~6 GB): what
an operator sizes, peak RSS, spool and Redis bytes per entry, time per entry.
Usage: ``python -m bench.run_job [-n 100000] [--latency 0.02] [--concurrency N] [--repeat 3]
[--quick]``.

``--paging`` measures the latency-bound case instead (Pleo's default page size, 100, at 100 ms a
request): the same job run ``--repeat`` times at each ``PLEO_PAGE_CONCURRENCY`` of
``--concurrencies`` (1, the cursor walk; the default; a higher one), the median of each figure,
beside the bound the issue sets: 1.3 x (pages per layer / concurrency x latency) + publish.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import redis

from bench import raw_limit
from bench.common import ROOT, TOKEN, bench_redis_url, own_redis, print_table
from bench.producer_run import (
    layers_overlap,
    producer_env,
    redis_footprint,
    run_producer,
    server_cpu_seconds,
)
from bench.raw_limit import LPUSH_BATCH, message_sizes
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState, start_in_thread


def one_run(
    args: argparse.Namespace,
    items: int,
    *,
    state: SimState,
    job_id: str,
    client: redis.Redis,
    sim_url: str,
) -> dict[str, float]:
    """One producer run on a fresh ledger, then the physical limit raw: the run's figures."""
    # Each run a fresh ledger: a run after the first is then a recovery run that publishes it all.
    client.flushdb()
    calls_before = len(state.calls)
    cpu_before = server_cpu_seconds()
    env = producer_env(sim_url, args.redis, args.page_size, args.concurrency, args.producer_root)
    with tempfile.TemporaryDirectory() as tmp:
        summary, wall, peak_kib, seen = run_producer(job_id, env, client, Path(tmp))
    sim_cpu = server_cpu_seconds() - cpu_before
    queued = int(client.llen(ITEMS_QUEUE))
    if summary["enqueued"] != items or queued != items:
        raise SystemExit(
            f"expected {items} messages: enqueued {summary['enqueued']}, queued {queued}"
        )
    redis_bytes = redis_footprint(client)
    sizes = message_sizes(client, ITEMS_QUEUE)
    endpoints = [call.endpoint for call in state.calls[calls_before:]]
    # The producer's messages go before the raw LPUSH, which then writes into as empty a Redis.
    client.flushdb()
    raw = raw_limit.measure(sim_url, job_id, args.page_size, client, sizes)
    control_pages = endpoints.count("job_items")
    data_pages = endpoints.count("export_items")
    fetch = summary.get("fetch_seconds")
    publish = summary.get("publish_seconds")
    if fetch is None or publish is None:
        # Older summaries lack them: the state changes the bench saw in Redis stand in.
        fetch = seen.states["publishing"] - seen.states["fetching"]
        publish = seen.states["enqueued"] - seen.states["publishing"]
    figures = {
        "wall": wall,
        "run": summary["seconds"],
        "cpu": seen.cpu_seconds,
        "pages": summary["pages"],
        "control_pages": control_pages,
        "data_pages": data_pages,
        "overlap": float(layers_overlap(endpoints)),
        "fetch": fetch,
        "publish": publish,
        "peak_mb": peak_kib / 1024,
        "sim_cpu": sim_cpu,
        "spool_bytes": summary.get("spool_bytes", 0),
        "redis_bytes": redis_bytes,
        "mean_message": sum(sizes) / len(sizes),
        "raw_fetch": raw.fetch_seconds,
        "raw_pages": raw.pages,
        "raw_page_bytes": raw.page_bytes,
        "raw_lpush": raw.lpush_seconds,
        "physical": raw.seconds,
        "wall_physical": wall / raw.seconds,
    }
    figures.update({f"rss {k}": v / 1024 for k, v in seen.rss_by_state.items()})
    print(
        "run: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items() if k in _SHOWN),
        file=sys.stderr,
        flush=True,
    )
    return figures


# The figures each run prints as it ends (stderr), so a long bench shows its progress.
_SHOWN = frozenset({"wall", "cpu", "fetch", "publish", "peak_mb", "raw_fetch", "raw_lpush"})


def main() -> None:
    """Run one large job through ``pleo-export run`` ``--repeat`` times and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--items", type=int, default=100_000, help="items in the job")
    parser.add_argument("--page-size", type=int, default=1_000, help="PLEO_PAGE_SIZE")
    parser.add_argument("--latency", type=float, default=0.02, help="simulator seconds/request")
    parser.add_argument("--quick", action="store_true", help="a 20,000-item job")
    parser.add_argument("--redis", default=bench_redis_url(), help="a db to empty")
    parser.add_argument("--concurrency", type=int, help="PLEO_PAGE_CONCURRENCY (default: its own)")
    parser.add_argument(
        "--paging", action="store_true", help="page size 100, 100 ms: concurrencies side by side"
    )
    parser.add_argument(
        "--concurrencies",
        default=f"1,{Settings().page_concurrency},8",
        help="with --paging: the PLEO_PAGE_CONCURRENCY values to compare",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs (per value, with --paging); medians shown"
    )
    parser.add_argument(
        "--producer-root",
        type=Path,
        default=ROOT,
        help="the checkout whose producer runs (another branch, side by side; run from outside"
        " any checkout, so the current directory does not shadow it)",
    )
    args = parser.parse_args()
    items = 20_000 if args.quick else args.items
    if args.paging:
        paging_bench(args, items)
        return

    state = SimState(token=TOKEN, max_page_size=args.page_size, latency=args.latency)
    job_id = state.add_job(JobSpec(items=items))
    with own_redis(args.redis) as client, start_in_thread(state) as sim:
        runs = [
            one_run(args, items, state=state, job_id=job_id, client=client, sim_url=sim.url)
            for _ in range(args.repeat)
        ]
    print_run(args, items, runs)


def print_run(args: argparse.Namespace, items: int, runs: list[dict[str, float]]) -> None:
    """The run's table: the median of every figure over ``runs``."""
    m = {key: statistics.median(run.get(key, 0.0) for run in runs) for key in runs[0]}
    overlap = m["overlap"] >= 0.5
    ideal_sum = (m["control_pages"] + m["data_pages"]) * args.latency
    ideal_max = max(m["control_pages"], m["data_pages"]) * args.latency
    ideal_fetch = ideal_max if overlap else ideal_sum
    target = ideal_fetch + m["publish"]
    states = [key for key in runs[0] if key.startswith("rss ")]
    walls = ", ".join(f"{run['wall']:.2f}" for run in runs)
    rows = [
        ["wall time (process start to exit)", f"{m['wall']:.2f} s (runs: {walls})"],
        [
            "physical limit: raw fetch + raw LPUSH (same run)",
            f"{m['physical']:.2f} s (medians: fetch {m['raw_fetch']:.2f}, LPUSH"
            f" {m['raw_lpush']:.2f})",
        ],
        ["wall / physical limit", f"{m['wall_physical']:.2f}x (goal <= 1.5x)"],
        ["producer's own run time (summary `seconds`)", f"{m['run']:.2f} s"],
        ["producer CPU (user + sys, whole process)", f"{m['cpu']:.2f} s (goal <= 3 s)"],
        [
            "pages read (control + data)",
            f"{m['pages']:.0f} ({m['control_pages']:.0f} + {m['data_pages']:.0f})",
        ],
        ["pages/s over the wall time", f"{m['pages'] / m['wall']:.1f}"],
        ["fetch time", f"{m['fetch']:.2f} s"],
        ["raw fetch: both layers side by side, bytes only", f"{m['raw_fetch']:.2f} s"],
        [
            "raw fetch: pages, MB read",
            f"{m['raw_pages']:.0f}, {m['raw_page_bytes'] / 1e6:,.0f} MB",
        ],
        ["ideal fetch, layers in sequence (pages x latency)", f"{ideal_sum:.2f} s"],
        ["ideal fetch, layers concurrent (max of the two)", f"{ideal_max:.2f} s"],
        ["fetch / ideal fetch", f"{m['fetch'] / ideal_fetch:.2f}x"],
        ["publish time", f"{m['publish']:.2f} s"],
        [
            f"raw LPUSH, as many messages, same sizes ({LPUSH_BATCH:,} a pipeline)",
            f"{m['raw_lpush']:.2f} s",
        ],
        ["wall / (ideal fetch + publish)", f"{m['wall'] / target:.2f}x"],
        [
            "producer peak RSS (VmHWM, polled every 10 ms)",
            f"{m['peak_mb']:.0f} MB (goal <= {150 if items <= 100_000 else 400} MB)",
        ],
        ["simulator CPU per page (server thread)", f"{m['sim_cpu'] / m['pages'] * 1000:.1f} ms"],
        [
            "largest RSS seen per state (polled)",
            ", ".join(f"{k[4:]} {m[k]:.0f}" for k in states) + " MB",
        ],
        ["time per entry (wall / entries)", f"{m['wall'] / items * 1e6:.1f} µs"],
        ["spool bytes per entry (dates + payloads)", f"{m['spool_bytes'] / items:,.0f} B"],
        [
            "Redis bytes per queued entry (MEMORY USAGE, every key)",
            f"{m['redis_bytes'] / items:,.0f} B",
        ],
        ["mean message size", f"{m['mean_message']:,.0f} B"],
    ]
    print_table(
        f"pleo-export run: {items:,} items, page size {args.page_size}, "
        f"latency {args.latency * 1000:.0f} ms/request, median of {len(runs)}",
        ["figure", "value"],
        rows,
        [
            f"The producer read the two layers {'concurrently' if overlap else 'in sequence'}"
            f" (from the order of the simulator's answers); ideal fetch used: "
            f"{'max' if overlap else 'sum'}. Expected {math.ceil(items / args.page_size)} pages"
            " per layer.",
            "Physical limit (bench/raw_limit.py), after each producer run in the same process: a"
            " raw client reads both layers' pages side by side (one page at a time per layer,"
            " bytes only), then LPUSHes byte strings as long as the run's messages, pipelined.",
            f"Each run: a fresh Redis db, {items:,} messages queued, as planned. Every figure is"
            " the median of the runs (each on its own).",
        ],
    )


PAGING_PAGE_SIZE = 100
PAGING_LATENCY = 0.1


def paging_bench(args: argparse.Namespace, items: int) -> None:
    """The latency-bound run at each concurrency, ``args.repeat`` times: medians, and the bound."""
    concurrencies = [int(value) for value in args.concurrencies.split(",")]
    state = SimState(token=TOKEN, max_page_size=PAGING_PAGE_SIZE, latency=PAGING_LATENCY)
    job_id = state.add_job(JobSpec(items=items))
    per_layer = math.ceil(items / PAGING_PAGE_SIZE)
    rows = []
    with own_redis(args.redis) as client, start_in_thread(state) as sim:
        for concurrency in concurrencies:
            env = producer_env(sim.url, args.redis, PAGING_PAGE_SIZE, concurrency)
            walls, runs, fetches, publishes, cpus, sim_cpus = [], [], [], [], [], []
            for _ in range(args.repeat):
                # Each run a fresh ledger: the job is then a recovery run that publishes it all.
                client.flushdb()
                sim_before = server_cpu_seconds()
                with tempfile.TemporaryDirectory() as tmp:
                    summary, wall, _, seen = run_producer(job_id, env, client, Path(tmp))
                cpus.append(seen.cpu_seconds)
                sim_cpus.append(server_cpu_seconds() - sim_before)
                if summary["enqueued"] != items or summary["paging_fallbacks"]:
                    raise SystemExit(f"unexpected run at concurrency {concurrency}: {summary}")
                walls.append(wall)
                runs.append(summary["seconds"])
                fetches.append(summary["fetch_seconds"])
                publishes.append(summary["publish_seconds"])
            wall, run, fetch, publish, cpu, sim_cpu = (
                statistics.median(x) for x in (walls, runs, fetches, publishes, cpus, sim_cpus)
            )
            ideal = per_layer / concurrency * PAGING_LATENCY
            bound = 1.3 * ideal + publish
            rows.append(
                [
                    f"{concurrency}" + (" (cursor)" if concurrency == 1 else ""),
                    f"{wall:.2f} s",
                    f"{run:.2f} s",
                    f"{fetch:.2f} s",
                    f"{publish:.2f} s",
                    f"{ideal:.2f} s",
                    f"{bound:.2f} s",
                    f"{wall / bound:.2f}x",
                    f"{cpu:.1f} + {sim_cpu:.1f} s",
                ]
            )
    print_table(
        f"pleo-export run, latency-bound: {items:,} items, page size {PAGING_PAGE_SIZE}, "
        f"{PAGING_LATENCY * 1000:.0f} ms/request, median of {args.repeat}",
        ["concurrency", "wall", "run", "fetch", "publish", "ideal", "bound", "wall/bound", "CPU"],
        rows,
        [
            f"{per_layer} pages per layer, both layers read side by side (PLEO_PAGE_CONCURRENCY "
            "each). Ideal = pages per layer / concurrency x latency; bound = 1.3 x ideal + "
            "publish (the issue's goal: wall / bound <= 1).",
            "Wall is the process's (interpreter start to exit); run is the summary's `seconds`.",
            "CPU: the producer process's user + sys, then the simulator's server thread (2 cores).",
        ],
    )


if __name__ == "__main__":
    main()
