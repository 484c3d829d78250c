"""Rough edges of ``pleo-export`` met by trying it as a new user would, each as a real process."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

from contract.keys import items_key
from contract.settings import Settings
from devtools.simulator import FaultRule, JobSpec, SimState
from tests.conftest import env_for, with_settings

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

    The first page of job items understates the total (Pleo's pages tolerate it once, with the
    warning ``page_total_changed``): the bar ends at the real total, and only ``-v`` shows the
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
    assert "page_total_changed" not in drawn
    assert "WARNING" not in drawn

    sim_state.add_fault(lie)
    code, drawn = run_on_a_terminal(settings, "-v", "run", loud)
    assert code == 0, drawn
    assert "WARNING" in drawn
    assert "page_total_changed" in drawn
