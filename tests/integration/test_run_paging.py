"""A run reading by offset, several pages at a time, against the simulator with latency.

Both ways of reading a job (``PLEO_PAGE_CONCURRENCY=1``, the cursor walk, and above 1, the offset
walk) must publish the same plan, the same message bodies byte for byte; the offset walk must read
each page once, by offset, in the sorted order it asked for.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from contract.celery_app import make_app
from contract.settings import Settings
from devtools.simulator import JobSpec, SimState
from producer.components import produce
from tests.chaos.test_api_chaos import assert_queue_is, chaos_job, expected_messages
from tests.conftest import ITEMS_QUEUE, with_settings
from tests.support.queues import redis_queue

pytestmark = pytest.mark.integration


def run(settings: Settings, job_id: str) -> dict[str, Any]:
    """One producer run in this process, the way ``pleo-export run`` does it."""
    return produce(job_id, settings=settings, app=make_app(settings)).as_dict()


def test_a_job_read_both_ways_publishes_the_same_messages(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Cursor walk, then offset walk at 4, of one job: the same plan and the same messages."""
    job_id = sim_state.add_job(chaos_job(1234, seed=21))
    published = []
    for concurrency in (1, 4):
        rdb.flushdb()
        summary = run(with_settings(settings, page_size=50, page_concurrency=concurrency), job_id)
        assert summary["paging"] == ("cursor" if concurrency == 1 else "offset")
        assert summary["paging_fallbacks"] == []
        queued = redis_queue(rdb)
        published.append(
            (
                {k: summary[k] for k in ("planned", "duplicates", "not_actionable")},
                [(q.task_id, q.kwargs) for q in queued],
                # The message bodies as kombu wrote them (the envelope around them holds a fresh
                # delivery tag per message, so it differs between any two runs).
                [q.envelope["body"] for q in queued],
            )
        )
    by_cursor, by_offset = published
    assert by_offset == by_cursor
    assert len(by_cursor[1]) == by_cursor[0]["planned"] > 1000


def test_a_run_at_concurrency_reads_each_page_once_by_offset(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """With 50 ms a request and concurrency 6, every page of both layers is read by offset."""
    sim_state.latency = 0.05
    items, page_size = 2000, 100
    job_id = sim_state.add_job(JobSpec(items=items, missing_export_items=20, seed=3))
    # 5 s a request, not the suite's 1 s: six pages in flight against a simulator that shares
    # the test process's interpreter are slow on a loaded machine.
    paced = with_settings(settings, page_size=page_size, page_concurrency=6, http_timeout=5.0)
    summary = run(paced, job_id)

    assert (summary["status"], summary["paging"], summary["paging_fallbacks"]) == (
        "enqueued",
        "offset",
        [],
    )
    assert_queue_is(rdb, job_id, expected_messages(sim_state, job_id))
    for endpoint, count in (("job_items", items), ("export_items", items - 20)):
        calls = [call for call in sim_state.calls if call.endpoint == endpoint]
        offsets = sorted(int(call.query["offset"]) for call in calls)
        # Each page by its offset, none skipped, none past the end. A request that timed out on
        # a loaded machine (CI saw 5 of 20) is retried: an offset may be asked more than once.
        assert sorted(set(offsets)) == list(range(0, count, page_size)), endpoint
        assert all(call.query["sorting_keys"] == "accountingEntryId" for call in calls)
    assert summary["pages"] == sum(len(range(0, n, page_size)) for n in (items, items - 20))
    assert summary["pages"] <= len(
        [c for c in sim_state.calls if c.endpoint in {"job_items", "export_items"}]
    )
    assert rdb.llen(ITEMS_QUEUE) == summary["enqueued"]
