"""The suite's worker zygote (tests/support/zygote.py): a fork answers as a fresh interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import zygote
from tests.support.local import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    return {**env, "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize(
    "args",
    [["--help"], ["enqueue"], ["run", "not-a-job-id"], ["status", "--json", "nope"]],
    ids=["help", "usage-error", "bad-job-id", "bad-status"],
)
def test_a_forked_command_answers_as_a_fresh_interpreter_does(args: list[str]) -> None:
    env = _env()
    assert zygote.forkable(env)
    forked = zygote.zygote().run("producer", args, env, timeout=30)
    fresh = subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )
    assert fresh.stdout or fresh.stderr  # each says something, so the comparison is not empty


def test_a_forked_process_is_polled_waited_for_and_killed_as_a_popen_is(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    proc = zygote.zygote().spawn("http.server", [str(port), "--bind", "127.0.0.1"], _env(), log)
    assert log.exists()
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    assert os.getpgid(proc.pid) == proc.pid  # its own session: killpg reaches what it started
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert proc.returncode == -signal.SIGKILL


def test_what_a_fresh_interpreter_would_run_differently_is_not_forked(tmp_path: Path) -> None:
    env = _env()
    assert not zygote.forkable({**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert not zygote.forkable({**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert not zygote.forkable(env, cwd=tmp_path)
    assert not zygote.forkable(env, app="tests.support.recording_app")
