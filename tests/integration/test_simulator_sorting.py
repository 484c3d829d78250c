"""The simulator's sorting and offset paging, and its faults for offset paging's lies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from devtools.simulator import FaultRule, JobSpec, SimState
from tests.integration.test_simulator import Serve, ids, items_path, serve, walk

__all__ = ["serve"]

pytestmark = pytest.mark.integration

SORTED = {"sorting_keys": "accountingEntryId", "sorting_order": "ASC"}


def by_offset(client: httpx.Client, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Read pages at offsets 0, limit, 2 x limit ... up to the first page's total."""
    first = client.get(path, params={**params, "offset": 0, "limit": limit})
    assert first.status_code == 200, first.text
    pages = [first.json()]
    total = pages[0]["pagination"]["total"]
    for offset in range(limit, total, limit):
        response = client.get(path, params={**params, "offset": offset, "limit": limit})
        assert response.status_code == 200, response.text
        pages.append(response.json())
    return pages


def test_both_layers_sort_by_entry_id_and_page_by_offset(serve: Serve) -> None:
    """Sorted by accountingEntryId: offset pages hold every entry once, in id order; echoed."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=95, missing_export_items=3, seed=4))
    client = serve(state)

    for path, params in ((items_path(job_id), {}), ("/v3/export-items", {"job_id": job_id})):
        pages = by_offset(client, path, 20, **params, **SORTED)
        read = ids(pages)
        assert read == sorted(read)
        assert len(read) == len(set(read)) == pages[0]["pagination"]["total"]
        assert pages[-1]["pagination"]["hasNextPage"] is False
        echo = pages[1]["pagination"]["currentRequestPagination"]
        assert (echo["offset"], echo["sortingKeys"], echo["sortingOrder"]) == (
            20,
            ["accountingEntryId"],
            ["ASC"],
        )


def test_the_sorted_order_holds_while_statuses_change(serve: Serve) -> None:
    """Items moving status between two page reads do not move in an id-sorted listing."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=40, item_statuses={"pending": 1.0}, seed=2))
    client = serve(state)

    first = client.get(items_path(job_id), params={"offset": 0, "limit": 20, **SORTED}).json()
    for item in state.items(job_id)[:25]:
        state.set_item_status(job_id, item.accounting_entry_id, "successful")
    second = client.get(items_path(job_id), params={"offset": 20, "limit": 20, **SORTED}).json()
    read = ids([first, second])
    assert read == sorted(item.accounting_entry_id for item in state.items(job_id))


def test_descending_and_by_date(serve: Serve) -> None:
    """DESC reverses the id order; the data layer also sorts by its date, ids breaking ties."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=50, same_date_groups=5, seed=3))
    client = serve(state)

    down = ids(
        walk(client, items_path(job_id), sorting_keys="accountingEntryId", sorting_order="DESC")
    )
    assert down == sorted(down, reverse=True)
    query = {"job_id": job_id, "sorting_keys": ["date", "accountingEntryId"], "limit": 50}
    entries = client.get("/v3/export-items", params=query).json()["data"]
    keys = [(datetime.fromisoformat(e["date"]), e["accountingEntryId"]) for e in entries]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"sorting_keys": "status"}, "sorting_keys must be among accountingEntryId"),
        ({"sorting_keys": "accountingEntryId", "sorting_order": "UP"}, "sorting_order must be"),
        (
            {"sorting_keys": "accountingEntryId", "sorting_order": ["ASC", "DESC"]},
            "one order per sorting key",
        ),
        ({"sorting_order": "ASC"}, "sorting_order needs sorting_keys"),
    ],
)
def test_sorting_the_simulator_does_not_take_is_a_400(
    serve: Serve, params: dict[str, Any], fragment: str
) -> None:
    """A key that could move (status), an unknown order, orders not paired with keys: 400."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=5))
    client = serve(state)
    response = client.get(items_path(job_id), params=params)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_a_cursor_of_a_sorted_listing_is_foreign_to_the_unsorted_one(serve: Serve) -> None:
    """Cursors are tied to the listing's sorting: mixing them is a 400, not a silent skip."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=30))
    client = serve(state)
    page = client.get(items_path(job_id), params={"limit": 10, **SORTED}).json()
    cursor = page["pagination"]["endCursor"]
    assert client.get(items_path(job_id), params={"after": cursor, **SORTED}).status_code == 200
    assert client.get(items_path(job_id), params={"after": cursor}).status_code == 400


def test_skip_and_total_moves_faults_distort_one_offset_page(serve: Serve) -> None:
    """skip leaves the page's last entry out; total_moves says one more than the job holds."""
    state = SimState()
    job_id = state.add_job(JobSpec(items=30))
    state.add_fault(FaultRule(endpoint="job_items", kind="skip", after=1, times=1))
    state.add_fault(FaultRule(endpoint="job_items", kind="total_moves", after=2, times=1))
    client = serve(state)

    pages = by_offset(client, items_path(job_id), 10, **SORTED)
    assert [len(page["data"]) for page in pages] == [10, 9, 10]
    assert [page["pagination"]["total"] for page in pages] == [30, 30, 31]
    assert len(set(ids(pages))) == 29
    assert [call.fault for call in state.calls] == [None, "skip", "total_moves"]
