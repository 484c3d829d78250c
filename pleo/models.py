"""What Pleo's Export API sends, as frozen dataclasses, and the parsers that check it.

Every parser takes decoded JSON (``object``) and either returns a dataclass or raises
``ContractViolation`` naming the job, the page and the field, so a malformed answer never leaks as a
``KeyError`` or ``TypeError`` and never reaches the plan. The checks follow the v3 OpenAPI files in
``shared/pleo-api``: required keys present with the right JSON types, UUIDs where the spec says
``format: uuid``, statuses and an export item's ``type`` inside their enums, cursors inside the
documented pattern.

The two item layers' pages arrive as bytes and are decoded once, typed, by msgspec
(``decode_job_items_page``, ``decode_export_items_page``): the ``Struct``s below carry the same
checks as the hand-written parsers (types, enums, required keys, counts), and what msgspec cannot
say (UUIDs, a cursor's pattern, a date's offset, the item's job) is checked on the decoded values.
Each export item is kept as the bytes Pleo sent (``msgspec.Raw``), so its payload is never decoded
into Python objects nor encoded again. Whenever the typed decode refuses a page, the page is read
again with ``json.loads`` and the hand-written parsers, which name the first bad field in the
sentence they always have (and accept what they accept: the fast path is never the stricter one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

import msgspec

from contract.errors import ContractViolation
from contract.ids import is_uuid

T = TypeVar("T")

JOB_STATUSES = frozenset({"pending", "in_progress", "failed", "completed", "completed_with_errors"})
TERMINAL_JOB_STATUSES = frozenset({"failed", "completed", "completed_with_errors"})
ItemStatus = Literal["pending", "in_progress", "failed", "successful", "abandoned"]
ITEM_STATUSES = frozenset(get_args(ItemStatus))
ACTIONABLE_ITEM_STATUSES = frozenset({"pending", "in_progress"})
# Pleo's ExportJobItemFailureReasonType: the only values an item's failureReasonType may take.
ItemFailureReason = Literal[
    "receipt_upload_failure",
    "receipt_download_failure",
    "receipt_file_size_limit_exceeded",
    "receipt_conversion_failure",
    "unexpected_failure",
    "invalid_configuration",
    "missing_configuration",
    "accounting_system_authentication_failure",
    "accounting_system_rate_limit",
    "accounting_system_unreachable",
    "validation_failure",
    "accounting_system_validation_failure",
    "authorization_failure",
    "accounting_system_timeout",
    "vendor_unknown",
    "account_unknown",
    "tax_code_unknown",
    "tag_unknown",
]
ITEM_FAILURE_REASON_TYPES = frozenset(get_args(ItemFailureReason))
JOB_EVENTS = frozenset({"started", "failed", "completed", "completed_with_errors"})
# Pleo's ExportItemTypeV3 (the original spec's enum; the OpenAPI file only names it), in the
# spec's order (the simulator draws from it with a seeded RNG).
ExportItemType = Literal[
    "card_purchase",
    "card_invoice",
    "out_of_pocket",
    "mileage",
    "per_diem",
    "external_reimbursement",
    "direct_reimbursement",
    "invoice",
    "invoice_payment",
    "chargeback",
    "refund",
    "cashback",
    "atm_withdrawal",
    "wallet_topup",
    "wallet_unload",
    "personal_spend",
    "fee",
]
EXPORT_ITEM_TYPES: tuple[str, ...] = get_args(ExportItemType)
_EXPORT_ITEM_TYPE_SET = frozenset(EXPORT_ITEM_TYPES)

_CURSOR = re.compile(r"[A-Z2-7=~]+")
_EXPORT_ITEM_REQUIRED = (
    "_links",
    "accountingEntryLines",
    "additionalInformation",
    "amount",
    "companyId",
)


@dataclass(frozen=True, slots=True)
class ExportJob:
    """One export job (``ExportJobV3``): who owns it, where it stands, how many entries it holds.

    ``failure_reason_type`` is kept as Pleo sent it, not checked against the enum: it explains a
    failure and decides nothing, so a reason Pleo adds later must not make the job unreadable.
    """

    id: str
    company_id: str
    status: str
    number_of_items: int
    expires_in: int
    raw: Mapping[str, Any] = field(compare=False, repr=False)
    failure_reason_type: str | None = None
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobItem:
    """One control-layer item (``ExportJobItemV3``): an accounting entry and its export status."""

    accounting_entry_id: str
    status: str


@dataclass(frozen=True, slots=True)
class ExportItem:
    """One data-layer item (``ExportItemV3``): the entry's payload and when it was booked.

    ``raw`` is the item's JSON exactly as Pleo sent it; ``payload`` decodes it (each time).
    """

    accounting_entry_id: str
    date: str
    booked_at: datetime
    raw: bytes = field(compare=False, repr=False)

    @property
    def payload(self) -> Mapping[str, Any]:
        """The item as a JSON object (decoded from ``raw`` on each call)."""
        decoded: Mapping[str, Any] = json.loads(self.raw)
        return decoded


@dataclass(frozen=True, slots=True)
class PageInfo:
    """The cursor facts of one page (``CursorPageInfo``) that the walk depends on."""

    has_next_page: bool
    end_cursor: str | None
    total: int | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One checked page: its items in the order Pleo sent them, and its cursor facts."""

    items: tuple[T, ...]
    info: PageInfo


@dataclass(frozen=True, slots=True)
class ItemError:
    """One per-item failure inside a 200 answer to ``PUT /v3/export-jobs/{jobId}/items``."""

    accounting_entry_id: str
    message: str
    type: str


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """Pleo's answer to an item update: the items as now stored, and the items it refused."""

    data: tuple[JobItem, ...]
    errors: tuple[ItemError, ...]


def index_export_items(pages: Iterable[Iterable[ExportItem]]) -> dict[str, ExportItem]:
    """Map entry id to export item; a repeated entry keeps the earliest, ties broken by content.

    The data layer's one payload per entry: what the producer plans with and the repair sweep
    rebuilds a lost message with.
    """
    index: dict[str, ExportItem] = {}
    for page in pages:
        for item in page:
            known = index.get(item.accounting_entry_id)
            if known is None or _export_key(item) < _export_key(known):
                index[item.accounting_entry_id] = item
    return index


def _export_key(item: ExportItem) -> tuple[datetime, str, str]:
    return export_order_key(item.booked_at, item.date, item.payload)


def export_order_key(booked_at: datetime, date: str, payload: Any) -> tuple[datetime, str, str]:
    """Which copy of an entry listed twice by the data layer is kept: the smallest key.

    The canonical JSON makes the choice independent of page order even when both copies carry the
    same date.
    """
    return (booked_at, date, json.dumps(payload, sort_keys=True, default=str))


def is_cursor(value: object) -> bool:
    """True when ``value`` is a cursor in the spec's pattern ``^[A-Z2-7=~]+$``."""
    return isinstance(value, str) and _CURSOR.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class _Where:
    """Names the document being checked, so every violation reads as one self-contained sentence."""

    what: str
    job_id: str | None

    def error(self, path: str, problem: str) -> ContractViolation:
        return ContractViolation(
            f"{self.what} breaks the spec: {path} {problem}.", job_id=self.job_id
        )


def _page_where(what: str, job_id: str | None, page: int | None) -> _Where:
    numbered = f"{what} page {page}" if page is not None else f"{what} page"
    return _Where(f"Pleo's {numbered}" + (f" for job {job_id}" if job_id else ""), job_id)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value: object, where: _Where, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise where.error(path, f"is {type(value).__name__}, not an object")
    return value


def _get(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> Any:
    if key not in obj:
        raise where.error(_join(path, key), "is missing")
    return obj[key]


def _str(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> str:
    value = _get(obj, key, where, path)
    if not isinstance(value, str):
        raise where.error(_join(path, key), f"is {_show(value)}, not a string")
    return value


def _optional_str(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise where.error(_join(path, key), f"is {_show(value)}, not a string or null")
    return value


def _uuid(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> str:
    value = _get(obj, key, where, path)
    if not is_uuid(value):
        raise where.error(_join(path, key), f"is {_show(value)}, not a UUID")
    return str(value)


def _bool(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> bool:
    value = _get(obj, key, where, path)
    if not isinstance(value, bool):
        raise where.error(_join(path, key), f"is {_show(value)}, not a boolean")
    return value


def _count(obj: Mapping[str, Any], key: str, where: _Where, path: str) -> int:
    value = _get(obj, key, where, path)
    # bool is an int subclass in Python but not an integer in JSON.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise where.error(_join(path, key), f"is {_show(value)}, not a non-negative integer")
    return value


def _enum(
    obj: Mapping[str, Any], key: str, allowed: frozenset[str], where: _Where, path: str
) -> str:
    value = _get(obj, key, where, path)
    if not isinstance(value, str) or value not in allowed:
        raise where.error(
            _join(path, key),
            f"is {_show(value)}, not one of {', '.join(sorted(allowed))}",
        )
    return value


def _list(obj: Mapping[str, Any], key: str, where: _Where) -> list[Any]:
    value = _get(obj, key, where, "")
    if not isinstance(value, list):
        raise where.error(key, f"is {type(value).__name__}, not an array")
    return value


def _parse_job(obj: object, where: _Where, path: str, *, expect_id: str | None) -> ExportJob:
    job = _object(obj, where, path)
    job_id = _uuid(job, "id", where, path)
    if expect_id is not None and job_id.lower() != expect_id.lower():
        raise where.error(f"{path}.id", f"is {job_id}, not the job asked for")
    company_id = _uuid(job, "companyId", where, path)
    status = _enum(job, "status", JOB_STATUSES, where, path)
    number_of_items = _count(job, "numberOfItems", where, path)
    expires_in = _get(job, "expiresIn", where, path)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise where.error(f"{path}.expiresIn", f"is {_show(expires_in)}, not an integer")
    _str(job, "createdAt", where, path)
    _bool(job, "isInteractive", where, path)
    _bool(job, "vendorBasedBookkeeping", where, path)
    return ExportJob(
        job_id,
        company_id,
        status,
        number_of_items,
        expires_in,
        raw=job,
        failure_reason_type=_optional_str(job, "failureReasonType", where, path),
        failure_reason=_optional_str(job, "failureReason", where, path),
    )


def _parse_job_item(obj: object, where: _Where, path: str, *, job_id: str) -> JobItem:
    item = _object(obj, where, path)
    entry_id = _uuid(item, "accountingEntryId", where, path)
    owner = _uuid(item, "exportJobId", where, path)
    if owner.lower() != job_id.lower():
        raise where.error(f"{path}.exportJobId", f"is {owner}, not the job asked for")
    return JobItem(entry_id, _enum(item, "status", ITEM_STATUSES, where, path))


def _parse_export_item(obj: object, where: _Where, path: str, raw: bytes | None) -> ExportItem:
    item = _object(obj, where, path)
    entry_id = _uuid(item, "accountingEntryId", where, path)
    date = _str(item, "date", where, path)
    booked_at = _booked_at(date, where, path)
    for key in _EXPORT_ITEM_REQUIRED:
        _get(item, key, where, path)
    # The ERP adapter books by type: an unknown one would be booked as a guess.
    _enum(item, "type", _EXPORT_ITEM_TYPE_SET, where, path)
    if raw is None:
        raw = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
    return ExportItem(entry_id, date, booked_at, raw)


def _booked_at(date: str, where: _Where, path: str) -> datetime:
    """The item's ``date`` as a UTC instant, or the violation saying why it is none."""
    try:
        parsed = datetime.fromisoformat(date)
        booked_at = parsed.astimezone(UTC) if parsed.utcoffset() is not None else None
    except (ValueError, OverflowError) as exc:  # overflow: year 1 shifted by its offset
        raise where.error(
            f"{path}.date", f"is {_show(date)}, not a usable ISO-8601 date-time"
        ) from exc
    # A date without an offset cannot be placed on one timeline, so ordering by it would be a guess.
    if booked_at is None:
        raise where.error(f"{path}.date", f"is {_show(date)}, which has no timezone")
    return booked_at


def _parse_page_info(body: Mapping[str, Any], where: _Where) -> PageInfo:
    info = _object(_get(body, "pagination", where, ""), where, "pagination")
    has_next = _bool(info, "hasNextPage", where, "pagination")
    _bool(info, "hasPreviousPage", where, "pagination")
    _object(
        _get(info, "currentRequestPagination", where, "pagination"),
        where,
        "pagination.currentRequestPagination",
    )
    # Pleo writes absent optional fields as explicit nulls, so null is read as "not sent".
    end_cursor = info.get("endCursor")
    if end_cursor is not None and not is_cursor(end_cursor):
        raise where.error(
            "pagination.endCursor", f"is {_show(end_cursor)}, not a cursor (^[A-Z2-7=~]+$)"
        )
    if has_next and end_cursor is None:
        raise where.error("pagination.endCursor", "is missing although hasNextPage is true")
    total = info.get("total")
    if total is not None:
        total = _count(info, "total", where, "pagination")
    return PageInfo(has_next, end_cursor, total)


def _parse_page(obj: object, where: _Where) -> tuple[list[Any], PageInfo]:
    body = _object(obj, where, "body")
    return _list(body, "data", where), _parse_page_info(body, where)


def parse_job(obj: object, *, job_id: str) -> ExportJob:
    """Check one ``ExportJobV3`` (the ``data`` of ``GET /v3/export-jobs/{id}``) for ``job_id``."""
    return _parse_job(obj, _Where(f"Pleo's export job {job_id}", job_id), "data", expect_id=job_id)


def parse_job_response(obj: object, *, job_id: str) -> ExportJob:
    """Check the whole body of ``GET /v3/export-jobs/{id}``, ``{"data": ExportJobV3}``."""
    where = _Where(f"Pleo's export job {job_id}", job_id)
    return parse_job(_get(_object(obj, where, "body"), "data", where, ""), job_id=job_id)


def parse_job_items_page(obj: object, *, job_id: str, page: int | None = None) -> Page[JobItem]:
    """Check one page of ``GET /v3/export-jobs/{jobId}/items``; each item must be ``job_id``'s."""
    where = _page_where("job items", job_id, page)
    data, info = _parse_page(obj, where)
    items = tuple(
        _parse_job_item(raw, where, f"data[{i}]", job_id=job_id) for i, raw in enumerate(data)
    )
    return Page(items, info)


def parse_export_items_page(
    obj: object, *, job_id: str, page: int | None = None
) -> Page[ExportItem]:
    """Check one page of ``GET /v3/export-items?job_id=``, keeping each payload as received."""
    return _parse_export_items(obj, job_id=job_id, page=page, raws=None)


def _parse_export_items(
    obj: object, *, job_id: str, page: int | None, raws: list[msgspec.Raw] | None
) -> Page[ExportItem]:
    where = _page_where("export items", job_id, page)
    data, info = _parse_page(obj, where)
    items = tuple(
        _parse_export_item(item, where, f"data[{i}]", None if raws is None else bytes(raws[i]))
        for i, item in enumerate(data)
    )
    return Page(items, info)


def parse_jobs_page(obj: object, *, page: int | None = None) -> Page[ExportJob]:
    """Check one page of ``GET /v3/export-jobs``."""
    where = _page_where("export jobs", None, page)
    data, info = _parse_page(obj, where)
    jobs = tuple(_parse_job(raw, where, f"data[{i}]", expect_id=None) for i, raw in enumerate(data))
    return Page(jobs, info)


def parse_update_result(obj: object, *, job_id: str) -> UpdateResult:
    """Check the 200 body of ``PUT /v3/export-jobs/{jobId}/items`` (``errors`` may be non-empty)."""
    where = _Where(f"Pleo's item-update answer for job {job_id}", job_id)
    body = _object(obj, where, "body")
    data = tuple(
        _parse_job_item(raw, where, f"data[{i}]", job_id=job_id)
        for i, raw in enumerate(_list(body, "data", where))
    )
    errors = []
    for i, raw in enumerate(_list(body, "errors", where)):
        path = f"errors[{i}]"
        error = _object(raw, where, path)
        errors.append(
            ItemError(
                _uuid(error, "accountingEntryId", where, path),
                _str(error, "message", where, path),
                _str(error, "type", where, path),
            )
        )
    return UpdateResult(data, tuple(errors))


# The typed decode of the two item layers' pages (see the module's docstring). Unknown keys are
# skipped; a key the spec requires but the producer does not read is a ``msgspec.Raw``: present,
# any JSON, never built into Python objects.


class _AnyObject(msgspec.Struct):
    """Any JSON object (its keys are not read)."""


class _Pagination(msgspec.Struct):
    hasNextPage: bool  # noqa: N815 (Pleo's names)
    hasPreviousPage: bool  # noqa: N815
    currentRequestPagination: _AnyObject  # noqa: N815
    endCursor: str | None = None  # noqa: N815
    total: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _JobItemV3(msgspec.Struct):
    accountingEntryId: str  # noqa: N815
    exportJobId: str  # noqa: N815
    status: ItemStatus


class _JobItemsPage(msgspec.Struct):
    data: list[_JobItemV3]
    pagination: _Pagination


class _ExportItemV3(msgspec.Struct, rename={"links": "_links"}):
    accountingEntryId: str  # noqa: N815
    date: str
    type: ExportItemType
    links: msgspec.Raw
    accountingEntryLines: msgspec.Raw  # noqa: N815
    additionalInformation: msgspec.Raw  # noqa: N815
    amount: msgspec.Raw
    companyId: msgspec.Raw  # noqa: N815


class _ExportItemsPage(msgspec.Struct):
    data: list[msgspec.Raw]
    pagination: _Pagination


_JOB_ITEMS_PAGE = msgspec.json.Decoder(_JobItemsPage)
_EXPORT_ITEMS_PAGE = msgspec.json.Decoder(_ExportItemsPage)
_EXPORT_ITEM = msgspec.json.Decoder(_ExportItemV3)


class _Refused(Exception):
    """The typed decode found something to refuse: the hand-written parsers say what."""


def _loads(content: bytes) -> Any:
    """The page as Python objects, for the hand-written checks; DecodeError if it is not JSON."""
    try:
        return json.loads(content)
    except ValueError as exc:  # a JSONDecodeError or a UnicodeDecodeError
        raise msgspec.DecodeError(f"the body is not JSON: {exc}") from exc


def _check(fact: bool) -> None:
    if not fact:
        raise _Refused


def _info(pagination: _Pagination) -> PageInfo:
    end_cursor = pagination.endCursor
    _check(end_cursor is None or _CURSOR.fullmatch(end_cursor) is not None)
    _check(end_cursor is not None or not pagination.hasNextPage)
    return PageInfo(pagination.hasNextPage, end_cursor, pagination.total)


def decode_job_items_page(content: bytes, *, job_id: str, page: int | None = None) -> Page[JobItem]:
    """``parse_job_items_page`` of a page's bytes, decoded once, typed.

    Raises ``msgspec.DecodeError`` when ``content`` is not JSON (the caller's transport error).
    """
    try:
        body = _JOB_ITEMS_PAGE.decode(content)
        info = _info(body.pagination)
        wanted = job_id.lower()
        items = []
        for item in body.data:
            entry, owner = item.accountingEntryId, item.exportJobId
            _check(is_uuid(entry) and is_uuid(owner) and owner.lower() == wanted)
            items.append(JobItem(entry, item.status))
    except (msgspec.ValidationError, _Refused):
        return parse_job_items_page(_loads(content), job_id=job_id, page=page)
    return Page(tuple(items), info)


def decode_export_items_page(
    content: bytes, *, job_id: str, page: int | None = None
) -> Page[ExportItem]:
    """``parse_export_items_page`` of a page's bytes; each item's ``raw`` is its bytes as sent.

    Raises ``msgspec.DecodeError`` when ``content`` is not JSON (the caller's transport error).
    """
    raws: list[msgspec.Raw] | None = None
    try:
        body = _EXPORT_ITEMS_PAGE.decode(content)
        raws = body.data
        info = _info(body.pagination)
        items = []
        where = _page_where("export items", job_id, page)
        for index, raw in enumerate(raws):
            item = _EXPORT_ITEM.decode(raw)
            entry = item.accountingEntryId
            _check(is_uuid(entry))
            booked_at = _booked_at(item.date, where, f"data[{index}]")
            items.append(ExportItem(entry, item.date, booked_at, bytes(raw)))
    except (msgspec.ValidationError, _Refused, ContractViolation):
        # The hand-written checks, in their order, name the first bad field; should they accept
        # the page after all, each item still keeps the bytes Pleo sent.
        return _parse_export_items(_loads(content), job_id=job_id, page=page, raws=raws)
    return Page(tuple(items), info)
