"""Payloads for messages that carry none: the data layer read once per job, under the one lock."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from consumers.payloads import PayloadCache
from contract.errors import TransientUpstreamError
from contract.keys import lease_keys
from contract.lease import Holder, Leases
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from pleo.client import PleoClient, make_http_client

pytestmark = pytest.mark.integration


def export_item_requests(state: SimState) -> int:
    return sum(1 for call in state.calls if call.endpoint == "export_items")


def test_the_data_layer_is_read_once_then_served_from_redis(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """The first payload asked for reads every page; the others cost Pleo nothing."""
    job_id = sim_state.add_job(JobSpec(items=250, status="in_progress"))
    entries = [item["accountingEntryId"] for item in sim_state.export_items(job_id)]
    with make_http_client(settings) as http:
        cache = PayloadCache(rdb, PleoClient(http, settings), dedup_ttl=3600)
        first = cache.get(job_id, entries[0])
        pages = export_item_requests(sim_state)
        assert first is not None
        assert first["accountingEntryId"] == entries[0]
        assert pages == 3  # 250 items at page size 100
        assert all(cache.get(job_id, entry) is not None for entry in entries[1:])
        assert export_item_requests(sim_state) == pages


def test_a_live_reader_is_waited_for_and_a_dead_ones_lock_taken(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """While a live reader holds the lock others wait; a lock whose holder died is taken at once."""
    job_id = sim_state.add_job(JobSpec(items=20, status="in_progress"))
    entry = sim_state.export_items(job_id)[0]["accountingEntryId"]
    lock, fence = lease_keys(job_id, "payloads-lock")
    with make_http_client(settings) as http:
        pleo = PleoClient(http, settings)
        with Leases(rdb, ttl=10).held(lock, fence, who="reader", wait=0, patient=False):
            started = time.monotonic()
            with pytest.raises(TransientUpstreamError):
                PayloadCache(rdb, pleo, dedup_ttl=3600, wait=0.5).get(job_id, entry)
            assert time.monotonic() - started >= 0.5
        assert export_item_requests(sim_state) == 0

        gone = subprocess.Popen(["true"])
        gone.wait()
        dead = Holder("payload reader", "here", gone.pid, Holder.here("x").node, "1")
        rdb.set(lock, f"1:{'0' * 32}|{dead.encode()}", px=600_000)
        started = time.monotonic()
        assert PayloadCache(rdb, pleo, dedup_ttl=3600, wait=5).get(job_id, entry) is not None
        assert time.monotonic() - started < 3
