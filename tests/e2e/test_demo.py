"""`pleo-export demo` end to end: simulator, webhook, real workers, a finished job, a summary."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from producer.demo import WORKDIR_NAME, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.worker]


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
