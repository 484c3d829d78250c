"""`pleo-export demo` end to end: simulator, webhook, real workers, a finished job, a summary."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from devtools.demo import WORKDIR_NAME, run_demo
from tests.support.serial import taking_turns

pytestmark = [pytest.mark.integration, pytest.mark.worker]


@pytest.fixture(autouse=True)
def _demo_db_to_ourselves() -> Iterator[None]:
    """The demo owns Redis db 15 of its server: one demo at a time across the suite."""
    with taking_turns("demo"):
        yield


def test_demo_runs_a_job_to_the_end_and_summarises_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo posts every valid entry once, reports all of them and prints its summary."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    output = io.StringIO()
    started = time.monotonic()

    summary = run_demo(items=500, interactive=False, console=Console(file=output, width=120))

    printed = output.getvalue()
    assert time.monotonic() - started < 60, printed
    assert summary.final_status in {"completed", "completed_with_errors"}, printed
    assert summary.final_status == ("completed_with_errors" if summary.failed else "completed")
    assert summary.planned == 500
    assert summary.posted == summary.planned - summary.failed
    assert summary.reported == summary.planned
    assert summary.put_calls >= 5
    assert summary.max_batch <= 100
    assert summary.journal_path == tmp_path / WORKDIR_NAME / "erp-journal.sqlite3"
    assert summary.journal_path.exists()
    assert "pleo-export demo summary" in printed
    print(printed)


def test_demo_command_as_ci_runs_it(redis_url: str, tmp_path: Path) -> None:
    """`pleo-export demo --items 500 --no-input` exits 0 within a minute and prints the summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env["REDIS_URL"] = redis_url
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "producer", "demo", "--items", "500", "--no-input"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60
    assert "pleo-export demo summary" in proc.stdout
    assert "reported to Pleo" in proc.stdout
    assert (tmp_path / WORKDIR_NAME / "erp-journal.sqlite3").exists()
