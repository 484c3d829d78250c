"""The per-process breaker: no pause for a fluke, a doubling capped pause for a run of failures."""

from __future__ import annotations

import logging

import pytest

from consumers.breaker import Breaker
from consumers.erp import ERPUnavailable
from contract.retrying import BreakerPolicy


def test_pause_starts_at_the_threshold_doubles_and_stops_at_the_cap() -> None:
    """Failures 1-2 cost nothing, the 3rd pauses 1 s, then 2, 4, 8, 16 and 30 s at most."""
    policy = BreakerPolicy()
    assert [policy.pause(n) for n in range(1, 10)] == [0, 0, 1, 2, 4, 8, 16, 30, 30]
    assert policy.pause(10_000) == 30


def test_jitter_spreads_a_pause_between_half_and_all_of_it() -> None:
    """Processes that fail together wake apart: jitter 0 halves the pause, jitter 1 keeps it."""
    policy = BreakerPolicy(threshold=1, base=4.0)
    assert (policy.pause(1, 0.0), policy.pause(1, 0.5), policy.pause(1, 1.0)) == (2.0, 3.0, 4.0)


def test_breaker_sleeps_after_failures_in_a_row_and_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each pause is slept through and logged at WARNING with the error type and the count."""
    slept: list[float] = []
    breaker = Breaker(sleep=slept.append, jitter=lambda: 1.0)
    with caplog.at_level(logging.WARNING, logger="consumers.breaker"):
        pauses = [breaker.failed(ERPUnavailable("down")) for _ in range(4)]
    assert pauses == [0, 0, 1, 2]
    assert slept == [1, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "erp_adapter_failing error=ERPUnavailable consecutive=3 pause=1.0",
        "erp_adapter_failing error=ERPUnavailable consecutive=4 pause=2.0",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_one_success_resets_the_count() -> None:
    """After an entry goes through, the next failures are flukes again until the threshold."""
    slept: list[float] = []
    breaker = Breaker(sleep=slept.append, jitter=lambda: 1.0)
    for _ in range(5):
        breaker.failed(RuntimeError("bug"))
    breaker.succeeded()
    assert breaker.consecutive == 0
    assert [breaker.failed(RuntimeError("bug")) for _ in range(3)] == [0, 0, 1]
