"""A poster lets a batch that is still filling fill (``consumers/poster.py`` ``LINGER``).

Real Redis; the poster's sleep is injected and stages more entries each time it is called, as
the worker's task thread does while a poster waits. The ERP is a recording adapter (not the unit
under test): it books every entry and keeps the size of each call.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest
import redis

from consumers.budget import Budget
from consumers.erp import Entry, ERPLimits, ExternalRef
from consumers.erp_calls import PosterSettings
from consumers.payloads import PayloadCache
from consumers.poster import LINGER, LINGER_STEP, Poster
from consumers.ready import ReadyEntries
from consumers.reporting import Reporter
from contract.keys import results_key
from contract.ledger import Ledger
from contract.message import ItemMessage
from contract.settings import Settings
from devtools.simulator.payloads import export_item
from pleo.client import PleoClient

pytestmark = pytest.mark.integration
JOB = "0f7e3c2a-9b1d-4e6f-8a5c-3d2b1a0f9e8d"
COMPANY = "c0ffee00-0000-4000-8000-000000000002"


class RecordingERP:
    """Books everything; ``calls`` holds the number of entries of each call."""

    def __init__(self, batch_size: int) -> None:
        self.limits = ERPLimits(batch_size=batch_size, idempotency_key=True)
        self.calls: list[int] = []

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        return None

    def post(self, entry: Entry) -> ExternalRef:
        return self.post_batch([entry])[0]

    def post_batch(self, entries: Sequence[Entry]) -> list[ExternalRef]:
        self.calls.append(len(entries))
        return [ExternalRef(f"JE-{e.sequence}", None, "2026-01-01T00:00:00Z") for e in entries]


def message(sequence: int, rng: random.Random) -> ItemMessage:
    entry = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{JOB}/{sequence}"))
    booked = datetime(2026, 1, 1, tzinfo=UTC)
    payload = export_item(rng, entry, COMPANY, booked, with_account=True, vendor_based=False)
    return ItemMessage(
        job_id=JOB,
        company_id=COMPANY,
        accounting_entry_id=entry,
        sequence=sequence,
        total=1000,
        status_at_fetch="pending",
        booked_at=payload.get("date"),
        export_item=payload,
    )


@pytest.fixture
def pleo() -> Iterator[PleoClient]:
    """A Pleo client no test here should use: every request fails the test."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected Pleo request {request.url}")

    with httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://pleo") as http:
        yield PleoClient(http, Settings())


def run(
    rdb: redis.Redis, pleo: PleoClient, *, batch_size: int, first: int, per_sleep: int, most: int
) -> tuple[RecordingERP, list[float]]:
    """Stage ``first`` entries, then ``per_sleep`` more each time the poster sleeps (up to
    ``most``), drain; returns the ERP's calls and the poster's sleeps."""
    rng = random.Random(1)
    erp = RecordingERP(batch_size)
    budget = Budget(rdb, erp.limits, connection="test", lease_ttl=2.0)
    ready = ReadyEntries(rdb, budget, dedup_ttl=3600, reads=frozenset({1, 2}))
    staged = 0

    def stage(count: int) -> None:
        nonlocal staged
        for _ in range(min(count, most - staged)):
            ready.stage(message(staged, rng))
            staged += 1

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        stage(per_sleep)

    stage(first)
    reporter = Reporter(
        rdb,
        pleo,
        Ledger(rdb, lease_ttl=2.0, dedup_ttl=3600),
        dedup_ttl=3600,
        max_attempts=2,
        request_timeout=1.0,
        retry_budget=1.0,
    )
    written: Callable[[str, int], None] = lambda _job, _waiting: None  # noqa: E731
    poster = Poster(
        rdb,
        erp=erp,
        budget=budget,
        ready=ready,
        reporter=reporter,
        payloads=PayloadCache(rdb, pleo, dedup_ttl=3600),
        settings=PosterSettings(
            key_window=86_400, order_wait=30, unreachable_limit=600, retry_delay=1, dedup_ttl=3600
        ),
        write_back=written,
        who="test",
        sleep=sleep,
    )
    assert poster.drain(COMPANY) == staged
    assert rdb.hlen(results_key(JOB)) == staged
    return erp, sleeps


def test_a_filling_batch_is_claimed_once_it_stops_growing(
    rdb: redis.Redis, pleo: PleoClient
) -> None:
    """10 staged, 10 more per look, 60 in all: one call of 60, claimed at the first still look."""
    erp, sleeps = run(rdb, pleo, batch_size=500, first=10, per_sleep=10, most=60)
    assert erp.calls == [60]
    assert sleeps == [LINGER_STEP] * 6


def test_a_batch_waits_no_longer_than_the_linger(rdb: redis.Redis, pleo: PleoClient) -> None:
    """Staging that never stops holds a claim back LINGER seconds at most, then it goes."""
    erp, sleeps = run(rdb, pleo, batch_size=500, first=10, per_sleep=10, most=400)
    looks = round(LINGER / LINGER_STEP)
    assert sleeps == [LINGER_STEP] * looks
    assert erp.calls == [10 + 10 * looks]


def test_a_full_batch_goes_at_once(rdb: redis.Redis, pleo: PleoClient) -> None:
    """A batch's worth staged is claimed with no wait; the rest waits one still look."""
    erp, sleeps = run(rdb, pleo, batch_size=20, first=30, per_sleep=0, most=30)
    assert erp.calls == [20, 10]
    assert sleeps == [LINGER_STEP]
