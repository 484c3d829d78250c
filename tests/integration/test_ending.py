"""A plain connection's job ending for the ERP: no post starts after the mark, the posts in
flight are waited for, a dead worker's note holds the job no longer than its allowance, and a
booking whose receipt meets the refusal is recorded before the job ends.

Real Redis; the in-flight notes are written by the direct path's own scripts
(``consumers/item_records.py``), the wait is ``consumers/ending.py``'s; the last test runs the
direct path in this process against the Pleo and ERP simulators over HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing

import pytest
import redis

from consumers.ending import JobEnding, file_allowance, post_allowance
from consumers.erp import Attachment, Entry, ERPAuthenticationFailed, ExternalRef
from consumers.erp_http import HttpJournal, from_settings
from consumers.item_records import START_WITHIN, ItemRecords
from consumers.payloads import PayloadCache
from consumers.receipts import Receipts, ReceiptSettings
from consumers.reporting import Reporter
from consumers.results import success_update
from consumers.worker import process_item
from contract.credentials import refresh_wait
from contract.keys import erp_in_flight_key, outbox_key
from contract.ledger import Ledger
from contract.retrying import RetryPolicy
from contract.settings import Settings
from devtools.erp_simulator import RunningErpSimulator
from devtools.oauth_server import OAuthServer
from devtools.simulator import JobSpec, SimState
from pleo.client import PleoClient, make_http_client
from tests.conftest import with_settings
from tests.support.oauth import CLIENT_ID, CLIENT_SECRET, KEY, seed

pytestmark = pytest.mark.integration

JOB = "7c2e9a41-5d3b-4f60-8e1a-3b9d0c4f2a17"


def booked(entry: str) -> dict[str, str]:
    return success_update(entry, f"JE-{entry}", None, "2026-01-01T00:00:00Z")


def test_the_read_before_a_post_notes_it_in_flight_and_its_outcome_clears_it(
    rdb: redis.Redis,
) -> None:
    """BEFORE notes the entry with its deadline; AFTER, recording the outcome, takes it out; a
    duplicate is not noted again."""
    records = ItemRecords(rdb, dedup_ttl=60, allowance=30.0)
    started = time.time()
    assert records.before(JOB, "e1").goes_ahead
    deadline = float(rdb.hget(erp_in_flight_key(JOB), "e1") or 0)
    assert started + 30.0 <= deadline <= time.time() + 30.0
    records.after(JOB, booked("e1"), attempt=1, interval=5.0)
    assert rdb.hlen(erp_in_flight_key(JOB)) == 0
    again = records.before(JOB, "e1")
    assert again.recorded
    assert not again.goes_ahead
    assert rdb.hlen(erp_in_flight_key(JOB)) == 0


def test_no_post_starts_once_the_job_is_ending(rdb: redis.Redis) -> None:
    """After the mark the read before a post says ``ending`` and notes nothing; the ending
    worker's own entry leaves flight with the mark."""
    records = ItemRecords(rdb, dedup_ttl=60, allowance=30.0)
    ending = JobEnding(rdb, dedup_ttl=60)
    assert records.before(JOB, "own").goes_ahead
    ending.mark(JOB, "own")
    assert ending.in_flight(JOB) == []
    late = records.before(JOB, "late")
    assert late.ending
    assert not late.goes_ahead
    assert ending.in_flight(JOB) == []


def test_the_end_waits_for_a_post_in_flight_until_its_outcome_is_recorded(
    rdb: redis.Redis,
) -> None:
    """A post of another worker noted before the mark holds the end until its outcome is
    recorded (well before its deadline), then the wait is over at once."""
    records = ItemRecords(rdb, dedup_ttl=60, allowance=30.0)
    ending = JobEnding(rdb, dedup_ttl=60)
    assert records.before(JOB, "other").goes_ahead
    ending.mark(JOB, "own")
    lands_after = 0.6
    recorder = threading.Timer(
        lands_after, lambda: records.after(JOB, booked("other"), attempt=1, interval=5.0)
    )
    recorder.start()
    waited = ending.wait(JOB)
    recorder.join()
    print(f"ending_wait_for_live_post posts={waited.posts} seconds={waited.seconds:.2f}")
    assert waited.posts == 1
    assert waited.abandoned == 0
    assert lands_after <= waited.seconds < lands_after + 1.0


def test_a_dead_workers_note_holds_the_end_only_until_its_deadline(rdb: redis.Redis) -> None:
    """A worker killed mid-post never records its outcome: its note is waited for until its
    deadline passes, then the end goes on (the note left, counted as abandoned)."""
    allowance = 0.8
    records = ItemRecords(rdb, dedup_ttl=60, allowance=allowance)
    ending = JobEnding(rdb, dedup_ttl=60)
    noted_at = time.monotonic()
    assert records.before(JOB, "killed").goes_ahead
    ending.mark(JOB, "own")
    waited = ending.wait(JOB)
    held = time.monotonic() - noted_at
    print(f"ending_wait_for_dead_post seconds={waited.seconds:.2f} held={held:.2f}")
    assert (waited.posts, waited.abandoned) == (1, 1)
    assert allowance - 0.05 <= held < allowance + 0.5


def test_a_post_that_failed_unreachable_no_longer_holds_the_end(rdb: redis.Redis) -> None:
    """A post the ERP never answered (ERPUnavailable) leaves flight at once: the end does not
    wait out its allowance for it."""
    records = ItemRecords(rdb, dedup_ttl=60, allowance=30.0)
    ending = JobEnding(rdb, dedup_ttl=60)
    assert records.before(JOB, "unanswered").goes_ahead
    ending.release(JOB, "unanswered")
    ending.mark(JOB, "own")
    waited = ending.wait(JOB)
    assert (waited.posts, waited.abandoned) == (0, 0)
    assert waited.seconds < 1.0


def test_at_the_defaults_a_dead_post_holds_the_end_86_seconds_at_most() -> None:
    """The arithmetic at the defaults (the tests above shorten the allowance): a post starts
    within 1 s of its note, and each of its two requests (the second after a 401) may wait 30 s
    for a refresh and 10 s for the ERP; with 5 s of margin, 86 s. Each receipt of a booked
    entry adds its download (60 s of retries, 30 s a try) and upload (80 s)."""
    defaults = Settings()
    assert (START_WITHIN, refresh_wait(defaults), defaults.erp_http_timeout) == (1.0, 30.0, 10.0)
    assert post_allowance(defaults) == 86.0
    assert file_allowance(defaults) == 170.0


class GrantWithdrawnAtUpload:
    """The HTTP adapter whose ERP withdraws the grant (access tokens too) once the entry is
    booked, just before its receipt's upload: the ERP simulator then answers 401, the refresh
    is refused."""

    def __init__(self, journal: HttpJournal, server: OAuthServer) -> None:
        self._journal = journal
        self._server = server
        self.limits = journal.limits
        self.takes_attachments = True

    def post(self, entry: Entry) -> ExternalRef:
        return self._journal.post(entry)

    def attach(self, attachment: Attachment) -> str:
        self._server.revoke()
        return self._journal.attach(attachment)


def test_a_booked_entry_whose_receipt_upload_is_refused_its_credential_is_recorded_first(
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
    erp_sim: Callable[..., RunningErpSimulator],
) -> None:
    """The ERP refuses its credential at the receipt upload, after it booked the entry: the
    entry's outcome (receipt_upload_failure) is recorded before ERPAuthenticationFailed ends the
    job, so the job's end reports the booking; it is no longer in flight."""
    erp = erp_sim()
    erp.state.oauth = OAuthServer(CLIENT_ID, CLIENT_SECRET, access_lifetime=600)
    erp_settings = with_settings(
        settings,
        credentials_key=KEY,
        erp_oauth_client_id=CLIENT_ID,
        erp_oauth_client_secret=CLIENT_SECRET,
        erp_oauth_token_url=f"{erp.url}/oauth/token",
        erp_http_url=erp.url,
        erp_http_attachments_url=f"{erp.url}/journal/attachments",
    )
    seed(rdb, erp.state.oauth, kind="erp", name=settings.erp_connection)
    sim_state.receipts.configure(size=700)
    job_id = sim_state.add_job(JobSpec(items=1, item_statuses={"pending": 1.0}))
    with make_http_client(settings) as http, closing(from_settings(erp_settings)) as journal:
        pleo = PleoClient(http, settings)
        [item] = [i for page in pleo.iter_export_items(job_id) for i in page.items]
        entry = Entry(item.accounting_entry_id, job_id, None, 0, item.date, item.payload)
        reporter = Reporter(
            rdb,
            pleo,
            Ledger(rdb, lease_ttl=2.0, dedup_ttl=3600),
            dedup_ttl=3600,
            max_attempts=2,
            request_timeout=1.0,
            retry_budget=1.0,
        )
        receipts = Receipts(
            ReceiptSettings.from_settings(with_settings(settings, erp_receipts=True)),
            pleo,
            retry=RetryPolicy.from_settings(settings),
        )
        with closing(receipts), pytest.raises(ERPAuthenticationFailed):
            process_item(
                entry,
                erp=GrantWithdrawnAtUpload(journal, erp.state.oauth),
                reporter=reporter,
                payloads=PayloadCache(rdb, pleo, dedup_ttl=3600),
                report_interval=5.0,
                receipts=receipts,
            )
        outcome = reporter.outcome(job_id, entry.accounting_entry_id)
    assert [b.accounting_entry_id for b in erp.state.bookings()] == [entry.accounting_entry_id]
    assert outcome is not None
    assert outcome["failureReasonType"] == "receipt_upload_failure"
    assert "pleo-export auth login --erp" in outcome["failureReason"]
    assert rdb.hlen(outbox_key(job_id)) == 1
    assert rdb.hlen(erp_in_flight_key(job_id)) == 0
    assert erp.state.oauth.counts["refused_refresh"] == 1
