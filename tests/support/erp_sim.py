"""The ERP simulator for tests: started with a config on a free loopback port, stopped after.

``ErpSims`` is what the ``erp_sim`` fixture (tests/conftest.py) hands a test: call it with
``ErpSimConfig`` fields to get a running simulator; each one is stopped at teardown. ``entries``
builds entries with the Pleo simulator's own payloads, as a worker would hand them to an adapter.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from consumers.erp import Entry
from devtools.erp_simulator import ErpSimConfig, ErpSimState, RunningErpSimulator, start_in_thread
from devtools.simulator.payloads import export_item

JOB = "5b0c7a3e-1d2f-4e6a-9b8c-0d1e2f3a4b5c"
COMPANY = "8f7e6d5c-4b3a-4291-8e7f-6a5b4c3d2e1f"


class ErpSims:
    """Starts ERP simulators; ``stop_all`` stops every one through ``stopper``."""

    def __init__(self) -> None:
        self._running: list[RunningErpSimulator] = []

    def __call__(self, **config: Any) -> RunningErpSimulator:
        """A simulator with these ``ErpSimConfig`` fields, serving on 127.0.0.1:<free port>."""
        self._running.append(start_in_thread(ErpSimState(ErpSimConfig(**config))))
        return self._running[-1]

    def stop_all(self, stopper: Callable[[Callable[[], None]], None]) -> None:
        """Hand each simulator's ``stop`` to ``stopper`` (the background stops, say)."""
        for running in self._running:
            stopper(running.stop)


def entries(count: int, seed: int = 42) -> list[Entry]:
    """``count`` valid entries with the Pleo simulator's payloads; the same seed, the same ones."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    made = []
    for n in range(count):
        entry_id = f"{seed:04d}0000-0000-4000-8000-{n:012d}"
        booked = start + timedelta(minutes=n)
        payload = export_item(rng, entry_id, COMPANY, booked, with_account=True, vendor_based=False)
        made.append(Entry(entry_id, JOB, COMPANY, n, payload["date"], payload))
    return made


def account_codes(entry: Entry) -> set[str]:
    """The account codes the entry's lines use."""
    assert entry.export_item is not None
    return {line["account"]["code"] for line in entry.export_item["accountingEntryLines"]}


def control(sim: RunningErpSimulator, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call to the simulator's ``/_sim/`` control API (as another process would make it)."""
    return httpx.request(method, f"{sim.url}/_sim/{path}", timeout=5, **kwargs)


def body(entry_id: str, *, code: str = "6840", tax_code: str | None = "I25") -> dict[str, Any]:
    """A minimal entry body the simulated journal books (as the HTTP adapter writes it)."""
    line = {"lineNo": 1, "accountCode": code, "lineAmount": 12_500, "netAmount": 10_000}
    return {
        "accountingEntryId": entry_id,
        "date": "2026-03-01T09:30:00Z",
        "currency": "DKK",
        "amount": 12_500,
        "type": "card_purchase",
        "lines": [{**line, "taxAmount": 2_500, "taxCode": tax_code}],
    }
