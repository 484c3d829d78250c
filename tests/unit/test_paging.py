"""The paging rules: the cursor walk stops only on hasNextPage false and catches loops and lying
totals; the offset walk plans its pages from the first one and proves them complete, or says why.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import ContractViolation
from pleo.models import PageInfo
from pleo.paging import (
    Done,
    NextPage,
    OffsetDisagreement,
    OffsetShape,
    Walk,
    advance,
    offset_disagreement,
    offset_incomplete,
    offset_shape,
)

JOB = "8eb6d4a2-6c1f-4f7e-9a53-2f0c4f1d2b10"


def step(
    walk: Walk, info: PageInfo, page_len: int, *, max_pages: int = 1000
) -> tuple[Walk, NextPage | Done]:
    return advance(walk, info, page_len, max_pages=max_pages, what="job items", job_id=JOB)


def cursor(n: int) -> str:
    """A distinct spec-shaped cursor per page number (base32 letters only)."""
    return "C" + "".join("ABCDEFGHIJ"[int(d)] for d in str(n))


def test_next_page_follows_end_cursor_and_counts() -> None:
    """A page with hasNextPage asks for after=endCursor and records pages, items and the cursor."""
    walk, nxt = step(Walk(), PageInfo(True, "CB", None), 3)
    assert nxt == NextPage("CB")
    assert walk == Walk(pages=1, items=3, cursors=frozenset({"CB"}), total=None)


def test_done_only_when_has_next_page_is_false() -> None:
    """A full page that says there is no next page ends the walk."""
    walk, nxt = step(
        Walk(pages=1, items=3, cursors=frozenset({"CB"})), PageInfo(False, None, None), 3
    )
    assert nxt == Done()
    assert (walk.pages, walk.items) == (2, 6)


def test_short_page_that_is_not_last_continues() -> None:
    """A page shorter than the limit is not the end while hasNextPage is true."""
    _, nxt = step(Walk(), PageInfo(True, "CB", None), 1)
    assert nxt == NextPage("CB")


def test_empty_page_with_has_next_page_continues() -> None:
    """An empty page with hasNextPage true still leads to the next page."""
    _, nxt = step(Walk(pages=1, items=5, cursors=frozenset({"CB"})), PageInfo(True, "CC", None), 0)
    assert nxt == NextPage("CC")


def test_empty_last_page_ends_the_walk() -> None:
    """An empty page with hasNextPage false is a normal end."""
    _, nxt = step(Walk(pages=2, items=4, cursors=frozenset({"CB"})), PageInfo(False, None, 4), 0)
    assert nxt == Done()


def test_cursor_seen_twice_is_a_loop() -> None:
    """Being handed a cursor already followed is a cursor loop."""
    walk = Walk(pages=2, items=4, cursors=frozenset({"CB", "CC"}))
    with pytest.raises(ContractViolation, match="cursor loop") as caught:
        step(walk, PageInfo(True, "CB", None), 2)
    assert caught.value.job_id == JOB
    assert "job items" in str(caught.value)


def test_has_next_page_without_end_cursor_is_refused() -> None:
    """hasNextPage true with no endCursor leaves nowhere to go, so it is a violation."""
    with pytest.raises(ContractViolation, match="without an endCursor"):
        step(Walk(), PageInfo(True, None, None), 2)


def test_more_items_than_total_is_refused() -> None:
    """Seeing more items than the API's own total is a lie."""
    with pytest.raises(ContractViolation, match="more than its total of 5"):
        step(Walk(pages=1, items=4, cursors=frozenset({"CB"}), total=5), PageInfo(True, "CC", 5), 2)


def test_more_pages_than_total_allows_is_refused() -> None:
    """With total N at most N+1 pages can exist (N non-empty, one empty), so more is a lie."""
    walk = Walk(pages=3, items=2, cursors=frozenset({"CB", "CC", "CD"}), total=2)
    with pytest.raises(ContractViolation, match="more pages than total allows"):
        step(walk, PageInfo(True, "CE", 2), 0)


def test_total_of_zero_allows_exactly_one_empty_page() -> None:
    """An empty job is one empty page; a second page is a violation."""
    _, nxt = step(Walk(), PageInfo(False, None, 0), 0)
    assert nxt == Done()
    first, nxt = step(Walk(), PageInfo(True, "CB", 0), 0)
    assert nxt == NextPage("CB")
    with pytest.raises(ContractViolation, match="more pages than total allows"):
        step(first, PageInfo(False, None, 0), 0)


def test_max_pages_is_a_safety_stop() -> None:
    """A walk longer than max_pages stops with a violation whatever the API claims."""
    walk = Walk(pages=3, items=3, cursors=frozenset({"CB", "CC", "CD"}))
    with pytest.raises(ContractViolation, match="safety limit of 3 pages"):
        step(walk, PageInfo(True, "CE", None), 1, max_pages=3)


def test_changing_total_keeps_the_first_and_does_not_fail() -> None:
    """A total that moves between pages is tolerated; the walk records the first one."""
    walk, _ = step(Walk(), PageInfo(True, "CB", 4), 2)
    walk, nxt = step(walk, PageInfo(True, "CC", 6), 2)
    assert walk.total == 4
    walk, nxt = step(walk, PageInfo(False, None, 6), 2)
    assert nxt == Done()
    assert (walk.items, walk.total) == (6, 4)


def test_total_that_drops_below_what_was_seen_is_a_lie() -> None:
    """A later page claiming fewer items than already seen is a violation, though totals move."""
    walk, _ = step(Walk(), PageInfo(True, "CB", 10), 4)
    walk, _ = step(walk, PageInfo(True, "CC", 10), 4)
    with pytest.raises(ContractViolation, match="more than its total of 5"):
        step(walk, PageInfo(True, "CD", 5), 1)


def test_page_without_total_is_held_to_the_first() -> None:
    """When a page omits total, the first reported total still bounds the walk."""
    walk, _ = step(Walk(), PageInfo(True, "CB", 3), 2)
    with pytest.raises(ContractViolation, match="more than its total of 3"):
        step(walk, PageInfo(True, "CC", None), 2)


def test_total_reported_only_later_is_recorded() -> None:
    """A total first sent on a later page is the one the walk records."""
    walk, _ = step(Walk(), PageInfo(True, "CB", None), 2)
    walk, _ = step(walk, PageInfo(True, "CC", 7), 2)
    assert walk.total == 7


def walk_through(sizes: list[int], totals: list[int | None]) -> tuple[int, Walk]:
    """Drive advance over pages of the given sizes; return how many pages it read and the walk."""
    walk = Walk()
    for number, size in enumerate(sizes, start=1):
        last = number == len(sizes)
        info = PageInfo(not last, None if last else cursor(number), totals[number - 1])
        walk, nxt = step(walk, info, size)
        if isinstance(nxt, Done):
            return number, walk
    raise AssertionError("the walk never ended")


@settings(database=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40))
def test_well_formed_walk_without_total_ends_after_every_page(sizes: list[int]) -> None:
    """Over any page sizes, short or empty ones included, the walk ends exactly on the last page."""
    pages, walk = walk_through(sizes, [None] * len(sizes))
    assert pages == len(sizes)
    assert walk.items == sum(sizes)


@settings(database=None)
@given(
    st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    st.booleans(),
)
def test_well_formed_walk_with_total_ends_after_every_page(
    sizes: list[int], empty_tail: bool
) -> None:
    """With an honest total, non-empty pages plus an optional empty last page end in Done."""
    sizes = [*sizes, 0] if empty_tail or not sizes else sizes
    pages, walk = walk_through(sizes, [sum(sizes)] * len(sizes))
    assert pages == len(sizes)
    assert (walk.items, walk.total) == (sum(sizes), sum(sizes))


# --- the offset walk's rules ---------------------------------------------------------------------


def shape_of(total: int | None, first_len: int, *, has_next: bool = True) -> OffsetShape:
    return offset_shape(PageInfo(has_next, None, total), first_len, max_pages=1000)


def test_offset_shape_counts_the_pages_from_the_first_page() -> None:
    """250 entries, a first page of 100: three pages at offsets 0, 100, 200; the last holds 50."""
    shape = shape_of(250, 100)
    assert shape == OffsetShape(total=250, step=100, pages=3)
    assert [shape.offset(i) for i in range(3)] == [0, 100, 200]
    assert [shape.due(i) for i in range(3)] == [100, 100, 50]


def test_offset_shape_steps_by_what_the_server_served() -> None:
    """A server capping pages below the limit sent: the step is the first page's length."""
    assert shape_of(1000, 30).pages == 34


@pytest.mark.parametrize(
    ("total", "first_len", "has_next", "fragment"),
    [
        (None, 100, True, "no total"),
        (100, 0, True, "held 0 entries of 100"),
        (100, 100, True, "held 100 entries of 100"),
        (90, 100, False, "single page held 100 entries of 90"),
    ],
)
def test_offset_shape_refuses_what_it_cannot_plan(
    total: int | None, first_len: int, has_next: bool, fragment: str
) -> None:
    """No total, an empty or overfull first page that says hasNextPage: a disagreement."""
    with pytest.raises(OffsetDisagreement, match=fragment):
        shape_of(total, first_len, has_next=has_next)


def test_offset_shape_refuses_more_pages_than_the_safety_limit() -> None:
    """A total that would take more than max_pages is not trusted: the cursor walk's limit holds."""
    with pytest.raises(OffsetDisagreement, match="past 10"):
        offset_shape(PageInfo(True, None, 1100), 100, max_pages=10)


def test_a_single_empty_page_is_a_complete_empty_listing() -> None:
    """total 0 and no next page: one page, nothing due, complete with nothing read."""
    shape = shape_of(0, 0, has_next=False)
    assert (shape.pages, shape.due(0)) == (1, 0)
    assert offset_disagreement(shape, 0, PageInfo(False, None, 0), [], set()) is None
    assert offset_incomplete(shape, 0) is None


SHAPE = OffsetShape(total=5, step=2, pages=3)


@pytest.mark.parametrize(
    ("index", "info", "ids", "seen", "fragment"),
    [
        (1, PageInfo(True, None, 6), ["c", "d"], {"a", "b"}, "total moved from 5 to 6 on page 2"),
        (1, PageInfo(True, None, None), ["c", "d"], {"a", "b"}, "total moved from 5 to None"),
        (1, PageInfo(True, None, 5), ["c"], {"a", "b"}, "page 2 held 1 entries where 2"),
        (2, PageInfo(False, None, 5), ["e", "f"], {"a", "b"}, "page 3 held 2 entries where 1"),
        (1, PageInfo(False, None, 5), ["c", "d"], {"a", "b"}, "hasNextPage=False"),
        (2, PageInfo(True, None, 5), ["e"], {"a", "b", "c", "d"}, "hasNextPage=True"),
        (1, PageInfo(True, None, 5), ["b", "c"], {"a", "b"}, "page 2 repeated an entry"),
        (1, PageInfo(True, None, 5), ["c", "c"], {"a", "b"}, "page 2 repeated an entry"),
    ],
)
def test_each_way_a_page_breaks_the_shape_is_named(
    index: int, info: PageInfo, ids: list[str], seen: set[str], fragment: str
) -> None:
    """A moved total, a page short or long, a wrong hasNextPage, a repeat: each one a reason."""
    problem = offset_disagreement(SHAPE, index, info, ids, seen)
    assert problem is not None
    assert fragment in problem


def test_pages_that_fit_the_shape_pass_and_prove_completeness() -> None:
    """Pages 2 and 3 as due: no disagreement; five distinct entries of total 5 are complete."""
    assert offset_disagreement(SHAPE, 1, PageInfo(True, None, 5), ["c", "d"], {"a", "b"}) is None
    assert offset_disagreement(SHAPE, 2, PageInfo(False, None, 5), ["e"], set("abcd")) is None
    assert offset_incomplete(SHAPE, 5) is None
    assert offset_incomplete(SHAPE, 4) == "4 distinct entries were read where total is 5"


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(min_value=2, max_value=500),
    step=st.integers(min_value=1, max_value=60),
    victim=st.data(),
)
def test_an_entry_served_in_place_of_another_is_always_caught(
    total: int, step: int, victim: st.DataObject
) -> None:
    """However the entries are paged, one served twice in place of another is a disagreement."""
    ids = [f"e{n:04d}" for n in range(total)]
    lost = victim.draw(st.integers(min_value=0, max_value=total - 1))
    twice = ids[lost - 1] if lost else ids[1]
    served = [twice if n == lost else entry for n, entry in enumerate(ids)]
    pages = [served[i : i + step] for i in range(0, total, step)]
    shape = shape_of(total, len(pages[0]), has_next=len(pages) > 1)
    seen: set[str] = set()
    problems = []
    for index, page in enumerate(pages):
        info = PageInfo(index < len(pages) - 1, None, total)
        problems.append(offset_disagreement(shape, index, info, page, seen))
        seen.update(page)
    problems.append(offset_incomplete(shape, len(seen)))
    assert any(problem is not None for problem in problems)
