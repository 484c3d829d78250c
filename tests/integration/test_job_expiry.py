"""Pleo's job expiry seen from our side: what the producer records for the ERP workers' check.

Real Redis, the simulator over HTTP, the producer run in-process.
"""

from __future__ import annotations

import time

import pytest
import redis

from producer.celery_app import make_app
from producer.components import produce
from producer.config import Settings
from producer.keys import pleo_action_key, progress_key
from producer.simulator import JobSpec, SimState

pytestmark = pytest.mark.integration


def publish(settings: Settings, state: SimState, items: int) -> str:
    """A pending job of ``items`` entries, claimed and published by the real producer."""
    job_id = state.add_job(JobSpec(items=items, item_statuses={"pending": 1.0}))
    assert produce(job_id, settings=settings, app=make_app(settings)).status == "enqueued"
    return job_id


def test_producer_records_expires_in_and_its_claim(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """The claim leaves the job's expiresIn in its progress and stamps the started event's time."""
    before = time.time()
    job_id = publish(settings, sim_state, 3)
    stamp = float(rdb.get(pleo_action_key(job_id)) or 0)
    assert before <= stamp <= time.time()
    assert rdb.hget(progress_key(job_id), "expires_in") == b"3600"

    rdb.delete(pleo_action_key(job_id))
    produce(job_id, settings=settings, app=make_app(settings))  # a recovery run: no new event
    assert rdb.get(pleo_action_key(job_id)) is None
