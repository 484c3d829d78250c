"""Rough edges of ``pleo-export`` met by trying it as a new user would, each as a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
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
