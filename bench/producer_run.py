"""One ``python -m producer run JOB --json`` as a subprocess, watched: what the run benches share.

The watcher polls the job's progress state in Redis and the producer's ``/proc`` status every
10 ms (state changes, peak resident set); the simulator's server thread is clocked for its CPU.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.common import ROOT, TOKEN
from contract.keys import progress_key

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
