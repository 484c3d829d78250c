"""A user's own ERP adapter, named by ERP_ADAPTER, run by a real worker: the README's example as
written; and every way of naming one wrongly refused before the worker takes a message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.errors import BadInput
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import ROOT, env_for, wait_for
from tests.support.local import worker_log

pytestmark = [pytest.mark.integration, pytest.mark.worker]

ITEMS = 40


def readme_adapter() -> str:
    """The README's complete adapter: the python block after "Your own adapter"."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("**Your own adapter, without forking us.**") :]
    match = re.search(r"```python\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def test_the_readme_adapter_books_a_whole_job_once(
    settings: Settings, sim_state: SimState, start_worker: Any, tmp_path: Path
) -> None:
    """Two worker processes post through ``ledgerbook:build``: each entry is in its file once, Pleo
    is told the adapter's external ids, and the job completes; the SQL journal is never used."""
    (tmp_path / "ledgerbook.py").write_text(readme_adapter())
    book = tmp_path / "ledger.jsonl"
    job_id = sim_state.add_job(JobSpec(items=ITEMS, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    start_worker(
        "consumers",
        ITEMS_QUEUE,
        concurrency=2,
        ERP_ADAPTER="ledgerbook:build",
        LEDGERBOOK_PATH=str(book),
        PYTHONPATH=f"{tmp_path}:{ROOT}",
    )
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=60,
        what="the job to complete through the user's adapter",
        explain=lambda: worker_log(tmp_path)[-2000:],
    )
    rows = [json.loads(line) for line in book.read_text().splitlines()]
    booked = [row["accountingEntryId"] for row in rows]
    items = {i.accounting_entry_id: i for i in sim_state.items(job_id)}
    assert len(booked) == len(set(booked)) == ITEMS
    assert set(booked) == set(items)
    for row in rows:
        assert items[row["accountingEntryId"]].external_id == row["externalId"]
        assert row["externalId"] == f"LB-{row['accountingEntryId']}"
    assert not Path(settings.erp_database_url.removeprefix("sqlite:///")).exists()


def refused(settings: Settings, tmp_path: Path, adapter: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "consumers", "worker", "-Q", ITEMS_QUEUE, "-c", "1"],
        env=env_for(settings, ERP_ADAPTER=adapter, PYTHONPATH=f"{tmp_path}:{ROOT}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("adapter", "sentence"),
    [
        (
            "nosuchpackage.erp:build",
            "ERP_ADAPTER names the module 'nosuchpackage.erp', which cannot be imported "
            "(No module named 'nosuchpackage').",
        ),
        (
            "shelf:missing",
            "ERP_ADAPTER names 'shelf:missing', but shelf has no missing.",
        ),
        ("shelf:NAME", "ERP_ADAPTER names 'shelf:NAME', which is not callable."),
        (
            "shelf:no_post",
            "ERP_ADAPTER 'shelf:no_post' built a NoPost, which has no post method (an adapter "
            "needs find and post).",
        ),
        (
            "consumers.erp_sql",
            "ERP_ADAPTER must be package.module:callable, not 'consumers.erp_sql'.",
        ),
    ],
)
def test_a_wrongly_named_adapter_stops_the_worker_with_one_sentence(
    settings: Settings, rdb: redis.Redis, tmp_path: Path, adapter: str, sentence: str
) -> None:
    """Exit 2, the sentence last on stderr, no traceback, and the queue untouched."""
    (tmp_path / "shelf.py").write_text(
        "NAME = 'shelf'\n\n\n"
        "class NoPost:\n"
        "    def find(self, accounting_entry_id):\n"
        "        return None\n\n\n"
        "def no_post(settings):\n"
        "    return NoPost()\n"
    )
    rdb.lpush(ITEMS_QUEUE, b"a message no worker may take")
    worker = refused(settings, tmp_path, adapter)
    assert worker.returncode == 2, worker.stderr[-2000:]
    lines = [line for line in worker.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith(sentence), lines[-1]
    assert "Traceback" not in worker.stderr + worker.stdout
    assert rdb.lrange(ITEMS_QUEUE, 0, -1) == [b"a message no worker may take"]


def test_the_setting_is_checked_for_shape_only() -> None:
    assert Settings.from_env({}).erp_adapter == "consumers.erp_sql:from_settings"
    assert Settings.from_env({"ERP_ADAPTER": " pkg.mod:make.adapter "}).erp_adapter == (
        "pkg.mod:make.adapter"
    )
    for bad in ("pkg.mod", ":build", "pkg mod:build", "pkg.mod:build()"):
        with pytest.raises(BadInput, match=r"ERP_ADAPTER must be package\.module:callable"):
            Settings.from_env({"ERP_ADAPTER": bad})
