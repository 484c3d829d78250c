"""`pleo-export demo` end to end: simulator, webhook, real workers, a finished job, a summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.erp_sql import SqlJournal
from devtools.demo import WORKDIR_NAME
from tests.support.serial import taking_turns

pytestmark = [pytest.mark.integration, pytest.mark.worker]


@pytest.fixture(autouse=True)
def _demo_db_to_ourselves() -> Iterator[None]:
    """The demo owns Redis db 15 of its server: one demo at a time across the suite."""
    with taking_turns("demo"):
        yield


def summary_rows(printed: str) -> dict[str, str]:
    """The rows of the demo's printed summary table: name to value."""
    row = re.compile(r"^\W*(?P<name>\w[^│|]*?)\s*[│|]\s*(?P<value>.*?)\s*[│|]\s*$", re.MULTILINE)
    return {match["name"]: match["value"] for match in row.finditer(printed)}


def test_demo_command_runs_a_job_to_the_end_and_summarises_it(
    redis_url: str, tmp_path: Path
) -> None:
    """`pleo-export demo --items 500 --no-input`, as CI runs it, finishes within a minute: every
    valid entry posted once, all of them reported, and the summary printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env["REDIS_URL"] = redis_url
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["COLUMNS"] = "200"  # rich's width, so no row or path of the summary wraps
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
    printed = proc.stdout
    assert time.monotonic() - started < 60, printed
    assert "pleo-export demo summary" in printed
    rows = summary_rows(printed)
    planned, posted, failed = (
        int(rows[k]) for k in ("planned", "posted to ERP", "failed ERP validation")
    )
    assert rows["final status"] == ("completed_with_errors" if failed else "completed"), printed
    assert planned == 500
    assert posted == planned - failed
    assert int(rows["reported to Pleo"]) == planned
    puts = re.fullmatch(r"(\d+) \((\d+)\)", rows["PUT calls (max batch)"])
    assert puts is not None, printed
    assert int(puts[1]) >= 5
    assert int(puts[2]) <= 100
    journal = tmp_path / WORKDIR_NAME / "erp-journal.sqlite3"
    assert f"ERP journal: {journal}" in printed
    assert journal.exists()
    print(printed)


@pytest.mark.parametrize("erp", ["sql", "http"])
def test_demo_with_receipts_stores_each_booked_entrys_receipt(
    redis_url: str, tmp_path: Path, erp: str
) -> None:
    """`pleo-export demo --receipts`: each entry the ERP booked gets its receipt stored, once,
    and the summary says how many were stored and downloaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env["REDIS_URL"] = redis_url
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["COLUMNS"] = "200"
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "producer", "demo"),
            *("--items", "200", "--no-input", "--receipts", "--erp", erp),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    rows = summary_rows(printed)
    receipts = re.fullmatch(r"(\d+) \((\d+)\)", rows.get("receipts stored (downloads)", ""))
    assert receipts is not None, printed
    stored, downloads = int(receipts[1]), int(receipts[2])
    posted = int(rows["posted to ERP"])
    print(
        f"demo --receipts --erp {erp}: posted={posted} stored={stored} downloads={downloads} "
        f"took={took:.1f}s"
    )
    assert posted > 0
    assert stored == posted  # one receipt per sample entry, each stored once
    assert downloads >= stored
    assert int(rows["reported to Pleo"]) == int(rows["planned"])
    if erp == "sql":
        journal = tmp_path / WORKDIR_NAME / "erp-journal.sqlite3"
        with SqlJournal(f"sqlite:///{journal}") as opened:
            assert len(opened.attachments()) == stored
