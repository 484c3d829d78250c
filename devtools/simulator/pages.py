"""Cursor pagination as Pleo's ``CursorPageInfo`` describes it: opaque cursors, pages, totals.

A cursor is the base32 text of ``<salt>:<position>``: the position of an entry in the listing's
fixed order, and a salt derived from the listing (layer, job, filters), so a cursor from another
job or filter is refused. ``after=<cursor>`` serves the matching entries after that position (keyset
paging), so items whose status changes while a client walks the pages are neither skipped nor
repeated. Pages hold at most ``max_page_size`` entries whatever ``limit`` asks; without ``limit`` a
page holds ``DEFAULT_LIMIT`` (20, the default Pleo documents for its Accounting Entries API).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from devtools.simulator.records import JsonObject

DEFAULT_LIMIT: Final = 20
CURSOR_PATTERN: Final = re.compile(r"^[A-Z2-7=~]+$")
PAGING_PARAMETERS: Final = frozenset(
    {"after", "before", "offset", "limit", "sorting_keys", "sorting_order"}
)

Entry = TypeVar("Entry")


class BadPageRequest(ValueError):
    """The paging parameters are malformed (bad cursor, bad limit, conflicting bounds)."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """The paging parameters of one request, checked and decoded."""

    limit: int
    after: int | None
    before: int | None
    offset: int | None
    echo: JsonObject


@dataclass(frozen=True, slots=True)
class Page:
    """One rendered page, plus what the page-mutating faults need to distort it."""

    body: JsonObject
    restart_cursor: str
    previous_entry: JsonObject | None


def listing_salt(*parts: str) -> str:
    """A short salt that ties cursors to one listing (layer, job, filters)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10].upper()


def encode_cursor(salt: str, position: int) -> str:
    """The opaque cursor for ``position`` in the listing ``salt`` names."""
    return base64.b32encode(f"{salt}:{position}".encode()).decode("ascii")


def decode_cursor(cursor: str, salt: str) -> int:
    """The position inside ``cursor``; ``BadPageRequest`` when it is malformed or foreign."""
    if not CURSOR_PATTERN.fullmatch(cursor):
        raise BadPageRequest(f"Cursor must match {CURSOR_PATTERN.pattern}.")
    try:
        text = base64.b32decode(cursor).decode("ascii")
        cursor_salt, position = text.split(":")
        value = int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise BadPageRequest("Cursor is not valid.") from error
    if cursor_salt != salt:
        raise BadPageRequest("Cursor does not belong to this listing.")
    return value


def parse_page_request(
    query: Mapping[str, Sequence[str]], salt: str, max_page_size: int
) -> PageRequest:
    """Check the paging parameters and decode the cursor, or raise ``BadPageRequest``."""
    single = {name: values[-1] for name, values in query.items() if values}
    bounds = [name for name in ("after", "before", "offset") if name in single]
    if len(bounds) > 1:
        raise BadPageRequest("Only one of after, before and offset may be given.")
    limit = _non_negative(single, "limit")
    offset = _non_negative(single, "offset")
    applied = min(DEFAULT_LIMIT if limit is None else limit, max_page_size)
    echo: JsonObject = {
        "parameters": {
            name: list(values) for name, values in query.items() if name not in PAGING_PARAMETERS
        },
        "limit": applied,
    }
    for name in ("after", "before", "offset"):
        if name in single:
            echo[name] = offset if name == "offset" else single[name]
    for name, key in (("sorting_keys", "sortingKeys"), ("sorting_order", "sortingOrder")):
        if query.get(name):
            echo[key] = list(query[name])
    return PageRequest(
        limit=applied,
        after=decode_cursor(single["after"], salt) if "after" in single else None,
        before=decode_cursor(single["before"], salt) if "before" in single else None,
        offset=offset,
        echo=echo,
    )


def build_page(
    entries: Sequence[Entry],
    matches: Callable[[Entry], bool] | None,
    render: Callable[[Entry], JsonObject],
    request: PageRequest,
    salt: str,
) -> Page:
    """Cut the page ``request`` asks for out of ``entries`` (in listing order) that ``matches``.

    ``matches=None`` keeps every entry: the positions are then a ``range``, so a page costs what
    it holds rather than a scan of the whole listing (100 scans of 100,000 entries for one job).
    """
    positions: Sequence[int]
    if matches is None:
        positions = range(len(entries))
    else:
        positions = [position for position, entry in enumerate(entries) if matches(entry)]
    if request.after is not None:
        start = bisect.bisect_right(positions, request.after)
        end = min(start + request.limit, len(positions))
    elif request.before is not None:
        end = bisect.bisect_left(positions, request.before)
        start = max(0, end - request.limit)
    else:
        start = min(request.offset or 0, len(positions))
        end = min(start + request.limit, len(positions))
    chosen = positions[start:end]
    pagination: JsonObject = {
        "currentRequestPagination": request.echo,
        "hasNextPage": end < len(positions),
        "hasPreviousPage": start > 0,
        "total": len(positions),
    }
    if chosen:
        pagination["startCursor"] = encode_cursor(salt, chosen[0])
        pagination["endCursor"] = encode_cursor(salt, chosen[-1])
    previous = render(entries[positions[start - 1]]) if start > 0 else None
    return Page(
        body={"data": [render(entries[position]) for position in chosen], "pagination": pagination},
        restart_cursor=encode_cursor(salt, -1),
        previous_entry=previous,
    )


def _non_negative(single: Mapping[str, str], name: str) -> int | None:
    """Parse an optional non-negative integer parameter."""
    if name not in single:
        return None
    try:
        value = int(single[name])
    except ValueError as error:
        raise BadPageRequest(f"{name} must be an integer.") from error
    if value < 0:
        raise BadPageRequest(f"{name} must be >= 0.")
    return value
