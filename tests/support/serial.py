"""Tests that share one service across the suite's parallel processes take turns on it.

pytest-xdist's ``loadgroup`` cannot be used (its group names do not reach the scheduler under
pytest 9), so a test that needs a service all processes share (the one RabbitMQ broker and its
items queue, the demo's Redis database 15) holds an exclusive file lock for its duration: the
others wait, the rest of the suite goes on in parallel. PostgreSQL needs none of this: each test
process has its own database (tests/conftest.py).
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def taking_turns(service: str) -> Iterator[None]:
    """Hold the suite-wide lock for ``service`` (a blocking flock, freed if the process dies)."""
    path = Path(tempfile.gettempdir()) / f"pleo-export-tests-{service}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
