"""The reference HTTP adapter against the ERP simulator on loopback: post, replay, find, limits,
faults, refusals, batches, field names, auth, its settings; and a real ERP worker booking a
whole job through it, each entry once by the simulator's own count.

httpx.MockTransport stands in for an ERP only where the simulator cannot say what is checked
(other header names, another ERP's error shape); the answer mapping's pure parts are tested
directly.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.erp import (
    Entry,
    EntryRejected,
    ERPRateLimited,
    ERPUnavailable,
    ExternalRef,
    idempotency_key,
)
from consumers.erp_http import HttpJournal, from_settings
from consumers.erp_http_answers import reason_of, retry_after
from contract.celery_app import make_app
from contract.errors import BadInput
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.erp_simulator import RunningErpSimulator
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import ROOT, env_for, wait_for
from tests.support.erp_sim import ErpSims, account_codes, control, entries
from tests.support.local import worker_log

pytestmark = pytest.mark.integration

TOKEN = "tok-5f2b9c0d4e"


@pytest.fixture
def journals() -> Any:
    """Build HttpJournals; each is closed after the test."""
    made: list[HttpJournal] = []

    def build(url: str, **options: Any) -> HttpJournal:
        made.append(HttpJournal(url, **options))
        return made[-1]

    yield build
    for journal in made:
        journal.close()


Journals = Callable[..., HttpJournal]


def test_post_books_the_entry_and_a_replay_from_another_worker_returns_it(
    erp_sim: ErpSims, journals: Journals
) -> None:
    """The first post books; the same entry posted by a second adapter (another worker, after a
    crash) carries the same key and gets the same reference back; the ERP holds it once."""
    sim = erp_sim()
    entry = entries(1)[0]
    first = journals(sim.url).post(entry)
    again = journals(sim.url).post(entry)
    assert first == again
    booking = sim.state.find(entry.accounting_entry_id)
    assert len(booking) == 1
    assert first == ExternalRef(
        booking[0].id, f"{sim.url}/journal/entries/{booking[0].id}", booking[0].booked_at
    )
    assert sim.state.stats()["replays"] == 1


def test_find_looks_the_entry_up(erp_sim: ErpSims, journals: Journals) -> None:
    """find is None before the entry is booked and its first booking's reference after."""
    sim = erp_sim()
    journal, entry = journals(sim.url), entries(1)[0]
    assert journal.find(entry.accounting_entry_id) is None
    booked = journal.post(entry)
    assert journal.find(entry.accounting_entry_id) == booked
    assert sim.state.stats()["calls"] == {"lookup": 2, "post": 1}


def test_a_429_is_erp_rate_limited_with_the_erps_retry_after(
    erp_sim: ErpSims, journals: Journals
) -> None:
    """Over the rate limit the adapter raises ERPRateLimited carrying Retry-After in seconds:
    whole seconds from a real-ERP-like simulator, fractional ones when it sends them."""
    sim = erp_sim(calls=1, period=30.0)
    journal = journals(sim.url)
    journal.find("a")
    with pytest.raises(ERPRateLimited) as limited:
        journal.find("b")
    assert limited.value.retry_after in {29.0, 30.0}
    fast = erp_sim(fractional_retry_after=True)
    assert control(fast, "POST", "pause", json={"retry_after": 0.25, "seconds": 5}).is_success
    with pytest.raises(ERPRateLimited) as paused:
        journals(fast.url).post(entries(1)[0])
    assert paused.value.retry_after == 0.25
    assert fast.state.stats()["bookings"] == 0


def test_retry_after_reads_seconds_fractions_and_http_dates() -> None:
    """Delay-seconds, fractional seconds and an HTTP-date all give seconds to wait; garbage,
    none."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after("7") == 7.0
    assert retry_after("0.5") == 0.5
    assert retry_after(date, now=now.timestamp) == 90.0
    assert retry_after(format_datetime(now - timedelta(hours=1), usegmt=True)) == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_5xx_timeouts_and_refused_connections_are_erp_unavailable(
    erp_sim: ErpSims, journals: Journals
) -> None:
    """An injected 503, a call that hangs past the adapter's timeout, and a port nobody listens
    on are all ERPUnavailable, each with its own sentence."""
    entry = entries(1)[0]
    failing = erp_sim(fail_rate=1.0)
    with pytest.raises(ERPUnavailable, match=r"answered HTTP 503\.$"):
        journals(failing.url).post(entry)
    hanging = erp_sim(timeout_rate=1.0, hang=5.0)
    with pytest.raises(ERPUnavailable, match=r"did not answer within 0\.3 s\.$"):
        journals(hanging.url, timeout=0.3).post(entry)
    with pytest.raises(ERPUnavailable, match=r"could not be reached \(ConnectError\)\.$"):
        journals("http://127.0.0.1:9").find("x")
    assert failing.state.stats()["bookings"] == hanging.state.stats()["bookings"] == 0


def test_a_422_is_entry_rejected_with_the_erps_reason(erp_sim: ErpSims, journals: Journals) -> None:
    """An entry whose account the ERP lacks is EntryRejected(account_unknown) naming the code;
    one Pleo's own checks refuse is never sent."""
    entry = entries(1)[0]
    code = sorted(account_codes(entry))[0]
    sim = erp_sim(unknown_accounts=[code])
    journal = journals(sim.url)
    with pytest.raises(EntryRejected) as refused:
        journal.post(entry)
    assert refused.value.reason_type == "account_unknown"
    assert f"uses account {code}" in refused.value.reason
    assert refused.value.reason.startswith(f"The ERP refused entry {entry.accounting_entry_id}")
    bare = Entry("e-1", entry.job_id, None, 0, None, None)
    with pytest.raises(EntryRejected) as unchecked:
        journal.post(bare)
    assert unchecked.value.reason_type == "missing_configuration"
    assert sim.state.stats()["calls"] == {"post": 1}


@pytest.mark.parametrize("status", [404, 409, 413])
def test_statuses_that_say_not_now_are_retried_not_rejected(
    status: int, journals: Journals
) -> None:
    """A missing endpoint, a key still in use by a running call, a batch too large: the entry is
    not at fault, so ERPUnavailable (retried), however the ERP words it."""

    def erp(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"reasonType": "account_unknown", "reason": "no"})

    journal = journals("http://erp.example", transport=httpx.MockTransport(erp))
    with pytest.raises(ERPUnavailable, match=f"answered HTTP {status}"):
        journal.post(entries(1)[0])


def test_another_erps_error_shape_maps_to_a_reason_type_or_the_default() -> None:
    """The reason is read from a nested error object too; a code Pleo does not know becomes
    accounting_system_validation_failure."""
    assert reason_of({"error": {"code": "E42", "message": "Period 2026-03 is closed."}}) == (
        "accounting_system_validation_failure",
        "Period 2026-03 is closed",
    )
    assert reason_of({"type": "vendor_unknown", "detail": "No vendor V-9"}) == (
        "vendor_unknown",
        "No vendor V-9",
    )
    assert reason_of("not an object") == ("accounting_system_validation_failure", None)


def test_a_batch_gives_one_outcome_per_entry_in_order(erp_sim: ErpSims, journals: Journals) -> None:
    """One call for the batch: booked, refused by the ERP, refused by Pleo's checks (not sent),
    booked; posting the batch again books nothing new and gives the same outcomes."""
    made = entries(3)
    code = sorted(account_codes(made[1]) - account_codes(made[0]) - account_codes(made[2]))[0]
    sim = erp_sim(unknown_accounts=[code])
    journal = journals(sim.url, batch_size=4)
    assert journal.limits.batch_size == 4
    assert journal.limits.idempotency_key is True
    bare = Entry("e-bare", made[0].job_id, None, 3, None, None)
    batch = [made[0], made[1], bare, made[2]]
    outcomes = journal.post_batch(batch)
    assert [type(o).__name__ for o in outcomes] == [
        "ExternalRef",
        "EntryRejected",
        "EntryRejected",
        "ExternalRef",
    ]
    rejected = [o for o in outcomes if isinstance(o, EntryRejected)]
    assert [r.reason_type for r in rejected] == ["account_unknown", "missing_configuration"]
    assert sim.state.stats()["calls"] == {"batch": 1}
    again = journal.post_batch(batch)
    assert [o for o in again if isinstance(o, ExternalRef)] == [outcomes[0], outcomes[3]]
    assert sim.state.stats()["bookings"] == 2
    assert [b.accounting_entry_id for b in sim.state.bookings()] == [
        made[0].accounting_entry_id,
        made[2].accounting_entry_id,
    ]


def test_field_names_follow_erp_http_fields(erp_sim: ErpSims, journals: Journals) -> None:
    """An ERP that calls the entry id externalRef and line amounts amountCents books what the
    renamed adapter sends and finds it by its own parameter; the default names it refuses."""
    names = {"accountingEntryId": "externalRef", "lineAmount": "amountCents"}
    sim = erp_sim(fields=names)
    entry = entries(1)[0]
    renamed = journals(sim.url, fields=names)
    booked = renamed.post(entry)
    assert renamed.find(entry.accounting_entry_id) == booked
    with pytest.raises(EntryRejected, match="has no externalRef"):
        journals(sim.url).post(entries(2)[1])
    assert sim.state.stats()["bookings"] == 1


def test_auth_is_sent_and_a_refused_credential_is_unavailable_without_the_secret(
    erp_sim: ErpSims, journals: Journals
) -> None:
    """With the right ERP_HTTP_AUTH the post books; a wrong or missing one is ERPUnavailable
    saying the credentials were refused, never quoting them."""
    sim = erp_sim(token=TOKEN)
    entry = entries(1)[0]
    assert journals(sim.url, auth=f"Bearer {TOKEN}").post(entry).external_id == "JE-000001"
    for auth in (None, "Bearer wrong-and-secret"):
        with pytest.raises(ERPUnavailable) as refused:
            journals(sim.url, auth=auth).find(entry.accounting_entry_id)
        assert "refused the credentials (HTTP 401); check ERP_HTTP_AUTH" in str(refused.value)
        assert "secret" not in str(refused.value)


def test_other_header_names_carry_the_auth_and_the_key(journals: Journals) -> None:
    """ERP_HTTP_AUTH_HEADER and ERP_HTTP_IDEMPOTENCY_HEADER name the headers the calls carry."""
    seen: list[httpx.Request] = []

    def erp(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": 7, "bookedAt": "2026-03-01T10:00:00Z"})

    journal = journals(
        "https://erp.example.com/api",
        auth="key-123",
        auth_header="X-Api-Key",
        idempotency_header="X-Request-Id",
        transport=httpx.MockTransport(erp),
    )
    entry = entries(1)[0]
    assert journal.post(entry) == ExternalRef("7", None, "2026-03-01T10:00:00Z")
    (request,) = seen
    assert str(request.url) == "https://erp.example.com/api/journal/entries"
    assert request.headers["X-Api-Key"] == "key-123"
    assert request.headers["X-Request-Id"] == idempotency_key(entry.accounting_entry_id)
    assert "authorization" not in request.headers
    sent = json.loads(request.content)
    assert sent["accountingEntryId"] == entry.accounting_entry_id
    assert sent["date"] == entry.booked_at
    assert {line["accountCode"] for line in sent["lines"]} == account_codes(entry)


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        (
            {},
            "ERP_HTTP_URL must name the ERP's base URL (http:// or https://) for the HTTP adapter.",
        ),
        (
            {"ERP_HTTP_URL": "ftp://erp"},
            "ERP_HTTP_URL must be an http(s) URL (http://, https://), not 'ftp://erp'.",
        ),
        (
            {"ERP_HTTP_URL": "http://erp", "ERP_HTTP_FIELDS": "{nope"},
            "ERP_HTTP_FIELDS must be a JSON object, not '{nope'.",
        ),
        (
            {"ERP_HTTP_URL": "http://erp", "ERP_HTTP_FIELDS": '["a"]'},
            "ERP_HTTP_FIELDS must map field names to new names, not '[\"a\"]'.",
        ),
        (
            {"ERP_HTTP_URL": "http://erp", "ERP_HTTP_FIELDS": '{"entryId": "x"}'},
            "ERP_HTTP_FIELDS renames unknown fields ['entryId']; known: accountingEntryId",
        ),
        (
            {"ERP_HTTP_URL": "http://erp", "ERP_HTTP_FIELDS": '{"date": "amount"}'},
            "ERP_HTTP_FIELDS gives two fields one name:",
        ),
        (
            {"ERP_HTTP_AUTH_HEADER": "X Api Key"},
            "ERP_HTTP_AUTH_HEADER must be an HTTP header name, not 'X Api Key'.",
        ),
        ({"ERP_HTTP_BATCH": "-1"}, "ERP_HTTP_BATCH must be at least 0, not '-1'."),
        ({"ERP_HTTP_TIMEOUT": "0"}, "ERP_HTTP_TIMEOUT must be at least 0.1, not '0'."),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_sentence(
    env: dict[str, str], sentence: str
) -> None:
    """Each bad ERP_HTTP_* setting is BadInput with one sentence, from Settings or the factory."""
    with pytest.raises(BadInput) as refused:
        from_settings(Settings.from_env(env)).close()
    message = refused.value.message
    assert message.startswith(sentence), message
    assert message.endswith(".")
    assert ". " not in message


def test_a_password_in_the_url_is_basic_auth_and_never_logged(
    journals: Journals, caplog: pytest.LogCaptureFixture
) -> None:
    """user:password@ in ERP_HTTP_URL goes in an Authorization: Basic header, not in the URL
    the request is sent to, which httpx logs."""
    seen: list[httpx.Request] = []

    def erp(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    caplog.set_level(logging.INFO, logger="httpx")
    journal = journals("http://clerk:pw-hidden@erp.example/api", transport=httpx.MockTransport(erp))
    assert journal.find("x") is None
    (request,) = seen
    assert str(request.url) == "http://erp.example/api/journal/entries?accountingEntryId=x"
    basic = base64.b64encode(b"clerk:pw-hidden").decode()
    assert request.headers["Authorization"] == f"Basic {basic}"
    assert "erp.example/api/journal/entries" in caplog.text
    assert "pw-hidden" not in caplog.text
    assert "pw-hidden" not in repr(journal)


def test_no_secret_in_any_repr_or_message(erp_sim: ErpSims) -> None:
    """The auth value and a URL's password show in no repr of Settings or the adapter."""
    sim = erp_sim(token=TOKEN)
    url = sim.url.replace("http://", "http://user:pw-hidden@")
    settings = Settings.from_env(
        {"ERP_HTTP_URL": url, "ERP_HTTP_AUTH": f"Bearer {TOKEN}", "ERP_HTTP_BATCH": "10"}
    )
    journal = from_settings(settings)
    try:
        for text in (repr(settings), str(settings), repr(journal)):
            assert TOKEN not in text
            assert "pw-hidden" not in text
        assert "erp_http_auth='***'" in repr(settings)
        assert control(sim, "PATCH", "config", json={"fail_rate": 1}).is_success
        with pytest.raises(ERPUnavailable) as failed:
            journal.post(entries(1)[0])
        assert TOKEN not in str(failed.value)
        assert "pw-hidden" not in str(failed.value)
    finally:
        journal.close()


def test_a_worker_without_erp_http_url_stops_with_one_sentence(
    settings: Settings, tmp_path: Path
) -> None:
    """ERP_ADAPTER names the HTTP adapter but no URL: the worker exits 2 before taking a
    message, the sentence last on stderr."""
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "consumers", "worker", "-Q", ITEMS_QUEUE, "-c", "1"],
        env=env_for(settings, ERP_ADAPTER="consumers.erp_http:from_settings"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 2, worker.stderr[-2000:]
    last = [line for line in worker.stderr.splitlines() if line.strip()][-1]
    assert last.endswith(
        "ERP_HTTP_URL must name the ERP's base URL (http:// or https://) for the HTTP adapter."
    )
    assert "Traceback" not in worker.stderr


@pytest.mark.worker
def test_a_real_worker_books_a_whole_job_once_through_faults(
    settings: Settings,
    sim_state: SimState,
    erp_sim: ErpSims,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    """Two ERP worker processes post a 30-entry job through the HTTP adapter to an ERP that
    fails one call in ten and lets one in ten time out after booking: the job completes, Pleo
    gets the ERP's ids, and the simulator booked every entry exactly once."""
    items = 30
    erp: RunningErpSimulator = erp_sim(
        token=TOKEN, fail_rate=0.1, timeout_rate=0.1, timeout_books=True, hang=2.0, seed=5
    )
    job_id = sim_state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    produce(job_id, settings=settings, app=make_app(settings))
    start_worker(
        "consumers",
        ITEMS_QUEUE,
        concurrency=2,
        ERP_ADAPTER="consumers.erp_http:from_settings",
        ERP_HTTP_URL=erp.url,
        ERP_HTTP_AUTH=f"Bearer {TOKEN}",
        ERP_HTTP_TIMEOUT="0.5",
    )
    wait_for(
        lambda: sim_state.jobs[job_id].status == "completed",
        timeout=90,
        what="the job to complete through the HTTP adapter",
        explain=lambda: (erp.state.stats(), worker_log(tmp_path)[-2000:]),
    )
    stats = erp.state.stats()
    pleo_items = {item.accounting_entry_id: item for item in sim_state.items(job_id)}
    assert stats["entriesBooked"] == items
    assert stats["duplicateBookings"] == 0
    # The faults did fire (the seed's first 31 draws, fewer than the calls a job this size makes,
    # hold 3 failures and 4 timeouts): entries booked with their answer lost were not booked again.
    assert stats["faults"].get("timeout", 0) >= 1, stats
    assert stats["faults"].get("fail", 0) >= 1, stats
    assert all(erp.state.booked_count(entry_id) == 1 for entry_id in pleo_items)
    for booking in erp.state.bookings():
        assert pleo_items[booking.accounting_entry_id].external_id == booking.id
    assert TOKEN not in worker_log(tmp_path)
