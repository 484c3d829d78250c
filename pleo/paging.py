"""Pure paging rules: the cursor walk's (go on or stop) and the offset walk's (is it complete?).

The walk stops only when Pleo says ``hasNextPage`` is false: the Export API documents no default or
maximum ``limit``, so a short or empty page proves nothing. Everything else here catches an API that
loops or lies (a repeated cursor, more items or pages than its own ``total`` allows, a walk longer
than ``max_pages``) and raises ``ContractViolation`` before the caller can act on a partial job.

``page_len`` is the number of entries on the page that the walk has not seen before: an entry
repeated across pages is a known cursor quirk that the plan drops, not a lie about ``total``.

The offset walk (``pleo.offset_walk``) reads pages by ``offset`` several at a time, so it cannot
follow Pleo's word page by page; instead it must prove the pages complete. ``offset_shape`` reads
the first page's ``total`` and length into the pages still to fetch; ``offset_disagreement`` holds
every page to that shape (the same ``total``, exactly the entries due at its offset, ``hasNextPage``
only before the last page, no entry seen before); ``offset_incomplete`` checks the distinct entries
read against ``total``. Any disagreement is an ``OffsetDisagreement``: not a lie to refuse but a
reason to read the job again with the cursor walk, whose rules above then decide.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
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


class OffsetDisagreement(Exception):
    """The offset walk could not prove its pages complete; ``reason`` says why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OffsetShape:
    """The pages an offset walk reads: ``pages`` of ``step`` entries (the last may hold fewer)."""

    total: int
    step: int
    pages: int

    def offset(self, index: int) -> int:
        """The ``offset`` of page ``index`` (0-based)."""
        return index * self.step

    def due(self, index: int) -> int:
        """How many entries page ``index`` must hold."""
        return min(self.step, self.total - self.offset(index))


def offset_shape(info: PageInfo, first_len: int, *, max_pages: int) -> OffsetShape:
    """The walk's shape from its first page (offset 0), or ``OffsetDisagreement``.

    The step is the first page's length, not the ``limit`` sent: a server that caps its pages
    (Pleo documents no maximum) caps every page the same way.
    """
    total = info.total
    if total is None:
        raise OffsetDisagreement("the first page carries no total")
    if not info.has_next_page:
        if first_len != total:
            raise OffsetDisagreement(f"a single page held {first_len} entries of {total}")
        return OffsetShape(total, max(first_len, 1), 1)
    if first_len == 0 or first_len >= total:
        raise OffsetDisagreement(
            f"the first page held {first_len} entries of {total} and said hasNextPage"
        )
    pages = -(-total // first_len)
    if pages > max_pages:
        raise OffsetDisagreement(f"{total} entries make {pages} pages, past {max_pages}")
    return OffsetShape(total, first_len, pages)


def offset_disagreement(
    shape: OffsetShape,
    index: int,
    info: PageInfo,
    ids: Sequence[Hashable],
    seen: Collection[Hashable],
) -> str | None:
    """Why page ``index`` (0-based) breaks the shape, given the entries ``seen`` before; or None."""
    number = index + 1
    if info.total != shape.total:
        return f"total moved from {shape.total} to {info.total} on page {number}"
    due = shape.due(index)
    if len(ids) != due:
        return f"page {number} held {len(ids)} entries where {due} were due"
    last = index == shape.pages - 1
    if info.has_next_page == last:
        return f"page {number} of {shape.pages} said hasNextPage={info.has_next_page}"
    if len(set(ids)) != len(ids) or any(entry in seen for entry in ids):
        return f"page {number} repeated an entry already read"
    return None


def offset_incomplete(shape: OffsetShape, distinct: int) -> str | None:
    """Why ``distinct`` entries read in all do not prove the walk complete; or None."""
    if distinct != shape.total:
        return f"{distinct} distinct entries were read where total is {shape.total}"
    return None
