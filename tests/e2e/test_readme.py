"""The README's commands work when pasted: its hand-run block, run as written."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contract.settings import Settings
from tests.conftest import env_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def shell_block_after(heading: str) -> str:
    """The first ```sh block after the line that starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None, f"no sh block after {heading!r}"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_hand_run_block_runs_as_pasted(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """In a directory holding nothing but the virtualenv, the block runs to its end: the job is
    simulated, run (5,000 entries enqueued) and its status shown. Only the port and the Redis
    database differ from what a user pastes (the suite runs in parallel)."""
    block = shell_block_after("Try a run by hand")
    port = free_port()
    assert block.count("8080") == 2
    assert block.count("redis://127.0.0.1:6379/0") == 1
    script = block.replace("8080", str(port)).replace("redis://127.0.0.1:6379/0", redis_url)
    # The virtualenv running this suite (``make`` makes it the checkout's .venv).
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in env_for(settings).items() if not k.startswith(("PLEO_", "REDIS_"))}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "enqueued 5000 new messages (0 were already queued) of 5000 planned" in done.stdout
    assert re.search(r"state: enqueued", done.stdout), done.stdout
