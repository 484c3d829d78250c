"""Reading a listing by ``offset``, several pages at a time, and proving the pages complete.

At Pleo's default page size (100) and ~100 ms a request, a 100,000-entry job is 1,000 pages per
layer: 100 s one page after the other. Both item listings take ``offset`` with a stable sort and
report ``pagination.total``, so once the first page gives the total every other page's offset is
known and up to ``concurrency`` of them are fetched at once. Pages are still handed on strictly in
order, and at most ``2 x concurrency`` pages (and never more than ``HELD_ENTRIES`` entries) are
fetched ahead of the consumer, so memory holds a bounded window whatever the job's size.

What the cursor walk gets from following Pleo's cursors, this walk must prove
(``pleo.paging.offset_disagreement``): every page has the first page's ``total`` and exactly the
entries due at its offset, no entry comes twice, and the distinct entries read equal ``total``.
Any disagreement raises ``OffsetDisagreement``; ``with_fallback`` then tells the consumer to forget
what it was handed and reads the whole listing again with the cursor walk, so "every page before
acting" holds either way. A page that breaks the schema is no disagreement: it stops the run as it
would stop the cursor walk.

Sorting (``SORTING``): Pleo lists no valid ``sorting_keys``. The walk sends ``accountingEntryId``,
ascending: the one field both layers carry that is unique within a job and never changes, so the
order is total and stable while workers change items' statuses (a status or date would let equal
or moving keys reorder entries between two page reads). A server that refuses the key (400 on
the first page) gets the cursor walk instead.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

from contract.errors import PermanentUpstreamError
from pleo.models import Page
from pleo.paging import (
    OffsetDisagreement,
    offset_disagreement,
    offset_incomplete,
    offset_shape,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Sent with every offset request (explode=true: one query parameter per value).
SORTING: Final = {"sorting_keys": ["accountingEntryId"], "sorting_order": ["ASC"]}

# Pages waiting to be handed on, at most, per page in flight.
WINDOW: Final = 2
# Entries fetched ahead of the consumer, at most, whatever the page size: a decoded data-layer
# page of 1,000 entries is tens of MB of Python objects, and the cursor walk holds two pages. So
# pages of 100 get up to 10 in flight (8 ahead at the default concurrency of 4), pages of 1,000
# one: large pages are CPU-bound anyway, and memory stays what the cursor walk's was.
HELD_ENTRIES: Final = 1_000


def id_key(entry_id: str) -> int:
    """An entry id as the walks remember it: an int equal only for the same id, as written.

    A walk remembers every entry id it has read, to catch repeats; as ``str`` objects a
    million-entry job's two layers kept ~200 MB alive. A lower-case canonical UUID (as Pleo writes
    them) becomes its 128-bit value, 0 or more (44 bytes); any other string minus its UTF-8 bytes,
    after a leading 1 byte, read as one integer: below 0, so the two kinds never meet, and case
    still tells ids apart.
    """
    if _LOWER_UUID.fullmatch(entry_id) is not None:
        return int(entry_id.replace("-", ""), 16)
    return -int.from_bytes(b"\x01" + entry_id.encode("utf-8", "surrogatepass"), "big")


_LOWER_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# fetch(offset, page_number) -> the checked page at that offset.
Fetch = Callable[[int, int], Page[T]]


def offset_walk(
    fetch: Fetch[T],
    key: Callable[[T], Hashable],
    *,
    concurrency: int,
    max_pages: int,
) -> Iterator[Page[T]]:
    """Every page in order, ``concurrency`` in flight; ``OffsetDisagreement`` if not proven."""
    try:
        first = fetch(0, 1)
    except PermanentUpstreamError as refused:
        if refused.status != 400:
            raise
        raise OffsetDisagreement(f"Pleo refused the offset request ({refused.message})") from None
    shape = offset_shape(first.info, len(first.items), max_pages=max_pages)
    seen: set[Hashable] = set()

    def accept(index: int, page: Page[T]) -> Page[T]:
        ids = [key(item) for item in page.items]
        problem = offset_disagreement(shape, index, page.info, ids, seen)
        if problem is not None:
            raise OffsetDisagreement(problem)
        seen.update(ids)
        return page

    yield accept(0, first)
    if shape.pages > 1:
        window = max(1, min(WINDOW * concurrency, HELD_ENTRIES // shape.step))
        yield from _rest(
            fetch, accept, shape.pages, shape.offset, concurrency=concurrency, window_pages=window
        )
    problem = offset_incomplete(shape, len(seen))
    if problem is not None:
        raise OffsetDisagreement(problem)


def _rest(
    fetch: Fetch[T],
    accept: Callable[[int, Page[T]], Page[T]],
    pages: int,
    offset: Callable[[int], int],
    *,
    concurrency: int,
    window_pages: int,
) -> Iterator[Page[T]]:
    """Pages 1..pages-1, ``concurrency`` in flight and ``window_pages`` fetched ahead, in order.

    The window holds more pages than are fetched at once: a page that comes back before the one
    ahead of it frees its thread for the next request, rather than wait for the head of the line
    to be handed on.
    """
    workers = min(concurrency, window_pages, pages - 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pages")
    window: deque[Future[Page[T]]] = deque()
    queued = 1

    def top_up() -> None:
        nonlocal queued
        while queued < pages and len(window) < window_pages:
            window.append(pool.submit(fetch, offset(queued), queued + 1))
            queued += 1

    try:
        top_up()
        for index in range(1, pages):
            page = window.popleft().result()
            top_up()
            yield accept(index, page)
    finally:
        # Stopped early (a disagreement, a failure, the consumer gone): what has not started never
        # will; what is in flight is let finish (each request is bounded by its retry budget).
        for pending in window:
            pending.cancel()
        pool.shutdown(wait=True)


def with_fallback(
    offset_pages: Callable[[], Iterator[Page[T]]],
    cursor_pages: Callable[[], Iterator[Page[T]]],
    *,
    on_restart: Callable[[str], None],
    what: str,
    job_id: str | None,
) -> Iterator[Page[T]]:
    """The offset walk's pages; on a disagreement, ``on_restart(reason)`` then the cursor walk's."""
    try:
        yield from offset_pages()
    except OffsetDisagreement as disagreement:
        reason = disagreement.reason
    else:
        return
    log.warning("page_walk_fell_back job_id=%s what=%s reason=%r", job_id, what, reason)
    on_restart(reason)
    yield from cursor_pages()
