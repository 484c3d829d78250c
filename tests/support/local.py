"""Helpers the integration, e2e and chaos tests share: ports, worker processes, the journal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from consumers.erp_sql import SqlJournal
from contract.settings import Settings


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pool_children(worker: subprocess.Popen[bytes]) -> list[int]:
    """The pids of a Celery worker's pool processes (its children)."""
    out = subprocess.run(
        ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


def journal_ids(settings: Settings) -> list[str]:
    """The entries booked in the reference ERP's journal, one per row, in posting order."""
    with SqlJournal(settings.erp_database_url) as journal:
        return [row["accounting_entry_id"] for row in journal.journal()]


def worker_log(tmp_path: Path, index: int = 0) -> str:
    """What the ``index``-th worker started by the ``start_worker`` fixture has written so far."""
    return (tmp_path / f"worker-{index}.log").read_text(errors="replace")


def pleo_export(settings: Settings, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``pleo-export ARGS --json`` with ``settings``; its JSON answer (exit 0 required)."""
    from tests.conftest import env_for
    from tests.support import zygote

    done = zygote.run_module("producer", [*args, "--json"], env_for(settings), timeout=timeout)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


# How long a stopped worker may take before it is killed, as a deployment's grace period does. A
# warm shutdown takes ~2 s, but now and then billiard's pool process waits 30 s at exit for the
# main process to read its last result while the main process waits to join it (billiard 4.3,
# ``_ensure_messages_consumed``; seen as often on the code before the schema work): then it is
# killed, and its unacked message comes back through the visibility timeout, which exactly-once
# must survive.
GRACE = 6.0


def stop_as_deployed(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL to its process group after ``GRACE`` seconds."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
