"""Receipts: downloads from the Pleo simulator into the SQL journal, and each failure's reason.

``Receipts.transfer`` runs here in the test process against the real simulator (its file URLs,
their expiry, real bytes) and a real SQLite journal; the pipeline with real workers is
tests/e2e/test_receipts.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from urllib.parse import parse_qs, urlsplit

import pytest

from consumers.erp import (
    Attachment,
    Entry,
    EntryRejected,
    ERPUnavailable,
    ExternalRef,
    accepts_attachments,
)
from consumers.erp_http import HttpJournal
from consumers.erp_sql import SqlJournal
from consumers.receipts import RENEW_MARGIN, Receipts, ReceiptSettings
from contract.retrying import RetryPolicy
from contract.settings import Settings
from devtools.erp_simulator import RunningErpSimulator
from devtools.simulator import JobSpec, RunningSimulator, SimState
from devtools.simulator.files import ReceiptFiles, content_of
from pleo.client import PleoClient, make_http_client
from tests.support.metrics import Registry
from tests.support.postgres import PG_URL, empty_journal

pytestmark = pytest.mark.integration

DAY = 24 * 3600.0


def fetched_entries(settings: Settings, job_id: str) -> list[Entry]:
    """The job's entries as a producer reads them: export items fetched now."""
    with make_http_client(settings) as http:
        items = [
            i for page in PleoClient(http, settings).iter_export_items(job_id) for i in page.items
        ]
    return [
        Entry(i.accounting_entry_id, job_id, None, n, i.date, i.payload)
        for n, i in enumerate(items)
    ]


OPENED: list[Receipts] = []


@pytest.fixture(autouse=True)
def _close_receipts() -> object:
    yield
    while OPENED:
        OPENED.pop().close()


def receipts_for(settings: Settings, http_client: PleoClient, **overrides: object) -> Receipts:
    values = {
        "enabled": True,
        "max_bytes": 64 * 1024,
        "types": frozenset(settings.erp_receipt_types),
        "url_lifetime": 2.0,
        "timeout": 2.0,
        **overrides,
    }
    policy = RetryPolicy(
        attempts=3, budget=5.0, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.1
    )
    OPENED.append(Receipts(ReceiptSettings(**values), http_client, retry=policy))  # type: ignore[arg-type]
    return OPENED[-1]


@pytest.fixture
def journal(erp_journal_url: str) -> SqlJournal:
    with SqlJournal(erp_journal_url) as journal:
        yield journal  # type: ignore[misc]


@pytest.fixture
def pleo(settings: Settings) -> PleoClient:
    http = make_http_client(settings)
    yield PleoClient(http, settings)  # type: ignore[misc]
    http.close()


def reason(refused: EntryRejected | None) -> str | None:
    """The refusal's reason type, None when the receipts were transferred."""
    return None if refused is None else refused.reason_type


def booked(journal: SqlJournal, entry: Entry) -> ExternalRef:
    return journal.post(entry)


def test_expired_urls_are_renewed_and_every_receipt_stored_once(
    settings: Settings,
    sim_state: SimState,
    journal: SqlJournal,
    pleo: PleoClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """URLs past their life are renewed from the data layer (up front when the fetch time is
    known, after a 403 when it is not); each file is stored once, its bytes intact, a replay
    stores nothing; no file URL (a credential) reaches any log line, httpx's included."""
    caplog.set_level(logging.DEBUG)
    sim_state.receipts.configure(lifetime=1.0, size=3000)
    job_id = sim_state.add_job(JobSpec(items=4, item_statuses={"pending": 1.0}))
    fetched_at = time.time()
    entries = fetched_entries(settings, job_id)
    time.sleep(1.2)  # every URL the fetch gave is now expired
    # Renewed URLs last a minute: a loaded machine may take over a second for the four files, and
    # a renewed URL expiring again is not what this test is about.
    sim_state.receipts.configure(lifetime=60.0)
    receipts = receipts_for(settings, pleo, url_lifetime=1.0)
    before = Registry()
    for n, entry in enumerate(entries):
        known = fetched_at if n % 2 == 0 else None  # odd ones: the fetch time is unknown
        assert receipts.transfer(journal, entry, booked(journal, entry), fetched_at=known) is None
    counts = sim_state.receipts.counts()
    # The unknown-age URLs were tried (403) then renewed; the known-age ones were not tried.
    assert counts["expired"] == 2
    assert counts["downloads"] == 4
    stored = journal.attachments()
    assert sorted(r["accounting_entry_id"] for r in stored) == sorted(
        e.accounting_entry_id for e in entries
    )
    assert {r["size"] for r in stored} == {3000}
    first = stored[0]
    assert journal.attachment_content(first["accounting_entry_id"], first["sha256"]) == content_of(
        first["accounting_entry_id"], 0, 3000
    )
    # A replay (the same entry again, its URLs renewed once more) adds no row.
    entry = entries[0]
    assert receipts.transfer(journal, entry, booked(journal, entry), fetched_at=fetched_at) is None
    assert len(journal.attachments()) == 4
    # Counted: each file the journal took (the replay's again), its bytes, each download.
    taken = [*stored, first]
    assert before.delta("pleo_export_receipts_transferred_total") == len(taken)
    assert before.delta("pleo_export_receipt_bytes_total") == sum(r["size"] for r in taken)
    # One delivered download per file taken (a retried one, served twice on a loaded machine,
    # is still one).
    downloads = before.delta("pleo_export_receipt_download_seconds_count")
    assert downloads == len(taken) <= sim_state.receipts.counts()["downloads"]
    assert before.delta("pleo_export_receipt_download_seconds_sum") > 0
    assert before.delta("pleo_export_receipt_failures_total") == 0
    assert "receipt_attached" in caplog.text
    # The simulator's own access log (uvicorn, in this process) aside, no line names a URL.
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("uvicorn")]
    assert [line for line in ours if "/files/" in line or "sig=" in line] == []


def test_oversized_files_are_refused_declared_or_streamed(
    settings: Settings, sim_state: SimState, journal: SqlJournal, pleo: PleoClient
) -> None:
    """A file declared over the cap is refused without a download; one whose declared size lies
    is cut off as it streams; both are receipt_file_size_limit_exceeded, nothing is stored."""
    job_id = sim_state.add_job(JobSpec(items=2, item_statuses={"pending": 1.0}))
    receipts = receipts_for(settings, pleo, max_bytes=4096, url_lifetime=DAY)
    sim_state.receipts.configure(size=5000)
    before = Registry()
    seen: list[str | None] = []
    declared = fetched_entries(settings, job_id)[0]
    refused = receipts.transfer(
        journal, declared, booked(journal, declared), fetched_at=time.time()
    )
    assert reason(refused) == "receipt_file_size_limit_exceeded"
    seen.append(reason(refused))
    assert sim_state.receipts.counts()["downloads"] == 0
    sim_state.receipts.configure(size=50_000, declared_size=100)
    lying = fetched_entries(settings, job_id)[1]
    refused = receipts.transfer(journal, lying, booked(journal, lying), fetched_at=time.time())
    assert reason(refused) == "receipt_file_size_limit_exceeded"
    seen.append(reason(refused))
    assert "4096" in refused.reason
    assert "https://" not in refused.reason
    assert "http://" not in refused.reason
    assert sim_state.receipts.counts()["downloads"] == 1
    assert journal.attachments() == []
    size_failures = "pleo_export_receipt_failures_total"
    for kind in set(seen):
        assert before.delta(size_failures, reason=str(kind)) == seen.count(kind)
    assert before.delta(size_failures) == len(seen)
    assert before.delta("pleo_export_receipts_transferred_total") == 0
    assert before.delta("pleo_export_receipt_download_seconds_count") == 0  # none delivered


def test_types_and_downloads_map_to_their_reasons(
    settings: Settings, sim_state: SimState, journal: SqlJournal, pleo: PleoClient
) -> None:
    """A type the ERP does not take is receipt_conversion_failure (declared or served); a
    download failing past the retry policy is receipt_download_failure; a 503 then a success
    transfers the file."""
    job_id = sim_state.add_job(JobSpec(items=4, item_statuses={"pending": 1.0}))
    receipts = receipts_for(settings, pleo, url_lifetime=DAY)
    sim_state.receipts.configure(size=1000, content_type="image/bmp")
    before = Registry()
    seen: list[str | None] = []
    entry = fetched_entries(settings, job_id)[0]
    refused = receipts.transfer(journal, entry, booked(journal, entry), fetched_at=None)
    assert reason(refused) == "receipt_conversion_failure"
    seen.append(reason(refused))
    sim_state.receipts.configure(content_type=None, served_type="text/html")
    entry = fetched_entries(settings, job_id)[1]
    refused = receipts.transfer(journal, entry, booked(journal, entry), fetched_at=None)
    assert reason(refused) == "receipt_conversion_failure"
    seen.append(reason(refused))
    sim_state.receipts.configure(served_type=None, fail_next=10)
    entry = fetched_entries(settings, job_id)[2]
    refused = receipts.transfer(journal, entry, booked(journal, entry), fetched_at=None)
    assert reason(refused) == "receipt_download_failure"
    seen.append(reason(refused))
    assert sim_state.receipts.counts()["failed"] == 3  # the retry policy's three attempts
    sim_state.receipts.configure(fail_next=1)
    entry = fetched_entries(settings, job_id)[3]
    assert receipts.transfer(journal, entry, booked(journal, entry), fetched_at=None) is None
    assert [r["accounting_entry_id"] for r in journal.attachments()] == [entry.accounting_entry_id]
    failures = "pleo_export_receipt_failures_total"
    for kind in set(seen):
        assert before.delta(failures, reason=str(kind)) == seen.count(kind)
    assert before.delta(failures) == len(seen)
    assert before.delta("pleo_export_receipts_transferred_total") == 1
    assert before.delta("pleo_export_receipt_bytes_total") == journal.attachments()[0]["size"]


def test_an_adapter_without_attach_or_receipts_off_transfers_nothing(
    settings: Settings, sim_state: SimState, journal: SqlJournal, pleo: PleoClient
) -> None:
    """ERP_RECEIPTS off (the default), or an adapter with no ``attach``, downloads nothing."""
    job_id = sim_state.add_job(JobSpec(items=1, item_statuses={"pending": 1.0}))
    entry = fetched_entries(settings, job_id)[0]
    ref = booked(journal, entry)

    class Plain:
        def find(self, accounting_entry_id: str) -> ExternalRef | None:
            return ref

        def post(self, entry: Entry) -> ExternalRef:
            return ref

    assert receipts_for(settings, pleo).transfer(Plain(), entry, ref, fetched_at=None) is None
    off = ReceiptSettings.from_settings(Settings())
    assert not off.enabled
    assert (
        receipts_for(settings, pleo, enabled=False).transfer(journal, entry, ref, fetched_at=None)
        is None
    )
    assert sim_state.receipts.counts()["downloads"] == 0


def test_the_24_hour_default_lifetime(sim: RunningSimulator) -> None:
    """At the defaults a file URL lives 24 h from the fetch (the simulator's expires= says so),
    and the worker renews one only in its last 10 minutes: 86,400 - 600 = 85,800 s after it."""
    defaults = ReceiptSettings.from_settings(Settings())
    assert defaults.url_lifetime == DAY == 86_400
    assert RENEW_MARGIN == 600
    assert defaults.renew_at(1_000.0) == 1_000.0 + 86_400 - 600
    # The test runs' lifetimes (seconds) renew within their last tenth instead.
    assert ReceiptSettings(True, 1, frozenset(), 2.0, 1.0).renew_at(0.0) == pytest.approx(1.8)
    now = 1_700_000_000.0
    files = ReceiptFiles(clock=lambda: now)
    page = {
        "data": [
            {
                "accountingEntryId": "e",
                "files": [{"url": "x", "type": "application/pdf", "size": 9}],
            }
        ]
    }
    url = files.rewrite(page, sim.url)["data"][0]["files"][0]["url"]
    assert int(parse_qs(urlsplit(url).query)["expires"][0]) == now + 86_400


@pytest.fixture(params=["sqlite", "postgresql"])
def any_journal(request: pytest.FixtureRequest, erp_journal_url: str) -> Iterator[SqlJournal]:
    """The SQL journal on SQLite, and on PostgreSQL (``POSTGRES_TEST_URL``) emptied first."""
    if request.param == "sqlite":
        with SqlJournal(erp_journal_url) as journal:
            yield journal
        return
    with empty_journal(PG_URL) as url, SqlJournal(url) as journal:
        yield journal


def test_the_sql_journal_stores_each_file_of_an_entry_once(any_journal: SqlJournal) -> None:
    """attach is idempotent per (entry, sha256) on both databases, with the bytes kept; two
    threads attaching the same file at once leave one row and get one id."""
    entry = "0b5e1c2a-1111-4aaa-8bbb-000000000001"

    def made(content: bytes, index: int = 0) -> Attachment:
        digest = hashlib.sha256(content).hexdigest()
        return Attachment(entry, "JE-000001", index, "application/pdf", digest, content)

    first = any_journal.attach(made(b"%PDF-1 one"))
    assert any_journal.attach(made(b"%PDF-1 one")) == first
    second = any_journal.attach(made(b"%PDF-1 two", 1))
    assert second != first
    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = set(pool.map(lambda _: any_journal.attach(made(b"%PDF-1 three", 2)), range(8)))
    assert len(ids) == 1
    rows = any_journal.attachments()
    assert [(r["file_index"], r["size"]) for r in rows] == [(0, 10), (1, 10), (2, 12)]
    assert any_journal.attachment_content(entry, rows[1]["sha256"]) == b"%PDF-1 two"
    assert "content" not in rows[0]


def test_the_http_adapter_uploads_once_per_key_and_maps_refusals(
    settings: Settings,
    sim_state: SimState,
    pleo: PleoClient,
    erp_sim: Callable[..., RunningErpSimulator],
) -> None:
    """The HTTP adapter uploads to ERP_HTTP_ATTACHMENTS_URL: a replay gets the first id and
    stores nothing; a 503 is ERPUnavailable (tried again later); a 4xx is the entry's
    receipt_upload_failure; without the URL it takes no attachments at all."""
    erp = erp_sim()
    job_id = sim_state.add_job(JobSpec(items=2, item_statuses={"pending": 1.0}))
    sim_state.receipts.configure(size=700)
    first, second = fetched_entries(settings, job_id)
    receipts = receipts_for(settings, pleo, url_lifetime=DAY)
    uploads = f"{erp.url}/journal/attachments"
    with closing(HttpJournal(erp.url, attachments_url=uploads)) as journal:
        ref = journal.post(first)
        assert receipts.transfer(journal, first, ref, fetched_at=None) is None
        assert receipts.transfer(journal, first, ref, fetched_at=None) is None
        view = erp.state.attachments.view()
        assert (len(view["data"]), view["uploads"], view["replays"]) == (1, 2, 1)
        assert view["data"][0]["external_id"] == ref.external_id
        assert view["data"][0]["size"] == 700
        erp.state.attachments.configure({"fail_next": 1})
        with pytest.raises(ERPUnavailable):
            receipts.transfer(journal, second, journal.post(second), fetched_at=None)
        erp.state.attachments.configure({"refuse": True})
        refused = receipts.transfer(journal, second, journal.post(second), fetched_at=None)
        assert reason(refused) == "receipt_upload_failure"
        assert len(erp.state.attachments.stored()) == 1
    with closing(HttpJournal(erp.url)) as plain:
        assert not accepts_attachments(plain)
        assert receipts.transfer(plain, second, ref, fetched_at=None) is None


def test_each_file_of_an_entry_in_turn_until_one_fails(
    sim: RunningSimulator, settings: Settings, journal: SqlJournal, pleo: PleoClient
) -> None:
    """An entry's files are attached in order, each under its own key; the first that fails
    (here the second, declared over the cap) is the entry's outcome and the third is not tried."""
    entry_id = "0b5e1c2a-2222-4aaa-8bbb-000000000002"
    listed = [
        {"url": "x", "type": "application/pdf", "size": 900},
        {"url": "x", "type": "image/png", "size": 90_000},
        {"url": "x", "type": "image/png", "size": 900},
    ]
    page = {"data": [{"accountingEntryId": entry_id, "files": listed}]}
    files = sim.state.receipts.rewrite(page, sim.url)["data"][0]["files"]
    entry = Entry(entry_id, "5b0c7a3e-1d2f-4e6a-9b8c-0d1e2f3a4b5c", None, 0, None, {"files": files})
    ref = ExternalRef("JE-000042", None, "2026-03-01T00:00:00Z")
    refused = receipts_for(settings, pleo, url_lifetime=DAY).transfer(
        journal, entry, ref, fetched_at=time.time()
    )
    assert reason(refused) == "receipt_file_size_limit_exceeded"
    assert refused is not None
    assert "file 1 " in refused.reason
    assert [(r["file_index"], r["size"]) for r in journal.attachments()] == [(0, 900)]
    assert sim.state.receipts.counts()["downloads"] == 1
