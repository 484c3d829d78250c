"""The reference ERP adapter: Pleo's pre-export checks, and a journal that holds each entry once.

The validation tests are pure. The journal tests run on SQLite (a file in tmp_path) and on the
PostgreSQL at ERP_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test), whose two
tables are dropped before and after each test.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import os
import pickle
import random
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from consumers.erp import Entry, EntryRejected, ERPAdapter, ERPUnavailable, ExternalRef
from consumers.erp_sql import SqlJournal, engine_url, journal_entries
from consumers.posting import to_posting, validate_entry
from contract.errors import BadInput
from contract.settings import redact_url
from devtools.simulator.payloads import export_item
from tests.conftest import need_service

pytestmark = pytest.mark.integration

PG_URL = os.environ.get("ERP_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEMPLATE = "https://erp.example.com/journal/{external_id}"
JOB = "5b0c7a3e-1d2f-4e6a-9b8c-0d1e2f3a4b5c"
COMPANY = "8f7e6d5c-4b3a-4291-8e7f-6a5b4c3d2e1f"
ENTRY = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
SHARED_ENTRIES = 50


# --- payloads ------------------------------------------------------------------------------------


def money(cents: Any, currency: Any = "DKK") -> dict[str, Any]:
    """A Pleo money pair whose wallet amount is ``cents`` in ``currency``."""
    return {
        "inSupplierCurrency": {"currency": "EUR", "value": 1},
        "inWalletCurrency": {"currency": currency, "value": cents},
    }


def line(cents: int = 12_500, *, code: str | None = "6840", name: str = "Travel") -> dict[str, Any]:
    """An accounting entry line with an account, 25 % inclusive tax, in DKK."""
    net = cents * 4 // 5
    return {
        "accountingEntryLineId": f"line-{cents}",
        "account": {"id": f"acc-{code}", "name": name, "code": code, "identifier": code},
        "lineAmount": money(cents),
        "netAmount": money(net),
        "tax": {
            "id": "tax-i25",
            "rate": 0.25,
            "type": "inclusive",
            "code": "I25",
            "amount": money(cents - net),
        },
    }


def item(*lines: dict[str, Any]) -> dict[str, Any]:
    """An ExportItemV3 with ``lines`` (two default lines if none are given)."""
    lines = lines or (line(12_500), line(2_500, code="6550", name="Software subscriptions"))
    values = [each["lineAmount"]["inWalletCurrency"]["value"] for each in lines]
    # A deliberately broken line amount must not break the entry's total too.
    total = sum(value for value in values if type(value) is int)
    return {
        "accountingEntryId": ENTRY,
        "accountingEntryLines": list(lines),
        "amount": money(total),
        "companyId": COMPANY,
        "date": "2026-03-01T09:30:00Z",
        "type": "card_purchase",
    }


def entry(payload: Any, entry_id: str = ENTRY, sequence: int = 0) -> Entry:
    """The Entry a worker would build from a message carrying ``payload``."""
    return Entry(entry_id, JOB, COMPANY, sequence, "2026-03-01T09:30:00Z", payload)


def simulated_entries(count: int, seed: int = 42) -> list[Entry]:
    """``count`` entries with the Pleo simulator's payloads; the same seed gives the same ones."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    entries = []
    for n in range(count):
        entry_id = f"{seed:04d}0000-0000-4000-8000-{n:012d}"
        booked = start + timedelta(minutes=n)
        payload = export_item(rng, entry_id, COMPANY, booked, with_account=True, vendor_based=False)
        entries.append(Entry(entry_id, JOB, COMPANY, n, payload["date"], payload))
    return entries


# --- validation (pure) ---------------------------------------------------------------------------


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def with_wallet(pair: dict[str, Any], **wallet: Any) -> dict[str, Any]:
    return {**pair, "inWalletCurrency": {**pair["inWalletCurrency"], **wallet}}


REJECTIONS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "no export item": (lambda: None, "missing_configuration", "came without its export data"),
    "no lines": (
        lambda: item() | {"accountingEntryLines": []},
        "validation_failure",
        "no accounting lines",
    ),
    "lines absent": (
        lambda: without(item(), "accountingEntryLines"),
        "validation_failure",
        "no accounting lines",
    ),
    "account null": (
        lambda: item(line(), line() | {"account": None}),
        "missing_configuration",
        "line 2 has no expense account (category); map the category to a GL account in Pleo",
    ),
    "account absent": (
        lambda: item(line(), without(line(), "account")),
        "missing_configuration",
        "line 2 has no expense account",
    ),
    "account without code or identifier": (
        lambda: item(line(code=None)),
        "account_unknown",
        "line 1 uses account 'Travel', which has neither a code nor an identifier",
    ),
    "amount as text": (
        lambda: item(line() | {"netAmount": money("100.00")}),
        "validation_failure",
        "line 1 gives its netAmount as '100.00', which is not a whole number of cents",
    ),
    "fractional cents": (
        lambda: item(line() | {"lineAmount": money(12.5)}),
        "validation_failure",
        "line 1 gives its lineAmount as 12.5, which is not a whole number of cents",
    ),
    "boolean amount": (
        lambda: item(line() | {"lineAmount": money(True)}),
        "validation_failure",
        "gives its lineAmount as True, which is not",
    ),
    "line in another currency": (
        lambda: item(line(), line() | {"lineAmount": with_wallet(money(100), currency="EUR")}),
        "validation_failure",
        "line 2 gives its lineAmount in EUR, but the entry is in DKK",
    ),
    "tax in another currency": (
        lambda: item(line() | {"tax": {"amount": money(5, currency="SEK")}}),
        "validation_failure",
        "line 1 gives its tax amount in SEK, but the entry is in DKK",
    ),
    "no wallet amount": (
        lambda: item(
            line() | {"netAmount": {"inSupplierCurrency": {"currency": "EUR", "value": 1}}}
        ),
        "validation_failure",
        "line 1 has no netAmount in the wallet currency",
    ),
    "entry amount absent": (
        lambda: without(item(), "amount"),
        "validation_failure",
        "has no amount",
    ),
    "missing account beats bad amount": (
        lambda: item(line() | {"netAmount": money("x")}, line() | {"account": None}),
        "missing_configuration",
        "line 2 has no expense account",
    ),
}


@pytest.mark.parametrize("case", REJECTIONS)
def test_validation_rejects_with_pleos_reason_type(case: str) -> None:
    """Each broken entry is rejected with the right failureReasonType and a sentence naming it."""
    payload, reason_type, fragment = REJECTIONS[case]
    with pytest.raises(EntryRejected) as caught:
        validate_entry(entry(payload()))
    assert caught.value.reason_type == reason_type
    assert caught.value.reason.startswith(f"Entry {ENTRY} ")
    assert fragment in caught.value.reason
    assert caught.value.reason.endswith("export again.")
    assert str(caught.value) == caught.value.reason


def test_valid_entry_becomes_lines_in_wallet_cents() -> None:
    """A good entry passes, and each line keeps its account, gross, net and tax in wallet cents."""
    posting = to_posting(
        entry(item(line(12_500), line(2_500, code=None) | {"account": {"identifier": "6550"}}))
    )
    assert (posting.amount_value, posting.currency, posting.entry_type) == (
        15_000,
        "DKK",
        "card_purchase",
    )
    first, second = posting.lines
    assert (first.line_no, first.account_code, first.account_name) == (1, "6840", "Travel")
    assert (first.line_value, first.net_value, first.tax_value, first.tax_code) == (
        12_500,
        10_000,
        2_500,
        "I25",
    )
    assert (second.line_no, second.account_code, second.account_name) == (2, "6550", None)


def test_simulator_payloads_validate() -> None:
    """Every payload the Pleo simulator builds with accounts passes, one journal line per line."""
    for each in simulated_entries(30):
        assert each.export_item is not None
        posting = to_posting(each)
        assert len(posting.lines) == len(each.export_item["accountingEntryLines"])
        assert posting.currency == "DKK"


def test_rejection_survives_pickling() -> None:
    """EntryRejected keeps its reason type and sentence when Celery copies it between processes."""
    copied = pickle.loads(pickle.dumps(EntryRejected("account_unknown", "Entry x has no code.")))  # noqa: S301
    assert (copied.reason_type, copied.reason) == ("account_unknown", "Entry x has no code.")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_wallet = st.fixed_dictionaries(
    {
        "currency": st.sampled_from(["DKK", "EUR", "UNDEFINED", ""]) | _json,
        "value": st.integers() | _json,
    }
)
_pair = st.fixed_dictionaries({"inWalletCurrency": _wallet}) | _json
_account = st.fixed_dictionaries(
    {"name": _json, "code": st.text(max_size=4) | _json, "identifier": _json}
)
_line = (
    st.fixed_dictionaries(
        {
            "account": _account | _json,
            "lineAmount": _pair,
            "netAmount": _pair,
            "tax": st.none() | st.fixed_dictionaries({"amount": _pair, "code": _json}),
        }
    )
    | _json
)
_item = (
    st.fixed_dictionaries(
        {"accountingEntryLines": st.lists(_line, max_size=3) | _json, "amount": _pair}
    )
    | _json
)


@settings(max_examples=300, deadline=None)
@given(_item)
def test_malformed_payloads_are_rejected_never_crash(payload: Any) -> None:
    """Whatever JSON arrives, validation returns lines or raises EntryRejected, nothing else."""
    try:
        posting = to_posting(entry(payload))
    except EntryRejected as rejected:
        reason = rejected.reason
    else:
        assert [each.line_no for each in posting.lines] == list(range(1, len(posting.lines) + 1))
        assert {each.currency for each in posting.lines} == {posting.currency}
        return
    assert reason.startswith(f"Entry {ENTRY} ")


def test_postgres_urls_use_psycopg_and_bad_urls_are_not_echoed() -> None:
    """postgres:// and postgresql:// get the psycopg 3 driver; an unparsable URL is not repeated."""
    assert engine_url("postgres://u:p@db/erp").drivername == "postgresql+psycopg"
    assert engine_url("postgresql://u:p@db/erp").drivername == "postgresql+psycopg"
    assert engine_url("sqlite:///erp.sqlite3").drivername == "sqlite"
    with pytest.raises(BadInput) as caught:
        SqlJournal("not a url with s3cret")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(BadInput):
        SqlJournal("sqlite:///x.sqlite3", url_template="https://erp/{entry}")


def test_unknown_database_kinds_and_missing_drivers_are_bad_settings() -> None:
    """garbage:// and a driver that is not installed give BadInput in one sentence, no password."""
    with pytest.raises(BadInput) as unknown:
        SqlJournal("garbage://x")
    assert str(unknown.value) == (
        "ERP_DATABASE_URL names the database kind 'garbage', which SQLAlchemy has no dialect for "
        "(try sqlite:///path or postgresql://...)."
    )
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here, so mysql:// lacks no driver")
    with pytest.raises(BadInput) as missing:
        SqlJournal("mysql://erp:s3cret@db/erp")
    assert str(missing.value) == (
        "ERP_DATABASE_URL needs the Python module 'MySQLdb' for mysql, which is not installed."
    )


# --- the journal, on SQLite and PostgreSQL -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty journal database: a SQLite file, or PostgreSQL with our tables dropped."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'erp-journal.sqlite3'}"
        return
    with SqlJournal(PG_URL) as tables:
        try:
            tables.drop_tables()
        except ERPUnavailable:
            need_service(f"PostgreSQL at {redact_url(PG_URL)}")
        yield PG_URL
        tables.drop_tables()


@pytest.fixture
def journal(journal_url: str) -> Iterator[SqlJournal]:
    """A SqlJournal on ``journal_url`` with its tables created, closed after the test."""
    with SqlJournal(journal_url, url_template=TEMPLATE) as journal:
        assert journal.entries_count() == 0
        yield journal


def test_post_then_find_returns_the_same_ref(journal: SqlJournal) -> None:
    """find answers None before a post and the posted ref after it, link and timestamp included."""
    adapter: ERPAdapter = journal
    assert adapter.find(ENTRY) is None
    ref = adapter.post(entry(item()))
    assert ref == ExternalRef(
        "JE-000001", "https://erp.example.com/journal/JE-000001", ref.exported_at
    )
    assert datetime.strptime(ref.exported_at, "%Y-%m-%dT%H:%M:%SZ")
    assert adapter.find(ENTRY) == ref


def test_posting_twice_keeps_one_entry_and_its_lines_once(journal: SqlJournal) -> None:
    """A repeated post returns the first ref and adds no entry row and no line."""
    first = journal.post(entry(item()))
    assert journal.post(entry(item())) == first
    assert (journal.entries_count(), journal.lines_count()) == (1, 2)


def test_lines_are_stored_with_accounts_and_amounts(journal: SqlJournal) -> None:
    """Entries come back in posting order, with payloads and their lines' accounts and cents."""
    sims = simulated_entries(3)
    for each in [entry(item()), *sims]:
        journal.post(each)
    rows = journal.journal()
    assert [row["accounting_entry_id"] for row in rows] == [ENTRY] + [
        s.accounting_entry_id for s in sims
    ]
    assert [row["external_id"] for row in rows] == [
        "JE-000001",
        "JE-000002",
        "JE-000003",
        "JE-000004",
    ]
    mine = rows[0]
    assert (mine["job_id"], mine["company_id"], mine["sequence"]) == (JOB, COMPANY, 0)
    assert (mine["amount_value"], mine["amount_currency"], mine["entry_type"]) == (
        15_000,
        "DKK",
        "card_purchase",
    )
    assert mine["payload"] == item()
    assert [
        (
            ln["line_no"],
            ln["account_code"],
            ln["account_name"],
            ln["line_value"],
            ln["net_value"],
            ln["tax_value"],
            ln["currency"],
        )
        for ln in mine["lines"]
    ] == [
        (1, "6840", "Travel", 12_500, 10_000, 2_500, "DKK"),
        (2, "6550", "Software subscriptions", 2_500, 2_000, 500, "DKK"),
    ]
    for row, sim in zip(rows[1:], sims, strict=True):
        assert sim.export_item is not None
        expected = [
            (each["account"]["code"], each["netAmount"]["inWalletCurrency"]["value"])
            for each in sim.export_item["accountingEntryLines"]
        ]
        assert [(ln["account_code"], ln["net_value"]) for ln in row["lines"]] == expected
    assert journal.lines_count() == sum(len(row["lines"]) for row in rows)


def test_rejected_entry_writes_nothing(journal: SqlJournal) -> None:
    """An entry that fails validation raises EntryRejected and leaves the journal empty."""
    with pytest.raises(EntryRejected):
        journal.post(entry(item(line() | {"account": None})))
    assert (journal.entries_count(), journal.lines_count()) == (0, 0)


def test_post_that_loses_a_race_returns_the_winners_ref(
    journal: SqlJournal, journal_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A post blocked behind another transaction inserting the same entry returns that row."""
    caplog.set_level(logging.INFO, logger="consumers.erp_sql")
    rival = create_engine(engine_url(journal_url))
    try:
        with ThreadPoolExecutor(1) as pool, rival.begin() as conn:
            conn.execute(
                journal_entries.insert().values(
                    accounting_entry_id=ENTRY,
                    external_id="JE-RIVAL",
                    job_id=JOB,
                    sequence=0,
                    posted_at="2026-03-01T10:00:00Z",
                    amount_value=15_000,
                    amount_currency="DKK",
                )
            )
            posting = pool.submit(journal.post, entry(item()))
            # Long enough for post to find nothing and block on the rival's uncommitted row.
            time.sleep(0.5)
            assert not posting.done()
        ref = posting.result(timeout=20)
    finally:
        rival.dispose()
    assert ref == ExternalRef(
        "JE-RIVAL", "https://erp.example.com/journal/JE-RIVAL", "2026-03-01T10:00:00Z"
    )
    assert "erp_entry_post_raced" in caplog.text
    assert (journal.entries_count(), journal.lines_count()) == (1, 0)


def _post_shared_entries(url: str, start: Any, out: str) -> None:
    """Child process: post the shared entries as soon as the sibling process is ready too."""
    entries = simulated_entries(SHARED_ENTRIES)
    with SqlJournal(url) as journal:
        start.wait(timeout=30)
        refs = {each.accounting_entry_id: journal.post(each).external_id for each in entries}
    Path(out).write_text(json.dumps(refs))


def test_two_processes_posting_the_same_entries_leave_one_row_each(
    journal_url: str, tmp_path: Path
) -> None:
    """Two processes posting the same 50 entries at once, tables not yet made, leave 50 rows."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    outs = [tmp_path / f"refs-{n}.json" for n in range(2)]
    procs = [
        ctx.Process(target=_post_shared_entries, args=(journal_url, start, str(out)))
        for out in outs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        proc.close()
    first, second = (json.loads(out.read_text()) for out in outs)
    assert first == second
    assert len(set(first.values())) == SHARED_ENTRIES
    lines = sum(
        len(each.export_item["accountingEntryLines"])
        for each in simulated_entries(SHARED_ENTRIES)
        if each.export_item is not None
    )
    with SqlJournal(journal_url) as journal:
        assert (journal.entries_count(), journal.lines_count()) == (SHARED_ENTRIES, lines)


# --- failures and files --------------------------------------------------------------------------


def test_unreachable_postgres_is_unavailable_and_never_shows_the_password() -> None:
    """A refused PostgreSQL connection gives ERPUnavailable; no message or repr has the password."""
    with SqlJournal("postgresql://erp:s3cret-Pa55@127.0.0.1:1/erp") as journal:
        with pytest.raises(ERPUnavailable) as caught:
            journal.post(entry(item()))
        with pytest.raises(ERPUnavailable):
            journal.find(ENTRY)
        assert "s3cret" not in repr(journal)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "erp:***@" in message
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))


def test_sqlite_journal_creates_its_folder(tmp_path: Path) -> None:
    """A SQLite journal in a folder that does not exist yet creates the folder and the file."""
    path = tmp_path / "erp" / "books" / "journal.sqlite3"
    with SqlJournal(f"sqlite:///{path}") as journal:
        journal.post(entry(item()))
        assert journal.entries_count() == 1
    assert path.is_file()
