"""How Pleo's answers become errors: each way a request can fail is one error of the tree.

A non-2xx status (``error_for_status``), a transport failure (``error_for_transport``) or a 2xx
whose body is not JSON (``error_for_body``). Which of them are retried, and how, is
``contract/retrying.py``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from contract.errors import (
    AuthenticationFailed,
    JobNotFound,
    PermanentUpstreamError,
    RateLimited,
    TransientUpstreamError,
    Unprocessable,
    UpstreamError,
)
from contract.retrying import Target


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
        # The one thing a user can do about it, named: the credentials come from the settings.
        hint = " Check PLEO_API_TOKEN (or PLEO_API_KEY): Pleo did not accept what was sent."
        if status == 401 and not _sent_credentials(response):
            hint = " Set PLEO_API_TOKEN (a bearer token) or PLEO_API_KEY: none was sent."
        return AuthenticationFailed(message + hint, **fields)
    if status == 404:
        return JobNotFound(message, **fields)
    if status == 422:
        kind = body.get("type") if isinstance(body, dict) else None
        return Unprocessable(message, error_type=kind if isinstance(kind, str) else None, **fields)
    if status == 429:
        after = parse_retry_after(response.headers.get("Retry-After"), now=_server_now(response))
        return RateLimited(message, retry_after=after, **fields)
    if status >= 500:
        # 503: Pleo (or its gateway) did not take the request on; the others may have applied it.
        return TransientUpstreamError(message, maybe_applied=status != 503, **fields)
    return PermanentUpstreamError(message, **fields)


def error_for_transport(error: httpx.TransportError, target: Target) -> TransientUpstreamError:
    """A timeout, refused connection, reset or protocol error: the request may pass next time."""
    kind = type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        message = f"Pleo did not answer {target} in time ({kind})."
    else:
        message = f"Could not reach Pleo for {target} ({kind})."
    # Only a connection never made (or never handed out by the pool) cannot have reached Pleo.
    unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return TransientUpstreamError(
        message, job_id=target.job_id, url=target.url, maybe_applied=not unsent
    )


def error_for_body(response: httpx.Response, target: Target) -> TransientUpstreamError:
    """A 2xx whose body is not JSON was cut off on the way, so another copy may arrive whole."""
    return TransientUpstreamError(
        f"Pleo answered {response.status_code} to {target} with a body that is not valid JSON "
        f"({len(response.content)} bytes).",
        job_id=target.job_id,
        status=response.status_code,
        url=target.url,
        maybe_applied=True,
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


def _sent_credentials(response: httpx.Response) -> bool:
    """Whether the request that got ``response`` carried an Authorization header."""
    try:
        return "Authorization" in response.request.headers
    except RuntimeError:  # a response built without its request (tests): assume it did
        return True
