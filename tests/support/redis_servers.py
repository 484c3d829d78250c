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
ATTEMPTS = 3


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
    """A ``redis-server`` started with ``options`` (and a ``config`` file's text); yields its port.

    It runs in ``folder`` (its files land there) and is killed afterwards. A port taken by someone
    else between our look and its bind makes it exit: it is then started again on another one.
    """
    binary = need_redis_server()
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        port = free_port()
        argv = [binary]
        if config is not None:
            # Sentinel rewrites its config file, so it must be one of its own.
            path = folder / f"redis-{port}.conf"
            path.write_text(config)
            argv += [str(path)]
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), *options]
        if "--cluster-enabled" in options:
            # The cluster bus listens on port + 10000 unless told: past 65535 for a high port.
            argv += ["--cluster-port", str(free_port())]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if _answers(port, proc, last=attempt == ATTEMPTS):
                yield port
                return
        finally:
            proc.kill()
            proc.wait()
    pytest.fail(f"redis-server {' '.join(options)} did not start in {ATTEMPTS} attempts")


def _answers(port: int, proc: subprocess.Popen[bytes], *, last: bool) -> bool:
    """True once the server answers PING; False if it exited first (a port race, unless last)."""
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            try:
                client.ping()
                return True
            except redis.ConnectionError:
                if proc.poll() is not None:
                    if last:
                        pytest.fail(f"redis-server on port {port} exited with {proc.returncode}")
                    return False
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer in {STARTUP_SECONDS}s")
                time.sleep(0.005)
    finally:
        client.close()
