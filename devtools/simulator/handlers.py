"""The Pleo Export API v3 endpoints: each turns a checked request into a ``Reply``, spec-shaped.

Handlers are synchronous and do no I/O; authentication, latency, faults and rendering happen around
them in ``app.py``. Where the spec is silent the simulator decides, and says so here: a path or body
that fails validation gets 400 ``BAD_REQUEST``; ``GET /v3/export-items`` requires ``job_id``; a PUT
replaces an item's optional attributes (fields left out become null); the item listings sort by
``sorting_keys`` where the key never changes (``sorting``), and otherwise keep their fixed,
deliberately unsorted order; the jobs listing echoes sorting parameters but ignores them. A job's
``expiresIn`` counts from its creation, its last accepted event or its last PUT that applied an
item; reads, refused events and PUTs that applied nothing do not reset it. Once expired, a job reads
as ``failed`` with ``job_expired`` and, like any finished job, answers 422 to PUTs, events and the
data layer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from starlette.requests import Request

from devtools.simulator.enums import (
    ITEM_STATUSES,
    JOB_EVENTS,
    JOB_FAILURE_REASON_TYPES,
    JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
)
from devtools.simulator.pages import (
    BadPageRequest,
    Page,
    build_page,
    listing_salt,
    parse_page_request,
)
from devtools.simulator.records import ItemUpdate, Job, JobItem, JsonObject
from devtools.simulator.sorting import (
    EXPORT_ITEM_KEYS,
    JOB_ITEM_KEYS,
    Permuted,
    parse_sorting,
    sorted_positions,
)
from devtools.simulator.state import JobFinished, SimState, UnknownJob
from pleo.models import ITEM_FAILURE_REASON_TYPES

PUT_LIMIT: Final = 100
_UUID: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What an endpoint answers, before faults and rendering: status, JSON body, headers, page."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    page: Page | None = None


Handler = Callable[[SimState, Request, bytes], Reply]


class _BadRequest(ValueError):
    """The request does not follow the spec; answered with 400."""


def error(status: int, kind: str, message: str) -> Reply:
    """A Pleo ``ExceptionInfo`` reply."""
    return Reply(status, {"type": kind, "message": message})


def _not_found() -> Reply:
    return error(404, "EXPORT_NOT_FOUND", "Export job not found.")


def _query(request: Request) -> dict[str, list[str]]:
    params = request.query_params
    return {name: params.getlist(name) for name in params}


def _uuid(value: object, name: str) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise _BadRequest(f"{name} must be a UUID.")
    return value.lower()


def _optional(
    entry: Mapping[str, Any], name: str, allowed: frozenset[str] | None = None
) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        raise _BadRequest(
            f"{name} must be {'one of ' + ', '.join(sorted(allowed)) if allowed else 'a string'}."
        )
    return value


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as failure:
        raise _BadRequest("Body is not valid JSON.") from failure


def guarded(handler: Handler) -> Handler:
    """Answer 400 for malformed input and 404 for unknown jobs, whatever the handler raised."""

    def run(state: SimState, request: Request, body: bytes) -> Reply:
        try:
            return handler(state, request, body)
        except (_BadRequest, BadPageRequest) as failure:
            return error(400, "BAD_REQUEST", str(failure))
        except UnknownJob:
            return _not_found()

    return run


@guarded
def get_job(state: SimState, request: Request, body: bytes) -> Reply:
    """``GET /v3/export-jobs/{jobId}``."""
    job = state.job(_uuid(request.path_params["job_id"], "jobId"))
    return Reply(200, {"data": job.to_json()})


@guarded
def list_jobs(state: SimState, request: Request, body: bytes) -> Reply:
    """``GET /v3/export-jobs``: jobs oldest first, filtered by ``statuses`` and ``company_id``."""
    query = _query(request)
    statuses = frozenset(query.get("statuses", []))
    if not statuses <= JOB_STATUSES:
        raise _BadRequest(f"statuses must be in {', '.join(sorted(JOB_STATUSES))}.")
    company = query.get("company_id", [None])[-1]
    company = _uuid(company, "company_id") if company is not None else None

    def matches(job: Job) -> bool:
        return (not statuses or job.status in statuses) and company in (None, job.company_id)

    salt = listing_salt("jobs", ",".join(sorted(statuses)), company or "")
    page_request = parse_page_request(query, salt, state.max_page_size)
    page = build_page(list(state.jobs.values()), matches, Job.to_json, page_request, salt)
    return Reply(200, page.body, page=page)


@guarded
def post_event(state: SimState, request: Request, body: bytes) -> Reply:
    """``POST /v3/export-job-events``: 202, or 422 when the state machine forbids the event."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise _BadRequest("Body must be a CreateExportJobEvent object.")
    job_id = _uuid(payload.get("jobId"), "jobId")
    event = _optional(payload, "event", JOB_EVENTS)
    if event is None:
        raise _BadRequest("event is required.")
    reason = _optional(payload, "failureReason")
    reason_type = _optional(payload, "failureReasonType", JOB_FAILURE_REASON_TYPES)
    outcome = state.post_event(job_id, event, reason, reason_type)
    if outcome == "unknown_job":
        return _not_found()
    if outcome == "invalid_transition":
        status = state.job(job_id).status
        message = (
            f"Export Job status change failed: cannot apply {event} to a job that is {status}."
        )
        return error(422, "INVALID_EXPORT_JOB_STATUS_CHANGE", message)
    return Reply(202)


@guarded
def get_job_items(state: SimState, request: Request, body: bytes) -> Reply:
    """``GET /v3/export-jobs/{jobId}/items``: a page of the control layer, optionally by status."""
    job_id = _uuid(request.path_params["job_id"], "jobId")
    state.job(job_id)
    query = _query(request)
    status = query.get("status", [None])[-1]
    if status is not None and status not in ITEM_STATUSES:
        raise _BadRequest(f"status must be one of {', '.join(sorted(ITEM_STATUSES))}.")

    def matches(item: JobItem) -> bool:
        return item.status == status

    sorting = parse_sorting(query, JOB_ITEM_KEYS)
    salt = listing_salt("job_items", job_id, status or "", sorting.label)
    page_request = parse_page_request(query, salt, state.max_page_size)
    wanted = None if status is None else matches
    items: Sequence[JobItem] = state.items(job_id)
    if sorting.keys:
        positions = state.sorted_positions(
            ("job_items", job_id, sorting.label),
            lambda: sorted_positions(items, sorting, JOB_ITEM_KEYS),
        )
        items = Permuted(items, positions)
    page = build_page(items, wanted, JobItem.to_json, page_request, salt)
    return Reply(200, page.body, page=page)


@guarded
def put_job_items(state: SimState, request: Request, body: bytes) -> Reply:
    """``PUT /v3/export-jobs/{jobId}/items``: up to 100 updates; unknown entries go to errors."""
    job_id = _uuid(request.path_params["job_id"], "jobId")
    state.job(job_id)
    payload = _json(body)
    if not isinstance(payload, list):
        raise _BadRequest("Body must be an array of UpdateExportJobItemV3.")
    if len(payload) > PUT_LIMIT:
        return error(
            413, "EXPORT_JOB_ITEMS_UPDATE_LIMIT", "Number of items to update is more than 100."
        )
    updates = [_item_update(entry) for entry in payload]
    try:
        updated, errors = state.update_items(job_id, updates)
    except JobFinished:
        return error(422, "EXPORT_JOB_STATUS_UNPROCESSABLE", "Export job is finished.")
    return Reply(200, {"data": [item.to_json() for item in updated], "errors": errors})


def _item_update(entry: Any) -> ItemUpdate:
    """Validate one ``UpdateExportJobItemV3``."""
    if not isinstance(entry, dict):
        raise _BadRequest("Each update must be an object.")
    status = _optional(entry, "status", ITEM_STATUSES)
    if status is None:
        raise _BadRequest("status is required.")
    exported_at = _optional(entry, "exportedAt")
    if exported_at is not None:
        try:
            datetime.fromisoformat(exported_at)
        except ValueError as failure:
            raise _BadRequest("exportedAt must be an ISO 8601 date-time.") from failure
    return ItemUpdate(
        accounting_entry_id=_uuid(entry.get("accountingEntryId"), "accountingEntryId"),
        status=status,
        exported_at=exported_at,
        external_id=_optional(entry, "externalId"),
        external_url=_optional(entry, "externalUrl"),
        failure_reason=_optional(entry, "failureReason"),
        failure_reason_type=_optional(entry, "failureReasonType", ITEM_FAILURE_REASON_TYPES),
    )


@guarded
def get_export_items(state: SimState, request: Request, body: bytes) -> Reply:
    """``GET /v3/export-items?job_id=``: the data layer, readable only while the job is open."""
    query = _query(request)
    if not query.get("job_id"):
        raise _BadRequest("job_id is required by this simulator.")
    job_id = _uuid(query["job_id"][-1], "job_id")
    if state.job(job_id).status in TERMINAL_JOB_STATUSES:
        message = "Export Job is finished and can no longer be processed."
        return error(422, "EXPORT_JOB_STATUS_UNPROCESSABLE", message)
    sorting = parse_sorting(query, EXPORT_ITEM_KEYS)
    salt = listing_salt("export_items", job_id, sorting.label)
    page_request = parse_page_request(query, salt, state.max_page_size)
    entries: Sequence[JsonObject] = state.export_listing(job_id)
    if sorting.keys:
        positions = state.sorted_positions(
            ("export_items", job_id, sorting.label),
            lambda: sorted_positions(entries, sorting, EXPORT_ITEM_KEYS),
        )
        entries = Permuted(entries, positions)
    page = build_page(entries, None, _same, page_request, salt)
    return Reply(200, page.body, page=page)


def _same(entry: JsonObject) -> JsonObject:
    return entry
