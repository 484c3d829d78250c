"""Fault injection: rules that make the simulator misbehave on purpose, deterministically.

A ``FaultRule`` matches requests to one endpoint (or ``any``). Of the requests it matches it skips
the first ``after``, then fires on every ``every``-th one (or, when ``rate`` is set, with that
probability drawn from the state's seeded RNG), at most ``times`` times. Rules are evaluated in the
order they were added; the first rule that answers in the server's place (``status``,
``rate_limit``, ``drop``) ends the evaluation, so later rules do not count that request.

Kinds, and when they act:

- before the handler: ``status`` (answer ``status`` with a Pleo-like error body);
  ``rate_limit`` (429, with ``Retry-After: retry_after`` unless it is None); ``drop`` (close the
  connection without an answer); ``timeout`` (wait ``delay`` seconds, or until the client hangs
  up, then answer normally: the handler still runs, so the client cannot tell if a write applied);
- on the normal answer: ``truncated`` (the body cut in half);
- on pages only: ``cursor_loop`` (``endCursor`` repeats the cursor the client sent; on a first page
  it points back to the start); ``duplicate`` (the page also carries the entry just before it, the
  last entry of the previous page, or its own first entry on a first page); ``total_lie`` (``total``
  halved); ``total_moves`` (``total`` one more, as if an entry joined the job mid-walk); ``skip``
  (the page's last entry left out, as if it had moved to a page already read: the offset walk's lie,
  which only a count against ``total`` shows); ``schema`` (the first entry breaks the spec; also
  works on a single job; each fire picks the next way of ``SCHEMA_BREAKS``, or always way
  ``variant`` when it is set).
- on item updates only: ``item_errors`` (a 200 whose ``errors[]`` holds every tenth update of the
  batch, counting from the first, which is not applied: Pleo's partial failure).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from devtools.simulator.records import JsonObject

ENDPOINTS: Final = frozenset(
    {"job", "job_events", "job_items", "job_items_put", "export_items", "jobs", "any"}
)
PAGED_ENDPOINTS: Final = frozenset({"job_items", "export_items", "jobs"})
ANSWERING_KINDS: Final = frozenset({"status", "rate_limit", "drop"})
PAGE_KINDS: Final = frozenset(
    {"cursor_loop", "duplicate", "total_lie", "total_moves", "skip", "schema"}
)
# The page kinds ``distort_page`` applies (``schema`` has its own).
DISTORTING_KINDS: Final = PAGE_KINDS - {"schema"}
KINDS: Final = ANSWERING_KINDS | PAGE_KINDS | {"timeout", "truncated", "item_errors"}

# Each fire of a ``schema`` fault breaks the page a different way, cycling through these (a rule
# with ``variant`` always breaks it that one way).
SCHEMA_BREAKS: Final = {
    "job_items": (("status", None), ("status", "exported"), ("accountingEntryId", "not-a-uuid")),
    "export_items": (("date", None), ("type", "teleportation"), ("accountingEntryId", "42")),
    "jobs": (("status", None), ("status", "archived"), ("id", "not-a-uuid")),
    "job": (("status", None), ("status", "archived"), ("id", "not-a-uuid")),
}


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One way to misbehave, on which requests, and how often (see the module docstring)."""

    endpoint: str
    kind: str
    status: int = 503
    retry_after: int | str | None = None
    delay: float = 5.0
    every: int = 1
    after: int = 0
    times: int | None = None
    rate: float | None = None
    variant: int | None = None

    def __post_init__(self) -> None:
        """Reject rules that could never fire as written."""
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        allowed = PAGED_ENDPOINTS | {"any"} | ({"job"} if self.kind == "schema" else set())
        if self.kind in PAGE_KINDS and self.endpoint not in allowed:
            raise ValueError(f"{self.kind} faults only apply to {sorted(allowed)}")
        if self.kind == "item_errors" and self.endpoint != "job_items_put":
            raise ValueError("item_errors faults only apply to job_items_put")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if self.every < 1 or self.after < 0 or (self.times is not None and self.times < 0):
            raise ValueError("every must be >= 1, after and times >= 0")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.variant is not None and (self.kind != "schema" or self.variant < 0):
            raise ValueError("variant is a schema fault's break number, >= 0")

    def applies_to(self, endpoint: str) -> bool:
        """Whether requests to ``endpoint`` count for this rule."""
        if self.endpoint != "any":
            return self.endpoint == endpoint
        if self.kind == "schema":
            return endpoint in PAGED_ENDPOINTS or endpoint == "job"
        if self.kind == "item_errors":
            return endpoint == "job_items_put"
        return self.kind not in PAGE_KINDS or endpoint in PAGED_ENDPOINTS


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule firing on one request; ``nth`` counts this rule's fires so far, this one included."""

    rule: FaultRule
    nth: int


class FaultBook:
    """The active rules with their match and fire counters; the caller serialises access."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._rules: list[FaultRule] = []
        self._matched: list[int] = []
        self._fired: list[int] = []

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The active rules, in evaluation order."""
        return tuple(self._rules)

    def fired(self) -> tuple[int, ...]:
        """How many times each rule has fired, in rule order."""
        return tuple(self._fired)

    def add(self, rule: FaultRule) -> None:
        """Append ``rule``; it counts requests from now on."""
        self._rules.append(rule)
        self._matched.append(0)
        self._fired.append(0)

    def clear(self) -> None:
        """Drop every rule and its counters."""
        self._rules.clear()
        self._matched.clear()
        self._fired.clear()

    def evaluate(self, endpoint: str) -> tuple[Firing, ...]:
        """Count one request to ``endpoint`` and return the rules that fire on it, in order."""
        firings: list[Firing] = []
        for index, rule in enumerate(self._rules):
            if not rule.applies_to(endpoint):
                continue
            self._matched[index] += 1
            if not self._due(index):
                continue
            self._fired[index] += 1
            firings.append(Firing(rule, self._fired[index]))
            if rule.kind in ANSWERING_KINDS:
                break
        return tuple(firings)

    def _due(self, index: int) -> bool:
        """Whether rule ``index`` fires on the request just counted."""
        rule = self._rules[index]
        counted = self._matched[index] - rule.after
        if counted <= 0 or (rule.times is not None and self._fired[index] >= rule.times):
            return False
        if rule.rate is not None:
            return self._rng.random() < rule.rate
        return counted % rule.every == 0


def error_body(status: int) -> JsonObject:
    """A Pleo-style ``ExceptionInfo`` for an injected error status."""
    if status == 429:
        return {"type": "TOO_MANY_REQUESTS", "message": "Rate limit exceeded. Try again later."}
    try:
        known = HTTPStatus(status)
    except ValueError:
        return {"type": "ERROR", "message": f"HTTP {status}."}
    return {"type": known.name, "message": f"{known.phrase}."}


def distort_page(
    firing: Firing, body: JsonObject, restart_cursor: str, previous: JsonObject | None
) -> JsonObject:
    """Apply a page-mutating fault to a copy of a page body."""
    data = list(body["data"])
    pagination = dict(body["pagination"])
    kind = firing.rule.kind
    if kind == "cursor_loop":
        sent = pagination["currentRequestPagination"].get("after")
        pagination["endCursor"] = sent or restart_cursor
        pagination["hasNextPage"] = True
    elif kind == "duplicate" and data:
        data.append(previous if previous is not None else data[0])
    elif kind == "total_lie":
        pagination["total"] = int(pagination.get("total", 0)) // 2
    elif kind == "total_moves":
        pagination["total"] = int(pagination.get("total", 0)) + 1
    elif kind == "skip" and data:
        data.pop()
    return {"data": data, "pagination": pagination}


def break_schema(firing: Firing, body: JsonObject, endpoint: str) -> JsonObject:
    """A copy of ``body`` whose first entry (or job) lacks or garbles a required field."""
    variants = SCHEMA_BREAKS[endpoint]
    way = firing.nth - 1 if firing.rule.variant is None else firing.rule.variant
    field, value = variants[way % len(variants)]
    data = body["data"]
    if isinstance(data, dict):
        return {**body, "data": _garble(data, field, value)}
    if not data:
        # An empty page has no entry to break; drop a required pagination field instead.
        pagination = {k: v for k, v in body["pagination"].items() if k != "hasNextPage"}
        return {"data": [], "pagination": pagination}
    return {**body, "data": [_garble(data[0], field, value), *data[1:]]}


def _garble(entry: JsonObject, field: str, value: str | None) -> JsonObject:
    """``entry`` without ``field`` (value None) or with ``field`` set to an invalid ``value``."""
    if value is None:
        return {key: item for key, item in entry.items() if key != field}
    return {**entry, field: value}


def hold_back_updates(body: bytes) -> tuple[bytes, list[JsonObject]]:
    """Remove every tenth update from a PUT body; return the rest and the errors[] for those."""
    try:
        updates = json.loads(body)
    except ValueError:
        return body, []
    if not isinstance(updates, list):
        return body, []
    kept = [u for i, u in enumerate(updates) if i % 10]
    errors = [
        {
            "accountingEntryId": u.get("accountingEntryId") if isinstance(u, dict) else None,
            "message": "Export entry status update failed.",
            "type": "ACCOUNTING_ENTRY_UPDATE_FAILED",
        }
        for i, u in enumerate(updates)
        if not i % 10
    ]
    return json.dumps(kept).encode(), errors
