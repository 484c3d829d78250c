"""How a generic REST journal's answer becomes an outcome of the adapter protocol (pure).

    2xx                      an ``ExternalRef`` (``id``, ``url``, ``bookedAt`` of the body)
    429                      ``ERPRateLimited``, ``retry_after`` from ``Retry-After`` (seconds,
                             fractional allowed, or an HTTP-date), None when absent or unreadable
    401, 403                 ``ERPUnavailable``: the credentials were refused (retried, never
                             reported as the entry's fault; fix ERP_HTTP_AUTH)
    404, 405, 408, 409,      ``ERPUnavailable``: no such endpoint, a timeout, the key in use by
    413, 425, 5xx            a call still running (a replay racing the first post), a batch
                             too large, the ERP down
    other 4xx                ``EntryRejected`` with the body's reason type when it is one of
                             Pleo's item failure reason types, else the default,
                             ``accounting_system_validation_failure`` (the ERP refused the
                             entry's content); the ERP's reason goes in the sentence

The reason type is read from ``reasonType``, ``type`` or ``code`` and the reason from ``reason``,
``message`` or ``detail``, in the body or in its ``error`` object. No header or body is ever put
in a message beyond the ERP's own reason, so no credential can leak into one.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, cast

import httpx

from consumers.erp import EntryRejected, ERPError, ERPRateLimited, ERPUnavailable, ExternalRef
from pleo.models import ITEM_FAILURE_REASON_TYPES, ItemFailureReason

# What a refusal is reported as when the ERP names no reason type Pleo knows.
DEFAULT_REASON: Final[ItemFailureReason] = "accounting_system_validation_failure"
# Statuses that say "this call cannot work now", not "this entry is wrong".
_UNAVAILABLE: Final = frozenset({404, 405, 408, 409, 413, 425})
_REASON_LIMIT: Final = 300


def answer_failure(response: httpx.Response, where: str, entry_id: str | None) -> ERPError:
    """The error a non-2xx answer from ``where`` (a URL without credentials) stands for."""
    status = response.status_code
    if status == 429:
        wait = retry_after(response.headers.get("retry-after"))
        shown = "" if wait is None else f"; it asks to wait {wait:g} s"
        return ERPRateLimited(f"The ERP at {where} answered 429 Too Many Requests{shown}.", wait)
    if status in {401, 403}:
        return ERPUnavailable(
            f"The ERP at {where} refused the credentials (HTTP {status}); check ERP_HTTP_AUTH."
        )
    if status >= 500 or status in _UNAVAILABLE or status < 400:
        return ERPUnavailable(f"The ERP at {where} answered HTTP {status}.")
    reason_type, reason = reason_of(_json(response))
    return rejected(entry_id, reason_type, reason, status)


def rejected(
    entry_id: str | None, reason_type: ItemFailureReason, reason: str | None, status: int | None
) -> EntryRejected:
    """The refusal of one entry, with the ERP's reason in an actionable sentence."""
    said = f" (HTTP {status})" if status is not None else ""
    why = f": {reason}" if reason else " without saying why"
    return EntryRejected(
        reason_type,
        f"The ERP refused entry {entry_id}{said}{why}; correct the entry in Pleo or the ERP's "
        "setup and export again.",
    )


def reason_of(body: object) -> tuple[ItemFailureReason, str | None]:
    """The (reason type, reason) an ERP's error body gives; the default type when it names none."""
    if not isinstance(body, Mapping):
        return DEFAULT_REASON, None
    nested = body.get("error")
    sources = [nested, body] if isinstance(nested, Mapping) else [body]
    kind = _first(sources, ("reasonType", "type", "code"))
    reason = _first(sources, ("reason", "message", "detail"))
    if reason is not None:
        reason = " ".join(reason.split()).rstrip(". ")[:_REASON_LIMIT]
    known = kind if kind in ITEM_FAILURE_REASON_TYPES else DEFAULT_REASON
    return cast(ItemFailureReason, known), reason or None


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delay-seconds, fractional, or an HTTP-date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def external_ref(body: object, where: str) -> ExternalRef:
    """The reference a booked entry's body gives (``id``, ``url``, ``bookedAt``)."""
    if not isinstance(body, Mapping):
        raise ERPUnavailable(f"The ERP at {where} booked an entry but answered no JSON object.")
    external_id = body.get("id")
    if isinstance(external_id, bool) or not isinstance(external_id, str | int) or external_id == "":
        raise ERPUnavailable(f"The ERP at {where} answered a booking without an id.")
    url, booked_at = body.get("url"), body.get("bookedAt")
    return ExternalRef(
        external_id=str(external_id),
        external_url=url if isinstance(url, str) and url else None,
        exported_at=booked_at
        if isinstance(booked_at, str) and booked_at
        else datetime.now(UTC).isoformat(timespec="microseconds"),
    )


def json_body(response: httpx.Response, where: str) -> Any:
    """A 2xx answer's JSON, or ``ERPUnavailable`` when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise ERPUnavailable(
            f"The ERP at {where} answered HTTP {response.status_code} with a body that is not JSON."
        ) from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _first(sources: list[Any], names: tuple[str, ...]) -> str | None:
    for source in sources:
        for name in names:
            value = source.get(name)
            if isinstance(value, str) and value.strip():
                return value
    return None
