"""The supervisor's decision, purely: which active jobs need a new producer run."""

from __future__ import annotations

import pytest

from contract.supervisor import JobView, assess, seconds_to_expiry

JOB = "0b5c2d8e-1f3a-4c5b-9d6e-7f8a9b0c1d2e"
NOW = 10_000.0
DEAD_AFTER = 15.0


def view(**fields: object) -> JobView:
    return JobView(job_id=JOB, requested_at=NOW - 100, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ({"final": True, "state": "publishing"}, "finished"),
        ({"state": "skipped"}, "finished"),
        ({"state": "failed"}, "finished"),
        ({"state": "enqueued"}, "published"),
        ({"state": "nothing_to_do"}, "published"),
        ({"state": "publishing", "leased": True}, "running"),
        ({"state": "publishing", "updated_at": NOW - 1}, "waiting"),
        ({"state": "publishing", "updated_at": NOW - 16}, "dead"),
        ({"state": "", "task_seen": True}, "waiting"),
        ({"state": ""}, "dead"),
        ({"state": "retrying", "retry_at": NOW + 200}, "waiting"),
        ({"state": "retrying", "retry_at": NOW - 20}, "dead"),
        ({"state": "interrupted", "resumed_at": NOW - 5}, "waiting"),
        ({"state": "interrupted", "updated_at": NOW - 30}, "dead"),
    ],
)
def test_verdicts(fields: dict[str, object], verdict: str) -> None:
    """Each kind of job gets the verdict the module docstring gives it."""
    assert assess(view(**fields), NOW, dead_after=DEAD_AFTER) == verdict


def test_a_fresh_trigger_is_given_time_to_reach_a_worker() -> None:
    """A job requested moments ago, with no run yet, is waiting, not dead."""
    fresh = JobView(job_id=JOB, requested_at=NOW - 3)
    assert assess(fresh, NOW, dead_after=DEAD_AFTER) == "waiting"
    assert assess(fresh, NOW + DEAD_AFTER, dead_after=DEAD_AFTER) == "dead"


def test_expiry_counts_from_our_last_action() -> None:
    """Seconds to Pleo's expiry are expiresIn after our last action; unknown without both."""
    assert seconds_to_expiry(view(expires_in=3600, action_at=NOW - 3000), NOW) == 600
    assert seconds_to_expiry(view(expires_in=3600), NOW) is None
    assert seconds_to_expiry(view(action_at=NOW), NOW) is None
