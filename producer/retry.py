"""The one HTTP retry layer: which failures are transient, how long to wait, and the retry loop.

Each request is named by a ``Target``, and every way it can fail becomes one error of the tree: a
non-2xx status (``error_for_status``), a transport failure (``error_for_transport``) or a 2xx whose
body is not JSON (``error_for_body``). Only ``TransientUpstreamError`` (5xx, timeouts, resets,
cut-off bodies, and 429 as ``RateLimited``) is retried. Attempts stop at ``retry_attempts`` or once
``retry_budget`` seconds have passed on the injected clock, whichever comes first, and no wait runs
past what is left of the budget. A 429's ``Retry-After`` is honoured up to ``retry_after_max``;
anything else waits with full-jitter exponential backoff (tenacity's ``wait_random_exponential``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from producer.config import Settings
from producer.errors import (
    AuthenticationFailed,
    JobNotFound,
    PermanentUpstreamError,
    RateLimited,
    TransientUpstreamError,
    Unprocessable,
    UpstreamError,
)

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


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or HTTP-date), None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        # RFC 9110: an HTTP-date is always GMT, even when written as "-0000" (which reads as naive).
        when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_for_status(response: httpx.Response, target: Target) -> UpstreamError:
    """Map a non-2xx answer onto the error tree, as one sentence naming request, status and why."""
    status = response.status_code
    body = _json_or_none(response)
    message = f"Pleo answered {status} to {target}: {_reason(response, body)}."
    fields: dict[str, Any] = {"job_id": target.job_id, "status": status, "url": target.url}
    if status in (401, 403):
        return AuthenticationFailed(message, **fields)
    if status == 404:
        return JobNotFound(message, **fields)
    if status == 422:
        kind = body.get("type") if isinstance(body, dict) else None
        return Unprocessable(message, error_type=kind if isinstance(kind, str) else None, **fields)
    if status == 429:
        after = parse_retry_after(response.headers.get("Retry-After"), now=_server_now(response))
        return RateLimited(message, retry_after=after, **fields)
    if status >= 500:
        return TransientUpstreamError(message, **fields)
    return PermanentUpstreamError(message, **fields)


def error_for_transport(error: httpx.TransportError, target: Target) -> TransientUpstreamError:
    """A timeout, refused connection, reset or protocol error: the request may pass next time."""
    kind = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        message = f"Pleo did not answer {target} in time ({kind})."
    else:
        message = f"Could not reach Pleo for {target} ({kind})."
    return TransientUpstreamError(message, job_id=target.job_id, url=target.url)


def error_for_body(response: httpx.Response, target: Target) -> TransientUpstreamError:
    """A 2xx whose body is not JSON was cut off on the way, so another copy may arrive whole."""
    return TransientUpstreamError(
        f"Pleo answered {response.status_code} to {target} with a body that is not valid JSON "
        f"({len(response.content)} bytes).",
        job_id=target.job_id,
        status=response.status_code,
        url=target.url,
    )


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(response: httpx.Response, body: object) -> str:
    """Pleo's own explanation (``ExceptionInfo.message``) if it sent one, else the reason phrase."""
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str) and message.strip():
        # One line, one sentence: the CLI prints this as is.
        return " ".join(message.split()).rstrip(".")[:200]
    return response.reason_phrase or "no reason given"


def _server_now(response: httpx.Response) -> datetime:
    """The server's ``Date``, so an HTTP-date Retry-After is read free of our clock's skew."""
    try:
        return parsedate_to_datetime(response.headers["Date"])
    except (KeyError, TypeError, ValueError):
        return datetime.now(UTC)


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
    return TransientUpstreamError(message, job_id=error.job_id, status=error.status, url=error.url)


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
) -> R:
    """Run ``attempt`` (one HTTP request) until it succeeds, fails for good or the policy ends."""
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
        retry=retry_if_exception(is_retryable),
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
