"""Longest tests first, so that a parallel run ends together (pytest-xdist, ``--dist load``).

``tests/durations.json`` holds each test's seconds as a timeline run measured them
(``PYTEST_TIMELINE``, see ``tests/support/timeline.py``); ``python -m tests.support.ordering
TIMELINE`` writes it again. Tests of ``LONG`` seconds or more go first, longest first; the rest
sharing a module-scoped fixture stay together (one unit, the sum of their times), so a process
sets the fixture up for several of them in a row. A test the file does not know counts as
``UNKNOWN_WORKER`` seconds if it starts a worker, else ``UNKNOWN``. The order changes what runs
when, never what runs: every collected test still runs.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).resolve().parent.parent / "durations.json"
UNKNOWN = 0.5
UNKNOWN_WORKER = 10.0
# Tests this long go first, longest first, whatever their module: one of them queued behind a
# module's many short tests would end the run late.
LONG = 10.0
# Shorter tests are left out of the file: they count as UNKNOWN, and their order hardly matters.
KEPT = 1.0


def _known() -> dict[str, float]:
    try:
        loaded = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in loaded.items()}


def _seconds(item: pytest.Item, known: dict[str, float]) -> float:
    if item.nodeid in known:
        return known[item.nodeid]
    return UNKNOWN_WORKER if item.get_closest_marker("worker") else UNKNOWN


def _unit(item: pytest.Item) -> str:
    """The module's id when the test uses a module-scoped fixture, else the test's own."""
    fixtures = getattr(item, "_fixtureinfo", None)
    defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
    if any(d[-1].scope == "module" for d in defs if d):
        return item.nodeid.split("::", 1)[0]
    return item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # An xdist worker runs with ``dist`` reset to "no" (xdist/remote.py), and it is the workers'
    # collections that the controller hands out: order there, and in a controller of --dist load.
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") != "load":
        return
    known = _known()
    # Ties keep collection order (sorted is stable), so every worker collects the same order.
    longest = sorted(
        (i for i in items if _seconds(i, known) >= LONG), key=lambda i: -_seconds(i, known)
    )
    units: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        if _seconds(item, known) < LONG:
            units[_unit(item)].append(item)
    cost = {u: sum(_seconds(i, known) for i in members) for u, members in units.items()}
    ordered = sorted(units, key=lambda u: -cost[u])
    items[:] = longest + [item for unit in ordered for item in units[unit]]


def write(timeline: Path) -> None:
    """tests/durations.json from a timeline file: each test's wall seconds (0.1 s steps)."""
    seconds: dict[str, float] = {}
    for line in timeline.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        took = round(row["end"] - row["start"], 1)
        if took >= KEPT:
            seconds[row["test"]] = took
    DURATIONS.write_text(json.dumps(dict(sorted(seconds.items())), indent=0) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
