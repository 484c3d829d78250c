"""Throwaway ``redis-server`` processes on free loopback ports, configured as a test needs.

The machine's shared Redis must not be reconfigured, so a test of how we treat a Redis set up
another way (evicting, clustered, with AOF, a Sentinel) starts its own: one starts in ~10 ms.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.conftest import IN_CI
from tests.support.local import free_port

STARTUP_SECONDS = 10.0


def need_redis_server() -> str:
    """The ``redis-server`` binary: required in CI, a skip (saying why) elsewhere."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI but is not on PATH")
        pytest.skip("redis-server is not on PATH")
    return binary


@contextmanager
def redis_server(folder: Path, *options: str, config: str | None = None) -> Iterator[int]:
    """A ``redis-server`` started with ``options`` (or a ``config`` file's text); yields its port.

    It runs in ``folder`` (its files land there) and is killed afterwards.
    """
    binary = need_redis_server()
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [binary]
    if config is not None:
        # Sentinel rewrites its config file, so it must be one of its own.
        path = folder / f"redis-{port}.conf"
        path.write_text(config.format(port=port))
        argv += [str(path)]
    argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), *options]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_it_answers(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


def _wait_until_it_answers(port: int, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server on port {port} exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer in {STARTUP_SECONDS}s")
                time.sleep(0.005)
    finally:
        client.close()
