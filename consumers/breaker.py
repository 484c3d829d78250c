"""A per-process circuit breaker: an ERP worker process that fails entry after entry pauses.

A broken adapter (a read-only replica, a revoked grant, a database gone) fails every entry the
same way. Each failed message is retried, never acked away, but taking the next one at once only
churns the queue and the logs. So after ``threshold`` failures in a row the process sleeps before
it takes more work, a jittered pause that doubles with every further failure up to ``cap``; the
first entry the ERP books resets it. Per process on purpose: no shared state to go wrong, and each
process backs off from what it saw itself. The pause holds one message unacked (the one that just
failed, retried once the pause ends), which a worker shutdown hands back like any running task's.

The schedule is pure (``contract.retrying.BreakerPolicy.pause``); ``Breaker`` only counts, logs
and sleeps.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from contract.retrying import BreakerPolicy

log = logging.getLogger(__name__)


class Breaker:
    """Counts one process's failures in a row and sleeps through the pause the policy sets."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.consecutive = 0
        self._sleep = sleep
        self._jitter = jitter

    def failed(self, error: BaseException) -> float:
        """Count a failure and, once failures come in a row, pause; returns the pause in seconds."""
        self.consecutive += 1
        pause = self.policy.pause(self.consecutive, self._jitter())
        if pause > 0:
            log.warning(
                "erp_adapter_failing error=%s consecutive=%d pause=%.1f",
                type(error).__name__,
                self.consecutive,
                pause,
            )
            self._sleep(pause)
        return pause

    def succeeded(self) -> None:
        """An entry went through: the next failure starts a new count."""
        if self.consecutive >= self.policy.threshold:
            log.info("erp_adapter_recovered after=%d", self.consecutive)
        self.consecutive = 0
