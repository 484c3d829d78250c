"""Pure cursor-walk rules: from what the walk has seen and the page just read, go on or stop.

The walk stops only when Pleo says ``hasNextPage`` is false: the Export API documents no default or
maximum ``limit``, so a short or empty page proves nothing. Everything else here catches an API that
loops or lies (a repeated cursor, more items or pages than its own ``total`` allows, a walk longer
than ``max_pages``) and raises ``ContractViolation`` before the caller can act on a partial job.

``page_len`` is the number of entries on the page that the walk has not seen before: an entry
repeated across pages is a known cursor quirk that the plan drops, not a lie about ``total``.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.errors import ContractViolation
from pleo.models import PageInfo


@dataclass(frozen=True, slots=True)
class Walk:
    """What a cursor walk has seen so far: pages, distinct items, cursors followed, first total."""

    pages: int = 0
    items: int = 0
    cursors: frozenset[str] = frozenset()
    total: int | None = None


@dataclass(frozen=True, slots=True)
class NextPage:
    """Fetch the next page with ``after=<after>``."""

    after: str


@dataclass(frozen=True, slots=True)
class Done:
    """The last page has been read."""


def advance(
    walk: Walk,
    info: PageInfo,
    page_len: int,
    *,
    max_pages: int,
    what: str,
    job_id: str | None,
) -> tuple[Walk, NextPage | Done]:
    """Account for one more page of ``page_len`` new items and say what to do next, or raise."""
    pages = walk.pages + 1
    items = walk.items + page_len
    where = f"Pleo's {what} for job {job_id}" if job_id else f"Pleo's {what}"

    def violation(problem: str) -> ContractViolation:
        return ContractViolation(f"{where} {problem} (page {pages}).", job_id=job_id)

    if pages > max_pages:
        raise violation(f"ran past the safety limit of {max_pages} pages")
    # A total that moves between pages is not by itself a failure (the walk records the first), but
    # each page's claim must hold for what has been seen so far: a page whose total is already
    # exceeded is lying. A page without a total is held to the first one.
    bound = info.total if info.total is not None else walk.total
    if bound is not None:
        if items > bound:
            raise violation(f"sent {items} items, more than its total of {bound}")
        # Every page but possibly an empty last one holds at least one item.
        if pages > bound + 1:
            raise violation(f"sent more pages than total allows ({pages} pages for {bound} items)")
    total = walk.total if walk.total is not None else info.total
    if not info.has_next_page:
        return Walk(pages, items, walk.cursors, total), Done()
    cursor = info.end_cursor
    if cursor is None:
        raise violation("said hasNextPage without an endCursor")
    if cursor in walk.cursors:
        raise violation(f"is in a cursor loop: endCursor {cursor!r} was already followed")
    return Walk(pages, items, walk.cursors | {cursor}, total), NextPage(cursor)
