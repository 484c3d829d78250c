"""Pleo's pre-export checks of one entry, and the journal lines an ERP adapter writes for it.

``to_posting`` is pure: the export item is there, every line has an expense account the ERP can
match, amounts are whole cents in one currency; it returns the lines to write, or raises
``EntryRejected`` with the failure reason and a sentence saying what the Pleo user must fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from consumers.erp import Entry, EntryRejected

# Amounts are stored in 64-bit integer columns; anything larger is not a real expense.
MAX_CENTS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class JournalLine:
    """One validated line, amounts in cents of the wallet currency (the ERP's books)."""

    line_no: int
    line_id: str | None
    account_id: str | None
    account_code: str
    account_name: str | None
    line_value: int
    net_value: int
    tax_value: int | None
    tax_code: str | None
    currency: str


@dataclass(frozen=True, slots=True)
class Posting:
    """What an adapter writes for one entry: its total, its type and its lines."""

    amount_value: int
    currency: str
    entry_type: str | None
    lines: tuple[JournalLine, ...]


def validate_entry(entry: Entry) -> None:
    """Raise EntryRejected if the ERP would refuse ``entry``; return quietly otherwise."""
    to_posting(entry)


def to_posting(entry: Entry) -> Posting:
    """The journal lines for ``entry``, or EntryRejected saying what the Pleo user must fix."""
    who = f"Entry {entry.accounting_entry_id}"
    item = entry.export_item
    if item is None:
        raise EntryRejected(
            "missing_configuration",
            f"{who} came without its export data (Pleo's data layer had none), so it cannot be "
            "booked; check the company's accounting setup (contra accounts) in Pleo and export "
            "again.",
        )
    if not isinstance(item, Mapping):
        _invalid(f"{who} has export data that is not an object")
    lines = item.get("accountingEntryLines")
    if not isinstance(lines, list) or not lines:
        _invalid(f"{who} has no accounting lines, so there is nothing to post")
    # Pleo's checks run in its order: every line's account first, then the amounts.
    accounts = [_account(line, f"{who} line {no}") for no, line in enumerate(lines, 1)]
    currency, total = _money(item.get("amount"), "amount", who)
    posted = tuple(
        _line(line, no, account, currency, f"{who} line {no}")
        for no, (line, account) in enumerate(zip(lines, accounts, strict=True), 1)
    )
    kind = item.get("type")
    return Posting(total, currency, kind if isinstance(kind, str) else None, posted)


def _invalid(what: str) -> NoReturn:
    raise EntryRejected(
        "validation_failure", f"{what}; correct the expense in Pleo and export again."
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _account(line: object, where: str) -> tuple[str | None, str, str | None]:
    """The line's (account id, code the ERP matches on, name); rejects lines without one."""
    if not isinstance(line, Mapping):
        _invalid(f"{where} is not an object")
    account = line.get("account")
    if not isinstance(account, Mapping):
        raise EntryRejected(
            "missing_configuration",
            f"{where} has no expense account (category); map the category to a GL account in "
            "Pleo and export again.",
        )
    name = _text(account.get("name"))
    code = _text(account.get("code")) or _text(account.get("identifier"))
    if code is None:
        shown = f"account {name!r}" if name else "an unnamed account"
        raise EntryRejected(
            "account_unknown",
            f"{where} uses {shown}, which has neither a code nor an "
            "identifier, so the ERP cannot match it; give it a code in Pleo's chart of accounts "
            "and export again.",
        )
    return _text(account.get("id")), code, name


def _money(pair: object, what: str, where: str) -> tuple[str, int]:
    """The wallet-currency (currency, cents) of a Pleo money pair, or a validation failure."""
    wallet = pair.get("inWalletCurrency") if isinstance(pair, Mapping) else None
    if not isinstance(wallet, Mapping):
        _invalid(f"{where} has no {what} in the wallet currency")
    currency, value = wallet.get("currency"), wallet.get("value")
    if not isinstance(currency, str) or not currency.strip() or currency == "UNDEFINED":
        _invalid(f"{where} gives its {what} without a currency")
    # bool is an int in Python, but true is not an amount; the range check comes before isfinite,
    # which cannot convert a huge int to float.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or abs(value) > MAX_CENTS
        or not math.isfinite(value)
        or value != int(value)
    ):
        _invalid(f"{where} gives its {what} as {value!r}, which is not a whole number of cents")
    return currency, int(value)


def _line(
    line: Mapping[str, Any],
    line_no: int,
    account: tuple[str | None, str, str | None],
    currency: str,
    where: str,
) -> JournalLine:
    """One line's amounts, all required to be in the entry's currency."""
    amounts: dict[str, object] = {
        "lineAmount": line.get("lineAmount"),
        "netAmount": line.get("netAmount"),
    }
    tax = line.get("tax")
    if tax is not None:
        amounts["tax amount"] = tax.get("amount") if isinstance(tax, Mapping) else None
    cents: dict[str, int] = {}
    for what, pair in amounts.items():
        found, cents[what] = _money(pair, what, where)
        if found != currency:
            _invalid(f"{where} gives its {what} in {found}, but the entry is in {currency}")
    account_id, code, name = account
    return JournalLine(
        line_no=line_no,
        line_id=_text(line.get("accountingEntryLineId")),
        account_id=account_id,
        account_code=code,
        account_name=name,
        line_value=cents["lineAmount"],
        net_value=cents["netAmount"],
        tax_value=cents.get("tax amount"),
        tax_code=_text(tax.get("code")) if isinstance(tax, Mapping) else None,
        currency=currency,
    )
