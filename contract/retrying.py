"""Every retry policy of the system, in one place.

- **HTTP** (``RetryPolicy``, ``call_with_retries``): which failures are transient, how long to wait,
  and the loop. Only ``TransientUpstreamError`` (5xx, timeouts, resets, cut-off bodies, and 429 as
  ``RateLimited``) is retried. Attempts stop at ``retry_attempts`` or once ``retry_budget`` seconds
  have passed on the injected clock, whichever comes first, and no wait runs past what is left of
  the budget. A 429's ``Retry-After`` is honoured up to ``retry_after_max``; anything else waits
  with full-jitter exponential backoff (tenacity's ``wait_random_exponential``). How an answer
  becomes an error is the Pleo client's business (``pleo/responses.py``).
- **The shared pause** (``RateGate``): a 429 on any of a client's requests holds back every
  request of that client (the concurrent pages of both layers) for the same time, so a rate limit
  slows the whole run rather than only the request that met it.
- **Task retries** (``task_countdown``, ``RETRY_CAP``): how long a Celery task waits before its
  next attempt; the repair sweep counts on the cap.
- **The broker** (``BROKER_WAIT``, ``PUBLISH_RETRY_POLICY``): how long sending a task waits for a
  restarting broker.
- **An ERP worker's pauses** (``BreakerPolicy``): after failures in a row, and while its adapter
  does not answer at start.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from contract.errors import RateLimited, TransientUpstreamError
from contract.settings import Settings

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Target:
    """One request as errors and logs name it: method, path, job and full URL (never a header)."""

    method: str
    path: str
    job_id: str | None
    url: str

    @property
    def request(self) -> str:
        """``METHOD /path``, the request's name in log events."""
        return f"{self.method} {self.path}"

    def __str__(self) -> str:
        """The request's name in error messages, naming the job when the path does not."""
        if self.job_id is None or self.job_id in self.path:
            return self.request
        return f"{self.request} for job {self.job_id}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The limits of the retry layer, taken from Settings."""

    attempts: int
    budget: float
    backoff_initial: float
    backoff_max: float
    retry_after_max: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """Read the retry limits out of ``settings``."""
        return cls(
            attempts=settings.retry_attempts,
            budget=settings.retry_budget,
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            retry_after_max=settings.retry_after_max,
        )


def is_retryable(error: BaseException | None) -> bool:
    """True when another attempt may succeed: only transient upstream errors qualify."""
    return isinstance(error, TransientUpstreamError)


def choose_wait(
    error: BaseException | None, *, backoff: float, remaining: float, retry_after_max: float
) -> float:
    """Seconds to sleep before the next try: Pleo's Retry-After (capped) if given, else backoff."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        wait = min(error.retry_after, retry_after_max)
    else:
        wait = backoff
    return max(0.0, min(wait, remaining))


def _maybe_applied(error: BaseException) -> bool:
    return isinstance(error, TransientUpstreamError) and error.maybe_applied


def exhausted(
    error: TransientUpstreamError, attempts: int, elapsed: float
) -> TransientUpstreamError:
    """The error to raise once retries run out: the last one, saying how long we tried."""
    noun = "attempt" if attempts == 1 else "attempts"
    message = f"{error.message.rstrip('.')}; gave up after {attempts} {noun} in {elapsed:.1f} s."
    if isinstance(error, RateLimited):
        return RateLimited(
            message,
            job_id=error.job_id,
            status=error.status,
            url=error.url,
            retry_after=error.retry_after,
        )
    return TransientUpstreamError(
        message,
        job_id=error.job_id,
        status=error.status,
        url=error.url,
        maybe_applied=error.maybe_applied,
    )


class _stop_after_budget(stop_base):  # noqa: N801 -- named like tenacity's own stop strategies
    """Stop once ``budget`` seconds have passed since ``started`` on the injected clock."""

    def __init__(self, clock: Callable[[], float], started: float, budget: float) -> None:
        self._clock = clock
        self._started = started
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() - self._started >= self._budget


def call_with_retries(
    attempt: Callable[[], R],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    target: Target,
    replayable: bool = True,
) -> R:
    """Run ``attempt`` (one HTTP request) until it succeeds, fails for good or the policy ends.

    A request that is not ``replayable`` (a write that must not apply twice) is not sent again
    after an error that says it ``maybe_applied``: that error is raised at once, and the caller
    finds out from Pleo what took effect before it writes again.
    """
    started = clock()
    tries = 0
    backoff = wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max)

    def counted() -> R:
        nonlocal tries
        tries += 1
        return attempt()

    def wait(state: RetryCallState) -> float:
        return choose_wait(
            state.outcome.exception() if state.outcome else None,
            backoff=backoff(state),
            remaining=policy.budget - (clock() - started),
            retry_after_max=policy.retry_after_max,
        )

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        # Routine, so INFO: when retries run out the raised error is what reports the failure.
        log.info(
            "http_retry job_id=%s request=%s status=%s attempt=%d wait=%.2f error=%s",
            target.job_id,
            target.request,
            getattr(error, "status", None),
            state.attempt_number,
            state.upcoming_sleep,
            type(error).__name__,
        )

    retrying = Retrying(
        retry=retry_if_exception(
            lambda error: is_retryable(error) and (replayable or not _maybe_applied(error))
        ),
        stop=stop_after_attempt(policy.attempts)
        | _stop_after_budget(clock, started, policy.budget),
        wait=wait,
        sleep=lambda seconds: sleep(float(seconds)),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(counted)
    except TransientUpstreamError as exc:
        # Only a transient error that outlived the policy gets here; the others are never retried.
        last = exc
    elapsed = clock() - started
    log.info(
        "http_gave_up job_id=%s request=%s status=%s attempts=%d elapsed=%.2f",
        target.job_id,
        target.request,
        last.status,
        tries,
        elapsed,
    )
    raise exhausted(last, tries, elapsed) from last


class RateGate:
    """One pause shared by every request of a client: a 429 on any of them holds back all.

    ``hold`` moves the gate's opening time later (never earlier). ``wait`` sleeps until then, once,
    and never past the caller's ``deadline`` (the end of its retry budget). The thread whose 429
    set the latest hold does not wait at the gate: its own retry loop already waits as the policy
    says, so one request alone behaves exactly as without a gate.
    """

    def __init__(self, *, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._opens_at = float("-inf")
        self._held_by: int | None = None

    def hold(self, seconds: float) -> None:
        """Keep every request waiting for ``seconds`` from now (or longer, if already held)."""
        with self._lock:
            until = self._clock() + max(0.0, seconds)
            if until > self._opens_at:
                self._opens_at = until
                self._held_by = threading.get_ident()

    def wait(self, deadline: float = float("inf")) -> float:
        """Sleep until the gate opens or ``deadline``; return the seconds slept (0: it was open)."""
        with self._lock:
            if self._held_by == threading.get_ident():
                return 0.0
            now = self._clock()
            delay = min(self._opens_at, deadline) - now
        if delay <= 0:
            return 0.0
        log.info("rate_gate_wait seconds=%.2f", delay)
        self._sleep(delay)
        return delay


def gate_hold(error: RateLimited, policy: RetryPolicy) -> float:
    """Seconds a 429 holds every request back: its Retry-After (capped), else the first backoff."""
    if error.retry_after is not None:
        return min(error.retry_after, policy.retry_after_max)
    return policy.backoff_initial


# The longest countdown a task retry waits (the repair sweep counts on it, consumers/repair.py).
RETRY_CAP = 300.0


def task_countdown(retries: int, base: float) -> float:
    """Seconds before a task's next attempt: jittered exponential from ``base``, capped at 5 min."""
    return float(random.uniform(0.5, 1.0) * min(RETRY_CAP, base * 2.0**retries))


# How long sending a task's retry waits for a restarting broker: 0.5, 1.5, 2.5, 3.5, 4.5 s
# apart, then every 5 s, about two minutes in all.
BROKER_WAIT: dict[str, Any] = {
    "max_retries": 30,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 5.0,
}

# A short publish retry: callers (a webhook that must answer within seconds, a CLI user) would
# rather get BrokerUnavailable quickly and try again later than wait for a long backoff.
PUBLISH_RETRY_POLICY: Final = {
    "max_retries": 2,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a run of failures starts pausing the process, and how long each pause lasts."""

    # Failures in a row before the first pause: one failure may be a fluke, three are a pattern.
    threshold: int = 3
    base: float = 1.0
    cap: float = 30.0

    def pause(self, consecutive: int, jitter: float = 1.0) -> float:
        """Seconds to pause after ``consecutive`` failures in a row (``jitter`` in [0, 1])."""
        if consecutive < self.threshold:
            return 0.0
        # Processes that fail together should not all wake together: half to the whole pause.
        full = min(self.cap, self.base * 2.0 ** min(consecutive - self.threshold, 32))
        return full * (0.5 + 0.5 * jitter)
