"""The repair sweep rebuilds a lost message from what the producer recorded: no re-plan.

Messages are taken off the queue as a BRPOP whose worker died before kombu's ``unacked`` record
would take them (the chaos suite, ``tests/chaos/test_worker_kill.py``, kills real workers).
"""

from __future__ import annotations

import pytest
import redis

from consumers.watchdog import RepairSettings, open_repairer
from contract.celery_app import make_app
from contract.keys import items_key, placed_key
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.conftest import with_settings
from tests.support.queues import Queued, decode, redis_queue

pytestmark = pytest.mark.integration

NOW = RepairSettings(stall=0.0, interval=1.0, held_for=60.0)


def take(rdb: redis.Redis, *positions: int) -> list[Queued]:
    """Remove the messages at these delivery positions, as BRPOPs of workers that died."""
    raws = [rdb.lindex(ITEMS_QUEUE, -1 - p) for p in positions]
    for raw in raws:
        assert raw is not None
        assert rdb.lrem(ITEMS_QUEUE, 1, raw) == 1
    return [decode(raw) for raw in raws if raw is not None]


def repaired(settings: Settings, rdb: redis.Redis, job_id: str, before: set[str]) -> list[Queued]:
    """Run one repair of the job; the messages it queued, in delivery order."""
    with open_repairer(settings, NOW, make_app(settings)) as repairer:
        repairer.repair(job_id)
    return [q for q in redis_queue(rdb) if q.task_id not in before]


@pytest.mark.parametrize("ordering", ["booked_at", "entry_id"])
def test_lost_messages_come_back_exactly_as_first_sent(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, ordering: str
) -> None:
    """Same task id and keyword arguments (payload included), from placements and the data layer.

    The job has entries the data layer lacks, so ``export_item`` null is rebuilt as null too.
    """
    settings = with_settings(settings, ordering=ordering)
    job_id = sim_state.add_job(JobSpec(items=120, missing_export_items=4, seed=21))
    produce(job_id, settings=settings, app=make_app(settings))
    assert rdb.hlen(placed_key(job_id)) == 120
    lost = take(rdb, 3, 64, 117)
    before = {q.task_id for q in redis_queue(rdb)}

    again = repaired(settings, rdb, job_id, before)

    by_sequence = sorted(lost, key=lambda q: q.kwargs["sequence"])
    assert [(q.task_id, q.kwargs) for q in again] == [(q.task_id, q.kwargs) for q in by_sequence]
    if ordering == "entry_id":
        assert all(q.kwargs["export_item"] is None for q in again)


def test_a_job_published_before_placements_were_recorded_is_still_repaired(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """An upgrade with a job in flight: its marks, written by the earlier release, have no
    placements beside them (every other key is as it wrote them). A lost message comes back with
    its task id, ids, status and payload exact, numbered by entry id among the published ones.
    """
    job_id = sim_state.add_job(JobSpec(items=60, seed=22))
    produce(job_id, settings=settings, app=make_app(settings))
    rdb.delete(placed_key(job_id))
    (lost,) = take(rdb, 41)
    before = {q.task_id for q in redis_queue(rdb)}

    (again,) = repaired(settings, rdb, job_id, before)

    assert again.task_id == lost.task_id
    unchanged = ("schema", "job_id", "company_id", "accounting_entry_id", "status_at_fetch")
    for key in (*unchanged, "booked_at", "export_item"):
        assert again.kwargs[key] == lost.kwargs[key], key
    published = sorted(q.kwargs["accounting_entry_id"] for q in redis_queue(rdb))
    entry = lost.kwargs["accounting_entry_id"]
    assert again.kwargs["total"] == len(published)
    assert again.kwargs["sequence"] == published.index(entry)
    assert rdb.hget(items_key(job_id), "republished") == b"1"
