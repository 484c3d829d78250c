"""``ExportItemV3`` payloads: plausible accounting data, drawn from a seeded RNG.

Every required field of the spec is present, with the optional ones an ERP adapter usually reads
(note, supplier, team, user, files, tax); reference data (accounts, teams, users) keeps the same ids
across jobs and runs.
"""

from __future__ import annotations

import functools
import random
import uuid
from datetime import datetime, timedelta

from devtools.simulator.enums import EXPORT_ITEM_TYPES
from devtools.simulator.records import JsonObject, timestamp

# Wallet currency is DKK; the rates only need to look plausible.
_DKK_PER_UNIT = {"DKK": 1.0, "EUR": 7.46, "SEK": 0.65, "GBP": 8.6, "USD": 6.9}
_ACCOUNTS = (
    ("Meals and Entertainment", "6840"),
    ("Travel", "6860"),
    ("Software subscriptions", "6550"),
    ("Office supplies", "6800"),
    ("Fuel", "7140"),
)
_TEAMS = ("Marketing", "Sales", "Engineering", "Finance")
_USERS = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov")
_SUPPLIERS = (("GOOGLE*ADS", "7311"), ("SAS Airlines", "3007"), ("Cafe Norden", "5812"))
_NOTES = ("Team lunch", "Client dinner", "Taxi to the airport", "Annual licence", None)
# Card purchases dominate real exports; the rest of the enum still shows up.
_TYPES = ("card_purchase",) * 6 + EXPORT_ITEM_TYPES


def seeded_uuid(rng: random.Random) -> str:
    """Draw a version-4 UUID from ``rng`` (so ids repeat with the seed)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@functools.cache
def named_uuid(name: str) -> str:
    """A UUID fixed by ``name``, for reference data shared by every job (accounts, teams, users).

    Cached: the names are a few dozen, asked for eight times per export item.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pleo-simulator/{name}"))


def _money(currency: str, cents: int) -> JsonObject:
    return {"currency": currency, "value": cents}


def _pair(currency: str, cents: int) -> JsonObject:
    """An amount in supplier currency and in the (DKK) wallet currency."""
    wallet = round(cents * _DKK_PER_UNIT[currency])
    return {
        "inSupplierCurrency": _money(currency, cents),
        "inWalletCurrency": _money("DKK", wallet),
    }


def _line(rng: random.Random, currency: str, cents: int, *, with_account: bool) -> JsonObject:
    name, code = rng.choice(_ACCOUNTS)
    net = round(cents / 1.25)
    account = {"id": named_uuid(f"account/{code}"), "name": name, "code": code, "identifier": code}
    return {
        "accountingEntryLineId": seeded_uuid(rng),
        "lineAmount": _pair(currency, cents),
        "netAmount": _pair(currency, net),
        "account": account if with_account else None,
        "tags": [{"id": named_uuid("tag/DEPT-1"), "code": "DEPT-1", "groupCode": "DEPT"}],
        "tax": {
            "id": named_uuid("tax/I25"),
            "rate": 0.25,
            "type": "inclusive",
            "code": "I25",
            "amount": _pair(currency, cents - net),
        },
    }


def export_item(
    rng: random.Random,
    entry_id: str,
    company_id: str,
    booked: datetime,
    *,
    with_account: bool,
    vendor_based: bool,
) -> JsonObject:
    """One ``ExportItemV3`` with every required field and the usual optional ones."""
    kind = rng.choice(_TYPES)
    currency = rng.choice(sorted(_DKK_PER_UNIT))
    cents = rng.randrange(500, 500_000)
    first = rng.randrange(100, cents) if rng.random() < 0.3 else cents
    parts = [first, cents - first] if first < cents else [cents]
    lines = [_line(rng, currency, part, with_account=with_account) for part in parts]
    supplier, category = rng.choice(_SUPPLIERS)
    team, user = rng.choice(_TEAMS), rng.choice(_USERS)
    invoice = None
    if kind == "invoice":
        invoice = {
            "invoiceNumber": f"INV-{rng.randrange(10**5):05d}",
            "invoiceDate": booked.strftime("%Y-%m-%d"),
            "dueDate": (booked + timedelta(days=30)).strftime("%Y-%m-%d"),
            "paymentDate": None,
            "status": "paid",
            "supplierBankAccount": None,
        }
    vendor = {
        "id": named_uuid(f"vendor/{supplier}"),
        "name": supplier,
        "defaultCurrency": currency,
        "code": f"V-{category}",
        "externalId": f"V-{category}",
        "country": "DK",
        "registrationNumber": "12345678",
        "taxRegistrationNumber": "DK12345678",
    }
    link = f"https://app.pleo.io/export/items/{entry_id}"
    return {
        "_links": {
            "web": {"exportItem": link},
            "mobile": {"exportItem": f"pleo://export/items/{entry_id}"},
            "api": {"exportItem": f"https://external.pleo.io/v3/export-items/{entry_id}"},
        },
        "accountingEntryId": entry_id,
        "accountingEntryLines": lines,
        "additionalInformation": {
            "reconciliationId": f"B{rng.randrange(10**7):07d}",
            "attendees": None,
            "reconciledEntries": None,
            "invoiceInformation": invoice,
        },
        "amount": _pair(currency, cents),
        "bookkeeping": {"method": "accounts_payable" if vendor_based else "journal"},
        "companyId": company_id,
        "contraAccount": {
            "id": named_uuid("contra/5820"),
            "name": "Pleo DKK Account",
            "code": "5820",
            "identifier": None,
        },
        "date": timestamp(booked),
        "files": [
            {
                "url": f"https://files.pleo.io/receipts/{entry_id}.pdf",
                "type": "application/pdf",
                "size": rng.randrange(10_000, 900_000),
            }
        ],
        "note": rng.choice(_NOTES),
        "servicePeriod": None,
        "subType": None,
        "supplier": {
            "name": supplier,
            "code": None,
            "account": None,
            "categoryCode": category,
            "country": "DK",
            "taxIdentifier": None,
        },
        "team": {"id": named_uuid(f"team/{team}"), "name": team, "code": team[:3].upper()},
        "type": kind,
        "user": {"id": named_uuid(f"user/{user}"), "name": user, "code": None},
        "vendor": vendor if vendor_based else None,
    }
