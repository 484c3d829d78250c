"""A flusher that died with its PUT still on the way to Pleo: the next one waits for it to land.

A dead local holder's write-back lease is taken over at once (contract/lease.py), sooner than its
PUT may be served. Were ``:sending`` settled from Pleo's statuses at once, a PUT Pleo serves a
moment later would be sent again by the new flusher: Pleo would apply those updates twice.
"""

from __future__ import annotations

import json
import threading
import time

import redis

from consumers.reporting import Reporter
from consumers.results import success_update
from contract.keys import outbox_key, sending_at_key, sending_key
from contract.ledger import Ledger
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from pleo.client import PleoClient, make_http_client

# Shortened for the test: the waits at the defaults are computed below.
REQUEST_TIMEOUT = 3.0
LANDS_AFTER = 0.3


def test_the_next_flusher_waits_until_a_dead_flushers_put_can_no_longer_land(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """The dead flusher's PUT of 100 lands 0.3 s after the takeover; it is not sent again."""
    defaults = Settings()
    # At the defaults a takeover right after the note waits the HTTP timeout: 10 s, once.
    assert min(defaults.http_timeout, defaults.retry_budget + defaults.http_timeout) == 10.0
    job_id = sim_state.add_job(
        JobSpec(items=150, status="in_progress", item_statuses={"pending": 1})
    )
    entries = sorted(i.accounting_entry_id for i in sim_state.items(job_id))
    with make_http_client(settings) as http:
        pleo = PleoClient(http, settings)
        ledger = Ledger(rdb, lease_ttl=settings.lease_ttl, dedup_ttl=3600)
        reporter = Reporter(
            rdb,
            pleo,
            ledger,
            dedup_ttl=3600,
            max_attempts=2,
            request_timeout=REQUEST_TIMEOUT,
            retry_budget=0.0,
        )
        for entry in entries:
            reporter.record(job_id, success_update(entry, "JE", None, "2026-01-01T00:00:00Z"))
        first = [json.loads(u) for _e, u in sorted(rdb.hgetall(outbox_key(job_id)).items())[:100]]
        # The dead flusher's note, written just before its PUT, as Reporter writes it.
        rdb.sadd(sending_key(job_id), *(u["accountingEntryId"] for u in first))
        rdb.set(sending_at_key(job_id), repr(time.time()))

        def lands_late() -> None:
            time.sleep(LANDS_AFTER)
            with make_http_client(settings) as late:
                PleoClient(late, settings).update_job_items(job_id, first)

        in_flight = threading.Thread(target=lands_late)
        in_flight.start()
        started = time.monotonic()
        result = reporter.flush(job_id)
        waited = time.monotonic() - started
        in_flight.join()

    assert sim_state.update_counts(job_id) == dict.fromkeys(entries, 1)
    assert (result.sent, result.accepted) == (50, 50)
    assert waited >= REQUEST_TIMEOUT - 0.5  # it waited for the PUT it could not see yet
    assert sorted(c.items or 0 for c in sim_state.calls if c.method == "PUT") == [50, 100]
