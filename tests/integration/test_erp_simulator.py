"""The ERP simulator as a real HTTP server on loopback: its limits, idempotency, batches, faults,
pause, booking order and control API, spoken to with plain httpx; and `pleo-export simulate-erp`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devtools.erp_simulator import RunningErpSimulator
from tests.conftest import ROOT, wait_for
from tests.support.erp_sim import ErpSims, body, control

pytestmark = pytest.mark.integration

ENTRY = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"


def post(sim: RunningErpSimulator, entry: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return httpx.post(f"{sim.url}/journal/entries", json=entry, headers=headers, timeout=5)


def lookup(sim: RunningErpSimulator, entry_id: str = ENTRY) -> httpx.Response:
    return httpx.get(
        f"{sim.url}/journal/entries", params={"accountingEntryId": entry_id}, timeout=5
    )


def entry_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def test_calls_over_the_rate_limit_get_429_with_whole_seconds_to_wait(erp_sim: ErpSims) -> None:
    """Three calls a minute: the fourth is refused 429 with an integer Retry-After that covers
    the window, and a refused call books nothing."""
    sim = erp_sim(calls=3, period=60.0)
    assert [post(sim, body(entry_id(n))).status_code for n in range(3)] == [201, 201, 201]
    refused = post(sim, body(entry_id(3)))
    assert refused.status_code == 429
    assert re.fullmatch(r"[0-9]+", refused.headers["Retry-After"])
    assert 58 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["reasonType"] == "accounting_system_rate_limit"
    assert sim.state.booked_count(entry_id(3)) == 0
    assert sim.state.stats()["rateLimited"] == 1


def test_a_fractional_retry_after_is_enough_to_be_admitted_again(erp_sim: ErpSims) -> None:
    """With fractional Retry-After, waiting exactly what it says lets the next call in."""
    sim = erp_sim(calls=2, period=0.5, fractional_retry_after=True)
    assert [lookup(sim).status_code for _ in range(2)] == [200, 200]
    refused = lookup(sim)
    assert refused.status_code == 429
    wait = float(refused.headers["Retry-After"])
    assert 0 < wait <= 0.5
    time.sleep(wait)
    assert lookup(sim).status_code == 200


def test_calls_over_the_concurrency_limit_get_429(erp_sim: ErpSims) -> None:
    """Five calls at once against a cap of two (each held 1 s): two are served, three refused,
    and the simulator never had more than two in flight."""
    sim = erp_sim(concurrency=2, latency=1.0)
    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = sorted(pool.map(lambda n: post(sim, body(entry_id(n))).status_code, range(5)))
    assert statuses == [201, 201, 429, 429, 429]
    stats = sim.state.stats()
    assert stats["maxInFlight"] == 2
    assert stats["bookings"] == 2
    assert stats["inFlight"] == 0


def test_the_same_key_replays_the_first_answer_and_books_once(erp_sim: ErpSims) -> None:
    """A post repeated with its Idempotency-Key gets the same status and body; one booking. A
    refusal replays the same way."""
    sim = erp_sim(unknown_accounts=["9999"])
    first, again = post(sim, body(ENTRY), "k-1"), post(sim, body(ENTRY), "k-1")
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert sim.state.booked_count(ENTRY) == 1
    bad = body(entry_id(2), code="9999")
    refused, refused_again = post(sim, bad, "k-2"), post(sim, bad, "k-2")
    assert refused.status_code == refused_again.status_code == 422
    assert refused.content == refused_again.content
    assert refused.json()["reasonType"] == "account_unknown"
    stats = sim.state.stats()
    assert (stats["bookings"], stats["replays"], stats["duplicateBookings"]) == (1, 2, 0)


def test_a_key_past_its_window_is_forgotten_and_the_entry_is_booked_twice(
    erp_sim: ErpSims,
) -> None:
    """After key_window seconds the same key books again, as a real ERP would; the simulator
    counts the duplicate by accountingEntryId."""
    sim = erp_sim(key_window=0.3)
    first = post(sim, body(ENTRY), "k-1")
    time.sleep(0.4)
    second = post(sim, body(ENTRY), "k-1")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert sim.state.booked_count(ENTRY) == 2
    assert sim.state.stats()["duplicateBookings"] == 1
    assert [b["id"] for b in lookup(sim).json()["data"]] == [
        first.json()["id"],
        second.json()["id"],
    ]


def test_a_batch_books_what_it_can_and_refuses_the_rest_in_order(erp_sim: ErpSims) -> None:
    """One call, one result per entry in order: booked, refused for an unknown account or tax
    code, or malformed; a replayed entry keeps its first booking; too many entries is 413."""
    sim = erp_sim(unknown_accounts=["9999"], unknown_tax_codes=["X0"], batch_max=5)
    assert post(sim, body(entry_id(4)), "k-4").status_code == 201
    batch = [
        {**body(entry_id(0)), "idempotencyKey": "k-0"},
        {**body(entry_id(1), code="9999"), "idempotencyKey": "k-1"},
        {**body(entry_id(2), tax_code="X0"), "idempotencyKey": "k-2"},
        {"accountingEntryId": entry_id(3), "idempotencyKey": "k-3"},
        {**body(entry_id(4)), "idempotencyKey": "k-4"},
    ]
    answer = httpx.post(f"{sim.url}/journal/batch", json={"entries": batch}, timeout=5)
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["accountingEntryId"] for r in results] == [entry_id(n) for n in range(5)]
    assert [r["status"] for r in results] == [
        "booked",
        "rejected",
        "rejected",
        "rejected",
        "booked",
    ]
    assert [r.get("reasonType") for r in results[1:4]] == [
        "account_unknown",
        "tax_code_unknown",
        "accounting_system_validation_failure",
    ]
    assert results[4]["id"] == sim.state.find(entry_id(4))[0].id
    assert [b.via for b in sim.state.bookings()] == ["entries", "batch"]
    assert sim.state.stats()["calls"] == {"post": 1, "batch": 1}
    too_many = httpx.post(f"{sim.url}/journal/batch", json={"entries": batch * 2}, timeout=5)
    assert too_many.status_code == 413


def test_injected_failures_book_nothing_and_follow_the_seed(erp_sim: ErpSims) -> None:
    """fail_rate answers fail_status without booking; the same seed gives the same sequence."""
    runs = []
    for _ in range(2):
        sim = erp_sim(fail_rate=0.5, fail_status=502, seed=11)
        runs.append([post(sim, body(entry_id(n))).status_code for n in range(12)])
        assert sim.state.stats()["bookings"] == runs[-1].count(201)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {201, 502}


def test_an_injected_timeout_hangs_and_may_book_first(erp_sim: ErpSims) -> None:
    """A timeout fault holds the call past the client's timeout; with timeout_books the entry
    was booked anyway, and the retry with its key gets that booking back."""
    sim = erp_sim(timeout_rate=1.0, hang=5.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim.url}/journal/entries", json=body(ENTRY), timeout=0.3)
    assert sim.state.booked_count(ENTRY) == 0
    booking = erp_sim(timeout_rate=1.0, hang=5.0, timeout_books=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{booking.url}/journal/entries",
            json=body(ENTRY),
            headers={"Idempotency-Key": "k"},
            timeout=0.3,
        )
    assert booking.state.booked_count(ENTRY) == 1
    assert control(booking, "PATCH", "config", json={"timeout_rate": 0}).status_code == 200
    retried = post(booking, body(ENTRY), "k")
    assert retried.status_code == 201
    assert retried.json()["id"] == booking.state.find(ENTRY)[0].id
    assert booking.state.booked_count(ENTRY) == 1


def test_a_forced_pause_refuses_every_call_with_its_retry_after(erp_sim: ErpSims) -> None:
    """POST /_sim/pause: every call 429 with the given Retry-After until the pause ends."""
    sim = erp_sim()
    assert control(sim, "POST", "pause", json={"retry_after": 7, "seconds": 0.5}).status_code == 200
    refused = [post(sim, body(ENTRY)), lookup(sim)]
    assert [r.status_code for r in refused] == [429, 429]
    assert {r.headers["Retry-After"] for r in refused} == {"7"}
    wait_for(lambda: lookup(sim).status_code == 200, timeout=5, what="the pause to end")
    assert post(sim, body(ENTRY)).status_code == 201
    bad = control(sim, "POST", "pause", json={"retry_after": -1, "seconds": 1})
    assert bad.status_code == 400


def test_bookings_are_listed_in_the_order_booked(erp_sim: ErpSims) -> None:
    """GET /_sim/bookings lists entries as they were booked, with ids in sequence."""
    sim = erp_sim()
    order = [3, 0, 4, 1, 2]
    for n in order:
        assert post(sim, body(entry_id(n))).status_code == 201
    listed = control(sim, "GET", "bookings").json()["data"]
    assert [b["accountingEntryId"] for b in listed] == [entry_id(n) for n in order]
    assert [b["id"] for b in listed] == [f"JE-{n:06d}" for n in range(1, 6)]
    assert {b["via"] for b in listed} == {"entries"}


def test_bearer_auth_config_patch_stats_and_reset(erp_sim: ErpSims) -> None:
    """A token makes /journal answer 401 without it; PATCH refuses unknown or bad settings and
    applies good ones; stats count calls and statuses; reset forgets bookings and keys."""
    sim = erp_sim(token="s3cret")
    assert post(sim, body(ENTRY)).status_code == 401
    authed = httpx.post(
        f"{sim.url}/journal/entries",
        json=body(ENTRY),
        headers={"Authorization": "Bearer s3cret", "Idempotency-Key": "k"},
        timeout=5,
    )
    assert authed.status_code == 201
    shown = control(sim, "GET", "config").json()
    assert shown["token"] == "***"
    assert control(sim, "PATCH", "config", json={"nope": 1}).status_code == 400
    assert control(sim, "PATCH", "config", json={"fail_rate": 2}).status_code == 400
    assert control(sim, "PATCH", "config", json={"token": None, "calls": 1}).status_code == 200
    assert lookup(sim).status_code == 200
    assert lookup(sim).status_code == 429
    stats = control(sim, "GET", "stats").json()
    assert stats["calls"] == {"post": 2, "lookup": 2}
    assert stats["statuses"] == {"200": 1, "201": 1, "401": 1, "429": 1}
    assert control(sim, "POST", "reset").status_code == 204
    assert sim.state.stats()["bookings"] == 0
    assert post(sim, body(ENTRY), "k").json()["id"] == "JE-000001"


def test_the_cli_command_serves_the_simulator_with_its_limits(tmp_path: Any) -> None:
    """`pleo-export simulate-erp --port 0 --calls 2 --period 60` announces its URL, books an
    entry, and refuses the third call of the minute."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLEO_", "CELERY_", "ERP_"))}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "erp-sim.log"
    args = ["simulate-erp", "--port", "0", "--calls", "2", "--period", "60", "--seed", "3"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", *args], env=env, stdout=out, stderr=out
        )
    try:
        announced = wait_for(
            lambda: re.search(r"simulated ERP journal at (http://\S+)", log.read_text()),
            timeout=20,
            what="simulate-erp to announce its URL",
            explain=log.read_text,
        )
        url = announced[1]
        booked = httpx.post(f"{url}/journal/entries", json=body(ENTRY), timeout=5)
        assert booked.status_code == 201, booked.text
        assert booked.json()["accountingEntryId"] == ENTRY
        params = {"accountingEntryId": ENTRY}
        found = httpx.get(f"{url}/journal/entries", params=params, timeout=5)
        assert found.json()["data"] == [booked.json()]
        third = httpx.get(f"{url}/journal/entries", params=params, timeout=5)
        assert third.status_code == 429
        assert 59 <= int(third.headers["Retry-After"]) <= 60
        assert httpx.get(f"{url}/_sim/stats", timeout=5).json()["rateLimited"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
