"""The offset walk over httpx.MockTransport: pages in order, bounded concurrency, the fallback.

A tiny Pleo listing (``Listing``) serves the control layer by ``offset`` (sorted by
``accountingEntryId``, as asked) and by cursor, and can be told to lie on one offset request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import ContractViolation
from contract.ids import is_uuid
from contract.retrying import RateGate
from contract.settings import Settings
from pleo.client import PleoClient, make_http_client
from pleo.models import JobItem, Page
from pleo.offset_walk import id_key

JOB = "8eb6d4a2-6c1f-4f7e-9a53-2f0c4f1d2b10"
Lie = Callable[[int, dict[str, Any]], httpx.Response | None]


def entry(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def conf(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "api_url": "https://pleo.test",
        "api_token": "tok",
        "page_size": 3,
        "page_concurrency": 3,
        "retry_attempts": 3,
        "backoff_initial": 0.01,
        "backoff_max": 0.02,
    }
    base.update(overrides)
    return Settings(**base)


class Listing:
    """A job's control layer of ``count`` entries, served unsorted unless sorting is asked for."""

    def __init__(self, count: int, *, delay: float = 0.0, lie: Lie | None = None) -> None:
        # Pleo's own order is not the id order: the offset walk must ask for a sort.
        self.ids = [entry(n) for n in reversed(range(count))]
        self.delay = delay
        self.lie = lie
        self.requests: list[httpx.Request] = []
        self.arrivals: list[tuple[float, httpx.Request]] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self.peak = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            self.arrivals.append((time.monotonic(), request))
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
        try:
            time.sleep(self.delay)
            return self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        limit = int(params["limit"])
        if "offset" in params:
            assert params.get_list("sorting_keys") == ["accountingEntryId"]
            assert params.get_list("sorting_order") == ["ASC"]
            ids, start = sorted(self.ids), int(params["offset"])
        else:
            ids, start = self.ids, cursor_start(params["after"]) if "after" in params else 0
        chosen = ids[start : start + limit]
        end = start + len(chosen)
        body: dict[str, Any] = {
            "data": [
                {"accountingEntryId": i, "exportJobId": JOB, "status": "pending"} for i in chosen
            ],
            "pagination": {
                "currentRequestPagination": {"parameters": {}},
                "hasNextPage": end < len(ids),
                "hasPreviousPage": start > 0,
                "endCursor": cursor_at(end),
                "total": len(ids),
            },
        }
        if "offset" in params and self.lie is not None:
            lied = self.lie(start, body)
            if lied is not None:
                return lied
        return httpx.Response(200, json=body)


def cursor_at(position: int) -> str:
    """A spec-shaped cursor (base32 letters) for a position."""
    return "C" + str(position).translate(str.maketrans("0123456789", "ABCDEFGHIJ"))


def cursor_start(after: str) -> int:
    return int(after[1:].translate(str.maketrans("ABCDEFGHIJ", "0123456789")))


def client_for(listing: Listing, concurrency: int = 3, page_size: int = 3) -> PleoClient:
    settings = conf(page_concurrency=concurrency, page_size=page_size)
    return PleoClient(make_http_client(settings, transport=httpx.MockTransport(listing)), settings)


def walk(
    listing: Listing, concurrency: int = 3, page_size: int = 3
) -> tuple[list[Page[JobItem]], list[str]]:
    """Every page the client yields, and each restart's reason."""
    client = client_for(listing, concurrency, page_size)
    restarts: list[str] = []
    pages = list(client.iter_job_items(JOB, concurrency=concurrency, on_restart=restarts.append))
    return pages, restarts


def ids_of(pages: list[Page[JobItem]]) -> list[str]:
    return [item.accounting_entry_id for page in pages for item in page.items]


def test_pages_come_in_order_by_offset_sorted_by_entry_id() -> None:
    """Ten entries, pages of 3: offsets 0, 3, 6, 9, each entry once, in id order, no restart."""
    listing = Listing(10)
    pages, restarts = walk(listing)
    assert restarts == []
    assert ids_of(pages) == sorted(listing.ids)
    offsets = sorted(int(r.url.params["offset"]) for r in listing.requests)
    assert offsets == [0, 3, 6, 9]


def test_at_most_concurrency_requests_are_in_flight() -> None:
    """Twenty pages, concurrency 3: several requests at once, never more than 3."""
    listing = Listing(60, delay=0.03)
    pages, _ = walk(listing, concurrency=3)
    assert len(pages) == 20
    assert 2 <= listing.peak <= 3


def test_large_pages_are_fetched_ahead_only_as_far_as_memory_allows() -> None:
    """Pages of 600 at concurrency 3: 1,000 entries ahead at most, so one request at a time."""
    listing = Listing(3000, delay=0.02)
    pages, _ = walk(listing, concurrency=3, page_size=600)
    assert ids_of(pages) == sorted(listing.ids)
    assert listing.peak == 1


def test_concurrency_one_is_the_cursor_walk() -> None:
    """PLEO_PAGE_CONCURRENCY=1 sends no offset and follows endCursor, in Pleo's order."""
    listing = Listing(7)
    pages, restarts = walk(listing, concurrency=1)
    assert restarts == []
    assert ids_of(pages) == listing.ids
    assert all("offset" not in r.url.params for r in listing.requests)


def test_an_offset_walk_needs_somewhere_to_say_it_restarts() -> None:
    """Without on_restart the consumer could not forget pages: refused before any request."""
    with pytest.raises(ValueError, match="on_restart"):
        client_for(Listing(3)).iter_job_items(JOB, concurrency=2)


def moved_total(at: int) -> Lie:
    def lie(start: int, body: dict[str, Any]) -> None:
        if start == at:
            body["pagination"]["total"] += 1

    return lie


def skipped_entry(at: int) -> Lie:
    def lie(start: int, body: dict[str, Any]) -> None:
        if start == at:
            body["data"].pop()

    return lie


def repeated_entry(at: int) -> Lie:
    def lie(start: int, body: dict[str, Any]) -> None:
        if start == at:
            body["data"][0] = {**body["data"][0], "accountingEntryId": entry(0)}

    return lie


@pytest.mark.parametrize(
    ("lie", "reason"),
    [
        (moved_total(6), "total moved from 10 to 11 on page 3"),
        (skipped_entry(3), "page 2 held 2 entries where 3 were due"),
        (repeated_entry(9), "page 4 repeated an entry already read"),
        (
            lambda start, body: httpx.Response(400, json={"type": "BAD", "message": "No."}),
            "Pleo refused the offset request",
        ),
    ],
)
def test_a_walk_that_cannot_prove_its_pages_restarts_by_cursor(lie: Lie, reason: str) -> None:
    """A moved total, a skip, a repeat, a refused sort: one restart, then every entry by cursor."""
    listing = Listing(10, lie=lie)
    pages, restarts = walk(listing)
    [said] = restarts
    assert reason in said
    # What follows the restart is the cursor walk's, complete.
    cursor_requests = [r for r in listing.requests if "offset" not in r.url.params]
    assert cursor_requests
    after = len(pages) - len(cursor_requests)
    assert sorted(ids_of(pages[after:])) == sorted(listing.ids)


def test_a_page_that_breaks_the_schema_stops_the_walk_without_a_restart() -> None:
    """A schema break is a lie, not a disagreement: ContractViolation naming the page."""

    def lie(start: int, body: dict[str, Any]) -> None:
        if start == 6:
            body["data"][0]["status"] = "exported"

    listing = Listing(10, lie=lie)
    restarts: list[str] = []
    pages = client_for(listing).iter_job_items(JOB, concurrency=3, on_restart=restarts.append)
    with pytest.raises(ContractViolation, match="page 3"):
        list(pages)
    assert restarts == []


def test_a_429_on_one_page_holds_back_the_pages_sent_after_it() -> None:
    """A 429 with Retry-After 0.3 s on page 4: pages 5 and 6, sent meanwhile, wait it out too.

    Pages 2 and 3 answer slowly, so pages 5 and 6 are sent (as pages 2 and 3 are handed on)
    while page 4 is still waiting for its retry: only the shared gate holds them back.
    """
    answered = threading.Event()
    hit_at: list[float] = []

    def lie(start: int, body: dict[str, Any]) -> httpx.Response | None:
        if start in {3, 6}:
            time.sleep(0.1)
        if start == 9 and not answered.is_set():
            answered.set()
            hit_at.append(time.monotonic())
            slow = {"type": "TOO_MANY_REQUESTS", "message": "Slow down."}
            return httpx.Response(429, json=slow, headers={"Retry-After": "0.3"})
        return None

    listing = Listing(30, lie=lie)
    pages, restarts = walk(listing, concurrency=3)
    assert restarts == []
    assert len(pages) == 10
    [t0] = hit_at
    sent_later = [
        at for at, request in listing.arrivals if int(request.url.params["offset"]) in {12, 15}
    ]
    assert len(sent_later) == 2
    assert min(sent_later) >= t0 + 0.29


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_gate_holds_others_not_the_request_that_met_the_429() -> None:
    """The thread whose 429 set the hold waits by its own retry loop, every other at the gate."""
    clock = FakeClock()
    gate = RateGate(clock=clock, sleep=clock.sleep)
    assert gate.wait() == 0.0
    gate.hold(2.0)
    assert gate.wait() == 0.0  # this thread set it
    waited: list[float] = []
    other = threading.Thread(target=lambda: waited.append(gate.wait()))
    other.start()
    other.join()
    assert waited == [2.0]


def test_the_gate_only_moves_later_and_never_past_a_deadline() -> None:
    """A shorter hold does not shorten a longer one; a waiter stops at its budget's end."""
    clock = FakeClock()
    gate = RateGate(clock=clock, sleep=clock.sleep)
    gate.hold(5.0)
    gate.hold(1.0)
    waited: list[float] = []

    def wait_twice() -> None:
        waited.append(gate.wait(deadline=clock.now + 3.0))
        waited.append(gate.wait())

    other = threading.Thread(target=wait_twice)
    other.start()
    other.join()
    assert waited == [3.0, 2.0]


@given(st.text(max_size=40) | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()))
def test_id_keys_are_equal_only_for_equal_ids(entry_id: str) -> None:
    """The compact key a walk remembers an id by tells apart every two different strings."""
    others = [entry_id.upper(), entry_id.lower(), entry_id + "0", "\x00" + entry_id, entry_id[1:]]
    for other in others:
        assert (id_key(other) == id_key(entry_id)) == (other == entry_id)
    if is_uuid(entry_id) and entry_id == entry_id.lower():
        assert 0 <= id_key(entry_id) < 2**128
