"""Flower watching the pipeline: its HTTP API lists the producer task and every item task by id.

A real `celery -A producer flower` on 127.0.0.1 against the test Redis, real producer and ERP
workers, the simulator over HTTP. The tasks' events are what Flower shows, so this proves the
apps send them (``worker_send_task_events``, ``task_send_sent_event``) and that item task ids
are the deterministic ones operators can look up.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contract.names import ITEM_TASK, ITEMS_QUEUE, PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from contract.wire import task_id_for
from devtools.simulator import JobSpec, SimState
from producer.status import job_status
from producer.triggers import enqueue
from tests.conftest import IN_CI, ROOT, env_for, wait_for
from tests.support.local import free_port

pytestmark = [pytest.mark.integration, pytest.mark.worker]
TERMINAL = {"completed", "completed_with_errors", "failed"}


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group ``proc`` leads, if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def healthy(client: httpx.Client, proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    """Whether Flower answers its health check; fails at once if the process has exited."""
    if proc.poll() is not None:
        pytest.fail(f"Flower exited with status {proc.returncode}:\n{log_tail(log_path)}")
    try:
        return client.get("/healthcheck").text == "OK"
    except httpx.TransportError:
        return False


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[httpx.Client]:
    """A real Flower on 127.0.0.1 watching the test broker; yields an HTTP client for it."""
    if importlib.util.find_spec("flower") is None:
        if IN_CI:
            pytest.fail("flower is required in CI but is not installed")
        pytest.skip("flower is not installed (pip install 'flower>=2,<3')")
    port = free_port()
    log_path = tmp_path / "flower.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "producer",
                f"--broker={settings.broker_url}",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
            ],
            # Flower 2.x answers /api/* with 401 unless auth is configured or this is set.
            env=env_for(settings, FLOWER_UNAUTHENTICATED_API="true"),
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so teardown stops Flower with anything it started.
            start_new_session=True,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        wait_for(
            lambda: healthy(client, proc, log_path),
            timeout=20,
            what="Flower to answer /healthcheck",
            explain=lambda: log_tail(log_path),
        )
        yield client
    finally:
        client.close()
        # Shown by pytest only when the test failed.
        print("--- flower.log (last 40 lines) ---", log_tail(log_path), sep="\n")
        # The test is over and nothing it proves depends on how Flower stops; its own shutdown
        # on TERM (the event thread, tornado's loop) took seconds.
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def heard_workers(client: httpx.Client) -> list[Any]:
    """Workers Flower knows from their events (not from a broadcast inspect)."""
    data: list[Any] = client.get("/workers", params={"json": 1}).json()["data"]
    return data


def seen_tasks(client: httpx.Client, expected: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """(name, state) of each expected task id in Flower's task list, when it lists it."""
    tasks = client.get("/api/tasks").json()
    return {
        task_id: (tasks[task_id].get("name"), tasks[task_id].get("state"))
        for task_id in expected
        if task_id in tasks
    }


def test_flower_lists_producer_and_item_tasks(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    start_worker: Any,
    flower: httpx.Client,
) -> None:
    """Flower's /api/tasks lists the producer task and each entry's item task id, all SUCCESS."""
    start_worker("producer", PRODUCER_QUEUE)
    start_worker("consumers", ITEMS_QUEUE)
    # Events travel over Redis pub/sub and are lost when nobody listens: a worker's event in
    # Flower's state proves its receiver is subscribed before any task event is sent.
    wait_for(lambda: heard_workers(flower), timeout=20, what="Flower to hear a worker's events")
    job_id = sim_state.add_job(JobSpec(items=50, item_statuses={"pending": 1.0}))
    producer_task_id = enqueue(job_id, settings=settings).task_id
    status = wait_for(
        lambda: sim_state.jobs[job_id].status in TERMINAL and sim_state.jobs[job_id].status,
        timeout=30,
        what="the job to finish",
        explain=lambda: job_status(rdb, job_id),
    )
    assert status == "completed"
    expected = {producer_task_id: (PRODUCER_TASK, "SUCCESS")} | {
        task_id_for(job_id, item.accounting_entry_id): (ITEM_TASK, "SUCCESS")
        for item in sim_state.items(job_id)
    }
    assert len(expected) == 51
    wait_for(
        lambda: seen_tasks(flower, expected) == expected,
        timeout=15,
        what="Flower to list every task as succeeded",
        explain=lambda: (
            {
                task_id: seen
                for task_id, seen in seen_tasks(flower, expected).items()
                if seen != expected[task_id]
            }
            | {"missing": len(expected) - len(seen_tasks(flower, expected))}
        ),
    )
