"""Rough edges of ``pleo-export`` met by trying it as a new user would, each as a real process."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis
from rich.console import Console

from contract.keys import items_key
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from devtools.demo import DEMO_DB, demo_database
from devtools.simulator import FaultRule, JobSpec, SimState
from producer.webhook import create_app
from tests.conftest import env_for, with_settings
from tests.support.queues import redis_queue
from tests.support.serial import taking_turns
from tests.support.serving import start_in_thread

pytestmark = pytest.mark.integration

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_a_reader_that_stops_reading_is_no_error(settings: Settings, sim_state: SimState) -> None:
    """``pleo-export run … | head -1``: the run ends with its own status, nothing on stderr.

    The pipe's reading end is closed before the command prints, so its first write meets EPIPE.
    """
    job_id = sim_state.add_job(JobSpec(items=30, seed=31))
    with subprocess.Popen(
        [sys.executable, "-m", "producer", "run", job_id, "--json"],
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, stderr
    assert stderr == ""
    assert sim_state.jobs[job_id].status == "in_progress"  # the run did its work


def test_a_password_in_the_api_url_never_reaches_a_log_line(
    settings: Settings, sim_state: SimState, cli: Cli
) -> None:
    """``PLEO_API_URL=http://user:pass@host`` sends Basic auth; ``-v`` logs the URL without it."""
    job_id = sim_state.add_job(JobSpec(items=5, seed=32))
    host = settings.api_url.removeprefix("http://")
    no_token = with_settings(settings, api_token=None, api_url=f"http://someone:pw-{job_id}@{host}")
    done = cli("-v", "run", job_id, settings_=no_token)
    assert done.returncode == 3  # the simulator knows no such key: a permanent refusal
    assert "HTTP Request: GET" in done.stderr
    assert f"pw-{job_id}" not in done.stderr + done.stdout
    # Pleo was asked, and refused the credentials it was sent.
    assert [c.status for c in sim_state.calls if c.path.endswith(job_id)] == [401]


def test_a_failed_run_with_json_prints_one_json_object(
    settings: Settings, sim_state: SimState, cli: Cli
) -> None:
    """``run --json`` that fails: one JSON object on stdout (why, and the exit code) too."""
    job_id = sim_state.add_job(JobSpec(items=3, seed=33))
    done = cli("run", job_id, "--json", settings_=with_settings(settings, api_token="wrong"))
    assert done.returncode == 3
    (line,) = done.stdout.splitlines()
    failure = json.loads(line)
    assert failure["job_id"] == job_id
    assert (failure["status"], failure["exit_code"]) == ("error", 3)
    assert failure["error_type"] == "AuthenticationFailed"
    assert done.stderr.startswith("pleo-export: Pleo answered 401")
    assert failure["error"] == done.stderr.removeprefix("pleo-export: ").strip()


def test_status_types_its_fields_as_run_does_and_names_them_for_what_they_count(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, cli: Cli
) -> None:
    """``status --json`` and ``run --json`` agree on every field they share, types included;
    ``job_status`` follows the job to its end; ``awaiting_outcome`` counts entries, not workers."""
    job_id = sim_state.add_job(JobSpec(items=40, item_statuses={"pending": 1.0}, seed=34))
    ran = json.loads(cli("run", job_id, "--json").stdout)
    view = json.loads(cli("status", job_id, "--json").stdout)
    shared = set(ran) & set(view) - {"status"}
    assert {"recovery", "seconds", "pages", "planned", "enqueued"} <= shared
    assert {k: (ran[k], type(ran[k])) for k in shared} == {
        k: (view[k], type(view[k])) for k in shared
    }
    assert (view["awaiting_outcome"], view["job_status"]) == (40, "in_progress")

    # The job ends: the ERP workers record the final event where consumers/reporting.py does.
    rdb.hset(items_key(job_id), mapping={"final_event": "completed_with_errors", "failed": 1})
    ended = json.loads(cli("status", job_id, "--json").stdout)
    assert (ended["job_status"], ended["job_status_at_claim"]) == (
        "completed_with_errors",
        "in_progress",
    )
    assert ended["awaiting_outcome"] == 39


def run_on_a_terminal(settings: Settings, *args: str) -> tuple[int, str]:
    """``pleo-export ARGS`` with stderr on a pseudo-terminal (the progress bars draw there)."""
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "producer", *args],
        env={**env_for(settings), "COLUMNS": "120", "TERM": "xterm"},
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    ) as proc:
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end closed: the command is done
                break
            if not chunk:
                break
            drawn += chunk
        code = proc.wait(timeout=60)
    os.close(controller)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))


def test_each_layer_has_its_own_bar_with_its_total_and_warnings_wait_for_v(
    settings: Settings, sim_state: SimState
) -> None:
    """On a terminal: one bar per layer, each ending at its total; no log line without -v.

    The first page of job items understates the total: the offset walk cannot prove its pages
    against a total that moved, so it reads the layer again by cursor, with the warning
    ``page_walk_fell_back``. The bar still ends at the real total, and only ``-v`` shows the
    warning.
    """
    quiet, loud = (
        sim_state.add_job(JobSpec(items=250, item_statuses={"pending": 1.0}, seed=seed))
        for seed in (35, 36)
    )
    lie = FaultRule(endpoint="job_items", kind="total_lie", times=1)
    sim_state.add_fault(lie)
    code, drawn = run_on_a_terminal(settings, "run", quiet)
    assert code == 0, drawn
    assert re.search(r"job items read\s.*250/250", drawn), drawn
    assert re.search(r"export items read\s.*250/250", drawn), drawn
    assert re.search(r"items enqueued\s.*250/250", drawn), drawn
    assert "page_walk_fell_back" not in drawn
    assert "WARNING" not in drawn

    sim_state.add_fault(lie)
    code, drawn = run_on_a_terminal(settings, "-v", "run", loud)
    assert code == 0, drawn
    assert "WARNING" in drawn
    assert "page_walk_fell_back" in drawn


def test_the_simulator_announces_nothing_for_a_port_it_cannot_take(cli: Cli) -> None:
    """``simulate`` on a taken port: one sentence, exit 2, and no "simulated pending job" line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("simulate", "--port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(f"pleo-export: Cannot listen on 127.0.0.1:{port}")
    assert "simulated pending job" not in done.stderr


def test_the_demo_empties_only_a_database_that_is_its_own(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """db 15 holding keys no demo wrote is left alone (the demo runs on an embedded Redis);
    an empty db 15, or one an earlier demo marked, is emptied and used."""
    server = redis_url.rsplit("/", 1)[0]
    console = Console(file=io.StringIO())
    with taking_turns("demo"), redis.Redis.from_url(f"{server}/{DEMO_DB}") as db15:
        db15.flushdb()
        db15.set("someone-elses", "data")
        monkeypatch.setenv("REDIS_URL", f"{server}/0")
        try:
            with demo_database(console) as url:
                assert not url.startswith(server)  # the embedded one
            assert db15.get("someone-elses") == b"data"

            db15.delete("someone-elses")
            with demo_database(console) as url:
                assert url == f"{server}/{DEMO_DB}"
                redis.Redis.from_url(url).set("left-by-the-demo", 1)
            with demo_database(console) as url:
                assert url == f"{server}/{DEMO_DB}"  # marked as the demo's: emptied, used
                assert db15.get("left-by-the-demo") is None
        finally:
            db15.flushdb()
    assert "leaving it alone" in console.file.getvalue()  # type: ignore[attr-defined]


def test_deliver_sends_what_the_receiver_takes_and_says_what_it_answered(
    settings: Settings, rdb: redis.Redis, cli: Cli
) -> None:
    """``pleo-export deliver`` signs a ``v1.export-job.created`` the receiver accepts (202, one
    producer task); with another secret the receiver refuses it (401) and the command exits 1."""
    secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
    job_id = "3f0c7b1e-8a2d-4c5e-9f1a-6b7c8d9e0f12"
    served = start_in_thread(create_app(with_settings(settings, webhook_secret=secret)))
    try:
        url = f"{served.url}/webhooks/pleo"
        taken = cli("deliver", job_id, "--url", url, PLEO_WEBHOOK_SECRET=secret)
        assert taken.returncode == 0, taken.stderr
        assert taken.stdout.startswith("202 ")
        assert [q.args for q in redis_queue(rdb, PRODUCER_QUEUE)] == [[job_id]]

        other = "whsec_QW5vdGhlciBzdWJzY3JpcHRpb24ncyBrZXk="
        refused = cli("deliver", job_id, "--url", url, PLEO_WEBHOOK_SECRET=other)
        assert refused.returncode == 1
        assert refused.stdout.startswith("401 ")
        assert refused.stderr.startswith(f"pleo-export: The receiver at {url} answered 401")
        assert len(redis_queue(rdb, PRODUCER_QUEUE)) == 1
    finally:
        served.stop()
