"""The expiry rule a worker applies before asking Pleo: pure arithmetic, the same at any scale."""

from __future__ import annotations

import pytest

from pleo.activity import Expiry

ACTED = 1_767_225_600.0


@pytest.mark.parametrize("expires_in", [1, 2, 3600, 86_400])
def test_overdue_only_after_more_than_expires_in(expires_in: int) -> None:
    """A job is overdue strictly after expiresIn seconds since our last action, never at it."""
    expiry = Expiry(expires_in, ACTED)
    assert not expiry.overdue(ACTED)
    assert not expiry.overdue(ACTED + expires_in)
    assert expiry.overdue(ACTED + expires_in + 0.001)
    # Proportional: the same fraction of expiresIn gives the same answer at every scale.
    assert not expiry.overdue(ACTED + 0.99 * expires_in)
    assert expiry.overdue(ACTED + 1.01 * expires_in)


def test_a_stamp_from_a_clock_ahead_is_not_overdue() -> None:
    """A last action stamped later than now (another host's clock ahead) does not count as quiet."""
    assert not Expiry(3600, ACTED + 30).overdue(ACTED)
