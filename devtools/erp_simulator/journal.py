"""What the simulated journal accepts: an entry body checked against the chart of accounts (pure).

An entry is refused with one of Pleo's item failure reason types (``pleo.models``), so an adapter
can hand the ERP's own reason on: ``account_unknown`` / ``tax_code_unknown`` for a code the ERP
does not have, ``accounting_system_validation_failure`` for a body it cannot book.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devtools.erp_simulator.config import ErpSimConfig
from pleo.models import ItemFailureReason


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the journal will not book an entry."""

    reason_type: ItemFailureReason
    reason: str


@dataclass(frozen=True, slots=True)
class Checked:
    """An entry body as read: its id (None if it gave none) and the refusal, if any."""

    accounting_entry_id: str | None
    refusal: Refusal | None


def check_entry(body: Any, config: ErpSimConfig) -> Checked:
    """Read one entry body with the ERP's field names and decide whether it can be booked."""
    if not isinstance(body, Mapping):
        return Checked(None, _invalid("The entry is not a JSON object."))
    id_field = config.name("accountingEntryId")
    entry_id = body.get(id_field)
    if not isinstance(entry_id, str) or not entry_id.strip():
        return Checked(None, _invalid(f"The entry has no {id_field}."))
    return Checked(entry_id, _refusal(body, config))


def _refusal(body: Mapping[str, Any], config: ErpSimConfig) -> Refusal | None:
    name = config.name
    for required in ("date", "currency"):
        if not isinstance(body.get(name(required)), str):
            return _invalid(f"The entry has no {name(required)}.")
    amount = body.get(name("amount"))
    if isinstance(amount, bool) or not isinstance(amount, int):
        return _invalid(f"The entry's {name('amount')} is not a whole number of cents.")
    lines = body.get(name("lines"))
    if not isinstance(lines, list) or not lines:
        return _invalid(f"The entry has no {name('lines')}.")
    for number, line in enumerate(lines, 1):
        refusal = _line_refusal(number, line, config)
        if refusal is not None:
            return refusal
    return None


def _line_refusal(number: int, line: Any, config: ErpSimConfig) -> Refusal | None:
    name = config.name
    if not isinstance(line, Mapping):
        return _invalid(f"Line {number} is not a JSON object.")
    code = line.get(name("accountCode"))
    if not isinstance(code, str) or not code:
        return _invalid(f"Line {number} has no {name('accountCode')}.")
    if code in config.unknown_accounts:
        return Refusal(
            "account_unknown", f"Line {number} uses account {code}, which is not in the chart."
        )
    tax_code = line.get(name("taxCode"))
    if isinstance(tax_code, str) and tax_code in config.unknown_tax_codes:
        return Refusal(
            "tax_code_unknown", f"Line {number} uses tax code {tax_code}, which is unknown."
        )
    value = line.get(name("lineAmount"))
    if isinstance(value, bool) or not isinstance(value, int):
        return _invalid(f"Line {number}'s {name('lineAmount')} is not a whole number.")
    return None


def _invalid(reason: str) -> Refusal:
    return Refusal("accounting_system_validation_failure", reason)
