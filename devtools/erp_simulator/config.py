"""How the simulated ERP behaves: one frozen config, replaced whole when the control API patches."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.erp_http import ENTRY_FIELDS, LINE_FIELDS


@dataclass(frozen=True, slots=True)
class ErpSimConfig:
    """The simulated ERP's limits, faults and rules (each one settable by ``PATCH /_sim/config``).

    ``calls`` per ``period`` seconds is a sliding window over the calls it admitted (None: no
    rate limit); ``concurrency`` caps requests in flight (None: no cap). A refused call answers
    429 with ``Retry-After`` in whole seconds, rounded up, unless ``fractional_retry_after``.
    ``latency`` seconds are added to every admitted call; ``fail_rate`` of them answer
    ``fail_status`` and ``timeout_rate`` hang ``hang`` seconds (after booking the entry first if
    ``timeout_books``: the answer, not the booking, is lost), drawn from a ``seed``-ed RNG.
    ``key_window``: seconds an ``Idempotency-Key`` is remembered. ``unknown_accounts``: account
    codes the chart of accounts lacks (entries using one get 422, ``account_unknown``);
    ``unknown_tax_codes`` likewise (``tax_code_unknown``).
    ``token``: the bearer token every ``/journal`` call must carry (None: no auth).
    ``fields``: the ERP's names for the entry fields (default name -> ERP name), as the
    adapter's ``ERP_HTTP_FIELDS`` gives them (``consumers/erp_http.py`` lists the fields).
    """

    calls: int | None = None
    period: float = 1.0
    concurrency: int | None = None
    fractional_retry_after: bool = False
    latency: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    timeout_rate: float = 0.0
    hang: float = 30.0
    timeout_books: bool = False
    seed: int = 0
    key_window: float = 24 * 3600.0
    batch_max: int = 100
    unknown_accounts: frozenset[str] = frozenset()
    unknown_tax_codes: frozenset[str] = frozenset()
    token: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values no ERP could have (a ValueError the control API answers 400 with)."""
        for name in ("calls", "concurrency"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number or null, not {value!r}.")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}.")
        for name in ("period", "latency", "hang", "key_window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds, not {value!r}.")
        if self.period <= 0:
            raise ValueError("period must be more than 0 seconds.")
        for name in ("fail_rate", "timeout_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}.")
        if not isinstance(self.fail_status, int) or not 500 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be a 5xx status, not {self.fail_status!r}.")
        if not isinstance(self.batch_max, int) or self.batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {self.batch_max!r}.")
        unknown = set(self.fields) - {*ENTRY_FIELDS, *LINE_FIELDS}
        if unknown:
            raise ValueError(f"fields names no entry field {sorted(unknown)}.")
        # Hashable and immutable once built, whatever the caller handed in.
        for name in ("unknown_accounts", "unknown_tax_codes"):
            object.__setattr__(self, name, frozenset(getattr(self, name) or ()))
        object.__setattr__(self, "fields", dict(self.fields))

    def name(self, canonical: str) -> str:
        """The ERP's name for the entry field ``canonical``."""
        return self.fields.get(canonical, canonical)

    def patched(self, changes: Mapping[str, Any]) -> ErpSimConfig:
        """This config with ``changes`` (field name -> JSON value); ValueError for a bad one."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"No such setting: {', '.join(sorted(unknown))}.")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The config as ``GET /_sim/config`` shows it (the token hidden)."""
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["unknown_accounts"] = sorted(self.unknown_accounts)
        shown["unknown_tax_codes"] = sorted(self.unknown_tax_codes)
        shown["token"] = None if self.token is None else "***"
        return shown
