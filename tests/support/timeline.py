"""Where the suite's time goes: one line per test with its wall and CPU time (opt-in).

``PYTEST_TIMELINE=FILE`` appends, per test, the xdist worker, the start and end (epoch seconds),
and the CPU seconds this test process and the children it reaped used meanwhile (the in-process
simulators included; a killed worker's pool processes are not). Nothing is written otherwise.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator

import pytest


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    path = os.environ.get("PYTEST_TIMELINE")
    if not path:
        yield
        return
    start, cpu = time.time(), _cpu()
    yield
    line = {
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "test": item.nodeid,
        "start": start,
        "end": time.time(),
        "cpu": _cpu() - cpu,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
