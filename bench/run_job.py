"""``pleo-export run`` of a large simulated job: wall time against the ideal, and peak memory.

Starts the simulator (a real HTTP server on loopback, in a thread of this process, with a fixed
latency per request), adds one job, then runs ``python -m producer run JOB --json`` as a
subprocess with page size 1,000 and measures: wall time, pages/s, the ideal fetch time (pages x
latency; both the sum of the two layers and their max, which is the ideal when the producer reads
the control and data layers concurrently), fetch and publish times, the ratio of wall time to
ideal fetch + publish, the producer's peak RSS (VmHWM from
``/proc``), and the simulator's own CPU time per page (its server thread's CPU clock).
Usage: ``python -m bench.run_job [-n 100000] [--latency 0.02] [--concurrency N] [--quick]``.

``--paging`` measures the latency-bound case instead (Pleo's default page size, 100, at 100 ms a
request): the same job run ``--repeat`` times at each ``PLEO_PAGE_CONCURRENCY`` of
``--concurrencies`` (1, the cursor walk; the default; a higher one), the median of each figure,
beside the bound the issue sets: 1.3 x (pages per layer / concurrency x latency) + publish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import TOKEN, bench_redis_url, own_redis, print_table
from contract.keys import progress_key
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState, start_in_thread

ROOT = Path(__file__).resolve().parent.parent
POLL_SECONDS = 0.01


@dataclass(slots=True)
class Watch:
    """What the bench saw while the producer ran: state changes, memory high-water mark."""

    states: dict[str, float] = field(default_factory=dict)
    vm_hwm_kib: int = 0
    cpu_seconds: float = 0.0
    # The largest resident set (VmRSS) seen in each state: where the peak is.
    rss_by_state: dict[str, int] = field(default_factory=dict)


def producer_env(
    api_url: str,
    redis_url: str,
    page_size: int,
    concurrency: int | None = None,
    root: Path = ROOT,
) -> dict[str, str]:
    """The producer's environment: this simulator, this Redis as ledger and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env.update(
        PLEO_API_URL=api_url,
        PLEO_API_TOKEN=TOKEN,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        PLEO_PAGE_SIZE=str(page_size),
        # A benchmark's Redis is a throwaway (it is flushed): no persistence asked of it.
        PLEO_REDIS_EPHEMERAL="1",
        PYTHONPATH=str(root),
    )
    if concurrency is not None:
        env["PLEO_PAGE_CONCURRENCY"] = str(concurrency)
    return env


def vm_hwm_kib(pid: int, field: str = "VmHWM") -> int:
    """The process's peak resident set so far (VmHWM; or ``field``), or 0 once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def watch(pid: int, client: redis.Redis, job_id: str, done: threading.Event, seen: Watch) -> None:
    """Poll the producer's progress state and VmHWM until ``done``."""
    key = progress_key(job_id)
    while not done.wait(POLL_SECONDS):
        state = client.hget(key, "state")
        if state is not None:
            seen.states.setdefault(state.decode(), time.perf_counter())
            rss = vm_hwm_kib(pid, "VmRSS")
            seen.rss_by_state[state.decode()] = max(seen.rss_by_state.get(state.decode(), 0), rss)
        seen.vm_hwm_kib = max(seen.vm_hwm_kib, vm_hwm_kib(pid))


def server_cpu_seconds() -> float:
    """CPU time of the simulator's server thread so far (Linux per-thread clock)."""
    thread = next(t for t in threading.enumerate() if t.name == "simulator")
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def redis_footprint(client: redis.Redis) -> int:
    """Bytes the bench's database holds: ``MEMORY USAGE`` of each key (all of its elements)."""
    return sum(
        int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter(count=1000)
    )


def layers_overlap(endpoints: list[str]) -> bool:
    """Whether a data-layer page was answered before the last control-layer page."""
    data = [i for i, e in enumerate(endpoints) if e == "export_items"]
    control = [i for i, e in enumerate(endpoints) if e == "job_items"]
    return bool(data and control and data[0] < control[-1])


def run_producer(
    job_id: str, env: dict[str, str], client: redis.Redis, workdir: Path
) -> tuple[dict[str, Any], float, int, Watch]:
    """Run the producer to its end: JSON summary, wall seconds, peak RSS (KiB), what was seen."""
    seen = Watch()
    done = threading.Event()
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    started = time.perf_counter()
    # The peak RSS is VmHWM read from /proc while the producer runs, not wait4's ru_maxrss: the
    # child shares this process's memory (the simulator's whole job) until its exec, and the
    # kernel's high-water mark for it counts those pages too (fork or posix_spawn alike).
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-m", "producer", "run", job_id, "--json"],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, str(out_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, str(err_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        ],
    )
    watcher = threading.Thread(target=watch, args=(pid, client, job_id, done, seen))
    watcher.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    returncode = os.waitstatus_to_exitcode(status)
    done.set()
    watcher.join()
    if returncode != 0:
        raise SystemExit(f"the producer exited {returncode}: {err_path.read_text()[-2000:]}")
    seen.cpu_seconds = usage.ru_utime + usage.ru_stime
    return json.loads(out_path.read_text()), wall, seen.vm_hwm_kib, seen


def main() -> None:
    """Run one large job through ``pleo-export run`` and print the figures."""
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
    parser.add_argument("--repeat", type=int, default=3, help="with --paging: runs per value")
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
    with (
        own_redis(args.redis) as client,
        start_in_thread(state) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        cpu_before = server_cpu_seconds()
        env = producer_env(
            sim.url, args.redis, args.page_size, args.concurrency, args.producer_root
        )
        summary, wall, peak_kib, seen = run_producer(job_id, env, client, Path(tmp))
        sim_cpu = server_cpu_seconds() - cpu_before
        queued = client.llen("pleo-export-items")
        redis_bytes = redis_footprint(client)
    if summary["enqueued"] != items or queued != items:
        raise SystemExit(
            f"expected {items} messages: enqueued {summary['enqueued']}, queued {queued}"
        )

    endpoints = [call.endpoint for call in state.calls]
    control_pages = endpoints.count("job_items")
    data_pages = endpoints.count("export_items")
    pages = summary["pages"]
    overlap = layers_overlap(endpoints)
    ideal_sum = (control_pages + data_pages) * args.latency
    ideal_max = max(control_pages, data_pages) * args.latency
    ideal_fetch = ideal_max if overlap else ideal_sum
    fetch = summary.get("fetch_seconds")
    publish = summary.get("publish_seconds")
    source = "from the run's summary"
    if fetch is None or publish is None:
        # Older summaries lack them: the state changes the bench saw in Redis stand in.
        fetch = seen.states["publishing"] - seen.states["fetching"]
        publish = seen.states["enqueued"] - seen.states["publishing"]
        source = f"from the progress state in Redis, polled every {POLL_SECONDS * 1000:.0f} ms"
    target = ideal_fetch + publish
    expected_pages = math.ceil(items / args.page_size)
    rows = [
        ["wall time (process start to exit)", f"{wall:.2f} s"],
        ["producer's own run time (summary `seconds`)", f"{summary['seconds']:.2f} s"],
        ["producer CPU (user + sys, whole process)", f"{seen.cpu_seconds:.2f} s"],
        ["pages read (control + data)", f"{pages} ({control_pages} + {data_pages})"],
        ["pages/s over the wall time", f"{pages / wall:.1f}"],
        ["fetch time", f"{fetch:.2f} s"],
        ["ideal fetch, layers in sequence (pages x latency)", f"{ideal_sum:.2f} s"],
        ["ideal fetch, layers concurrent (max of the two)", f"{ideal_max:.2f} s"],
        ["fetch / ideal fetch", f"{fetch / ideal_fetch:.2f}x"],
        ["publish time", f"{publish:.2f} s"],
        ["wall / (ideal fetch + publish)", f"{wall / target:.2f}x (target <= 1.10x)"],
        [
            "wall / (layers-in-sequence ideal + publish)",
            f"{wall / (ideal_sum + publish):.2f}x",
        ],
        [
            "producer peak RSS (VmHWM, polled every 10 ms)",
            f"{peak_kib / 1024:.0f} MB (target <= 250 MB)",
        ],
        ["simulator CPU per page (server thread)", f"{sim_cpu / pages * 1000:.1f} ms"],
        [
            "largest RSS seen per state (polled)",
            ", ".join(f"{k} {v / 1024:.0f}" for k, v in seen.rss_by_state.items()) + " MB",
        ],
        ["time per entry (wall / entries)", f"{wall / items * 1e6:.1f} µs"],
        [
            "spool bytes per entry (dates + payloads)",
            f"{summary.get('spool_bytes', 0) / items:,.0f} B",
        ],
        [
            "Redis bytes per queued entry (every key of the db, MEMORY USAGE)",
            f"{redis_bytes / queued:,.0f} B" if queued else "-",
        ],
    ]
    print_table(
        f"pleo-export run: {items:,} items, page size {args.page_size}, "
        f"latency {args.latency * 1000:.0f} ms/request",
        ["figure", "value"],
        rows,
        [
            f"The producer read the two layers {'concurrently' if overlap else 'in sequence'}"
            f" (from the order of the simulator's answers); ideal fetch used: "
            f"{'max' if overlap else 'sum'}. Expected {expected_pages} pages per layer.",
            f"Fetch and publish times {source}. {queued:,} messages were queued, as planned.",
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
