"""``sorting_keys`` and ``sorting_order`` as the simulator serves them.

Pleo documents both parameters (``sorting_order`` is one ``PageOrder`` per key) but never lists the
valid keys. The simulator decides: a listing sorts only by fields that never change while a job is
open, so an offset walk over a sorted listing is stable: ``accountingEntryId`` on both layers,
plus ``date`` on the data layer. Any other key, an unknown order or orders that do not pair up
with the keys answer 400. Entries with equal keys keep the listing's fixed order. Without
``sorting_keys`` a listing keeps its fixed, deliberately unsorted order.

A sorted order is computed once per (listing, keys, orders) and kept as positions into the fixed
order (``SimState.sorted_positions``), so a page of a 100,000-entry listing costs what it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, overload

from devtools.simulator.pages import BadPageRequest
from devtools.simulator.records import JobItem, JsonObject

Entry = TypeVar("Entry")

# PageOrder: the NULLS variants sort as their plain order, since no sortable key is ever null.
ORDERS: Final = frozenset(
    {"ASC", "ASC_NULLS_FIRST", "ASC_NULLS_LAST", "DESC", "DESC_NULLS_FIRST", "DESC_NULLS_LAST"}
)


def _export_date(entry: JsonObject) -> Any:
    return datetime.fromisoformat(str(entry["date"])).astimezone(UTC)


JOB_ITEM_KEYS: Final[Mapping[str, Callable[[JobItem], Any]]] = {
    "accountingEntryId": lambda item: item.accounting_entry_id,
}
EXPORT_ITEM_KEYS: Final[Mapping[str, Callable[[JsonObject], Any]]] = {
    "accountingEntryId": lambda entry: entry["accountingEntryId"],
    "date": _export_date,
}


@dataclass(frozen=True, slots=True)
class Sorting:
    """The checked sorting of one request: keys with their orders (empty: the fixed order)."""

    keys: tuple[str, ...] = ()
    orders: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The sorting as text, for cursor salts and caches."""
        return ",".join(f"{key}:{order}" for key, order in zip(self.keys, self.orders, strict=True))


def parse_sorting(query: Mapping[str, Sequence[str]], allowed: Mapping[str, object]) -> Sorting:
    """The request's sorting, or ``BadPageRequest`` naming what is wrong."""
    keys = tuple(query.get("sorting_keys", ()))
    orders = tuple(query.get("sorting_order", ()))
    if not keys:
        if orders:
            raise BadPageRequest("sorting_order needs sorting_keys.")
        return Sorting()
    unknown = [key for key in keys if key not in allowed]
    if unknown:
        valid = ", ".join(sorted(allowed))
        raise BadPageRequest(f"sorting_keys must be among {valid}, not {unknown[0]!r}.")
    if not orders:
        orders = ("ASC",) * len(keys)
    if len(orders) != len(keys):
        raise BadPageRequest("sorting_order must have one order per sorting key.")
    bad = [order for order in orders if order not in ORDERS]
    if bad:
        raise BadPageRequest(f"sorting_order must be among {', '.join(sorted(ORDERS))}.")
    return Sorting(keys, orders)


def sorted_positions(
    entries: Sequence[Entry], sorting: Sorting, keys: Mapping[str, Callable[[Entry], Any]]
) -> tuple[int, ...]:
    """Positions of ``entries`` in the order ``sorting`` asks for (stable for equal keys)."""
    positions = list(range(len(entries)))
    # Sorted by the last key first: Python's sort is stable, so earlier keys win.
    for key, order in reversed(list(zip(sorting.keys, sorting.orders, strict=True))):
        value = keys[key]
        positions.sort(key=lambda p: value(entries[p]), reverse=order.startswith("DESC"))
    return tuple(positions)


class Permuted(Sequence[Entry]):
    """``entries`` seen in the order of ``positions``, without copying them."""

    def __init__(self, entries: Sequence[Entry], positions: Sequence[int]) -> None:
        self._entries = entries
        self._positions = positions

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...
    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        if isinstance(index, slice):
            return [self._entries[p] for p in self._positions[index]]
        return self._entries[self._positions[index]]

    def __iter__(self) -> Iterator[Entry]:
        return (self._entries[p] for p in self._positions)
