"""The plan: filtered, deduplicated, ordered, numbered, and blind to paging."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pleo.models import ITEM_STATUSES, ExportItem, JobItem, index_export_items
from producer.plan import make_plan

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def entry(n: int) -> str:
    return str(uuid.UUID(int=n))


def export_item(entry_id: str, minutes: int, *, text: str | None = None) -> ExportItem:
    moment = BASE + timedelta(minutes=minutes)
    date = text or moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ExportItem(
        entry_id, date, moment, json.dumps({"accountingEntryId": entry_id, "date": date}).encode()
    )


def test_keeps_only_pending_and_in_progress() -> None:
    """Items that are successful, failed or abandoned are not planned."""
    items = [JobItem(entry(i), s) for i, s in enumerate(sorted(ITEM_STATUSES))]
    plan = make_plan(items, None, ordering="entry_id")
    assert {p.status_at_fetch for p in plan.items} == {"pending", "in_progress"}
    assert plan.not_actionable == 3


def test_orders_by_date_then_id_with_undated_last() -> None:
    """Dated entries come first by (date, id); entries without export item follow, by id."""
    items = [JobItem(entry(n), "pending") for n in (5, 4, 3, 2, 1)]
    exports = {
        entry(4): export_item(entry(4), 10),
        entry(2): export_item(entry(2), 10),
        entry(5): export_item(entry(5), 1),
    }
    plan = make_plan(items, exports)
    assert [p.accounting_entry_id for p in plan.items] == [entry(n) for n in (5, 2, 4, 1, 3)]
    assert [p.sequence for p in plan.items] == [0, 1, 2, 3, 4]
    assert plan.items[0].booked_at == exports[entry(5)].date
    assert plan.items[0].export_item == exports[entry(5)].payload
    assert plan.items[3].export_item is None
    assert plan.items[3].booked_at is None
    assert plan.missing_export_items == 2


def test_dates_compare_in_utc_not_as_text() -> None:
    """A +02:00 date that is earlier in UTC sorts first even though its text sorts later."""
    early = ExportItem(entry(2), "2026-01-01T11:00:00+02:00", BASE + timedelta(hours=9), b"{}")
    late = ExportItem(entry(1), "2026-01-01T10:00:00Z", BASE + timedelta(hours=10), b"{}")
    plan = make_plan(
        [JobItem(entry(1), "pending"), JobItem(entry(2), "pending")],
        {entry(1): late, entry(2): early},
    )
    assert [p.accounting_entry_id for p in plan.items] == [entry(2), entry(1)]


def test_entry_id_ordering_ignores_dates() -> None:
    """With ordering=entry_id the plan is by id alone and carries no payloads."""
    items = [JobItem(entry(n), "pending") for n in (3, 1, 2)]
    plan = make_plan(items, None, ordering="entry_id")
    assert [p.accounting_entry_id for p in plan.items] == [entry(1), entry(2), entry(3)]
    assert all(p.export_item is None for p in plan.items)
    assert plan.missing_export_items == 0


def test_repeated_entry_planned_once_with_furthest_status() -> None:
    """An entry listed twice is planned once; a terminal sighting anywhere drops it."""
    items = [
        JobItem(entry(1), "pending"),
        JobItem(entry(1), "in_progress"),
        JobItem(entry(2), "pending"),
        JobItem(entry(2), "successful"),
        JobItem(entry(1), "pending"),
    ]
    plan = make_plan(items, None, ordering="entry_id")
    assert [(p.accounting_entry_id, p.status_at_fetch) for p in plan.items] == [
        (entry(1), "in_progress")
    ]
    assert plan.duplicates == 3
    assert plan.items_seen == 5


def test_repeated_export_item_choice_is_order_independent() -> None:
    """The data layer listing an entry twice yields the same chosen copy whatever the order."""
    a = export_item(entry(1), 5)
    b = export_item(entry(1), 5, text="2026-01-01T00:05:00.000Z")
    assert index_export_items([[a], [b]])[entry(1)] == index_export_items([[b], [a]])[entry(1)]


statuses = st.sampled_from(sorted(ITEM_STATUSES))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 40), statuses, st.integers(0, 5)), max_size=120),
    undated=st.sets(st.integers(0, 40)),
    page_size=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_plan_ignores_page_size_and_page_order(
    rows: list[tuple[int, str, int]], undated: set[int], page_size: int, seed: int
) -> None:
    """The same items in any page size and any page order give the same plan."""
    items = [JobItem(entry(n), status) for n, status, _ in rows]
    exports = [export_item(entry(n), minutes) for n, _, minutes in rows if n not in undated]
    reference = make_plan(items, index_export_items([exports]))

    rng = random.Random(seed)
    pages = [items[i : i + page_size] for i in range(0, len(items), page_size)]
    rng.shuffle(pages)
    export_pages = [exports[i : i + page_size] for i in range(0, len(exports), page_size)]
    rng.shuffle(export_pages)
    shuffled = make_plan([i for page in pages for i in page], index_export_items(export_pages))

    assert shuffled == reference
    assert [p.sequence for p in reference.items] == list(range(reference.total))
    ids = [p.accounting_entry_id for p in reference.items]
    assert len(ids) == len(set(ids))
