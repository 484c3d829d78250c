"""The chaos suite: every guarantee, attacked. `make test` runs a subset, `make chaos` all of it.

``scale(subset, full)`` picks a case's size: the subset in ``make test`` and ``CHAOS_FULL=1`` for
``make chaos``. Tests add what they survived to the session tally (kills, faulted requests, fuzzed
inputs, items lost, duplicates); the terminal summary prints it, and ``CHAOS_REPORT=path`` also
writes it as JSON, which is where the README's "Guarantees and how we test them" figures come from.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

FULL = os.environ.get("CHAOS_FULL", "").lower() in {"1", "true", "yes"}
_TALLY: Counter[str] = Counter()
_TIMES: dict[str, list[float]] = {}


def chaos_seed() -> int:
    """The seed of a test's random choices: ``CHAOS_SEED`` to replay one, else a fresh one.

    Printed (pytest shows it with a failure's captured output) and to be named in assertion
    messages, so ``CHAOS_SEED=<seed>`` replays a failing run's choices.
    """
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay with CHAOS_SEED={seed})")
    return seed


def scale(subset: int, full: int) -> int:
    """The case size for this run: ``full`` under ``make chaos``, else ``subset``."""
    return full if FULL else subset


def tally(figure: str, amount: int = 1) -> None:
    """Add ``amount`` to one of the session's chaos figures (e.g. ``"producer kills survived"``)."""
    _TALLY[figure] += amount


def measure(figure: str, seconds: float) -> None:
    """Record one observed duration (e.g. death to job published); the summary shows the range."""
    _TIMES.setdefault(figure, []).append(seconds)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/chaos carries the ``chaos`` marker."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand this process's figures to the controlling process."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["chaos_figures"] = json.dumps({"tally": _TALLY, "times": _TIMES})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """In the controlling process: add up the figures of each worker as it finishes."""
    raw = getattr(node, "workeroutput", {}).get("chaos_figures")
    if raw is None:
        return
    figures = json.loads(raw)
    _TALLY.update(figures["tally"])
    for figure, seen in figures["times"].items():
        _TIMES.setdefault(figure, []).extend(seen)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the tally, and write it where ``CHAOS_REPORT`` says."""
    if not _TALLY and not _TIMES:
        return
    terminalreporter.section(f"chaos figures ({'full run' if FULL else 'subset'})")
    for figure, amount in sorted(_TALLY.items()):
        terminalreporter.write_line(f"{figure:<48} {amount:>10,}")
    times = {
        figure: {"n": len(seen), "min": round(min(seen), 2), "max": round(max(seen), 2)}
        for figure, seen in sorted(_TIMES.items())
    }
    for figure, seen in times.items():
        terminalreporter.write_line(
            f"{figure:<64} n={seen['n']} min={seen['min']:.2f} max={seen['max']:.2f}"
        )
    target = os.environ.get("CHAOS_REPORT")
    if target:
        report = {"full": FULL, **_TALLY, "times": times}
        Path(target).write_text(json.dumps(report, indent=2, sort_keys=True))
