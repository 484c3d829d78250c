"""The parsers accept what the Export API v3 spec allows and refuse the rest as violations."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import ContractViolation
from contract.ids import is_uuid
from pleo.models import (
    EXPORT_ITEM_TYPES,
    ITEM_STATUSES,
    ExportJob,
    ItemError,
    JobItem,
    PageInfo,
    decode_export_items_page,
    decode_job_items_page,
    is_cursor,
    parse_export_items_page,
    parse_job,
    parse_job_items_page,
    parse_job_response,
    parse_jobs_page,
    parse_update_result,
)

JOB = "8eb6d4a2-6c1f-4f7e-9a53-2f0c4f1d2b10"
OTHER_JOB = "0d9b1f52-3c44-4b8e-a1f0-6f2e9b7c5d31"
COMPANY = "b5fd3c1e-94a2-4a71-8d0e-1c2b3a4d5e6f"
E1 = "11111111-1111-4111-8111-111111111111"
E2 = "22222222-2222-4222-8222-222222222222"


def job_obj(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": JOB,
        "companyId": COMPANY,
        "createdAt": "2025-05-23T15:21:32Z",
        "expiresIn": 3600,
        "isInteractive": True,
        "numberOfItems": 2,
        "status": "in_progress",
        "vendorBasedBookkeeping": False,
    }
    job.update(overrides)
    return job


def pagination(
    *, has_next: bool = False, end: str | None = None, total: int | None = None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "currentRequestPagination": {"parameters": {}},
        "hasNextPage": has_next,
        "hasPreviousPage": False,
    }
    if end is not None:
        info["endCursor"] = end
    if total is not None:
        info["total"] = total
    return info


def job_item(entry: str = E1, status: str = "pending", job: str = JOB) -> dict[str, Any]:
    return {
        "accountingEntryId": entry,
        "exportJobId": job,
        "status": status,
        "exportedAt": None,
        "externalId": None,
        "externalUrl": None,
        "failureReason": None,
        "failureReasonType": None,
    }


def export_item(entry: str = E1, date: str = "2025-12-10T15:46:34Z") -> dict[str, Any]:
    return {
        "_links": {"api": {"exportItem": f"https://external.pleo.io/v3/export-items/{entry}"}},
        "accountingEntryId": entry,
        "accountingEntryLines": [],
        "additionalInformation": {"reconciliationId": "R-1"},
        "amount": {
            "inSupplierCurrency": {"currency": "DKK", "value": 89696},
            "inWalletCurrency": {"currency": "DKK", "value": 89696},
        },
        "companyId": COMPANY,
        "date": date,
        "type": "card_purchase",
    }


def body(data: list[Any], **info: Any) -> dict[str, Any]:
    return {"data": data, "pagination": pagination(**info)}


def test_is_uuid_accepts_only_the_canonical_form() -> None:
    """is_uuid takes 8-4-4-4-12 hex strings (any case) and nothing else."""
    assert is_uuid(JOB)
    assert is_uuid(JOB.upper())
    for bad in (None, 42, "", "not-a-uuid", JOB.replace("-", ""), "{" + JOB + "}", JOB + "0"):
        assert not is_uuid(bad)


def test_is_cursor_follows_the_spec_pattern() -> None:
    """Cursors are base32 letters, digits 2-7, '=' and '~' only."""
    assert is_cursor("MFRGG===~2")
    for bad in ("", "abc", "A B", "A1", None, 3):
        assert not is_cursor(bad)


def test_parse_job_reads_the_fields_and_keeps_the_raw_object() -> None:
    """A spec-conformant ExportJobV3 becomes an ExportJob whose raw is the dict received."""
    raw = job_obj()
    job = parse_job(raw, job_id=JOB)
    assert job == ExportJob(JOB, COMPANY, "in_progress", 2, 3600, raw={})
    assert job.raw is raw


@pytest.mark.parametrize("reason_type", ["job_expired", "a_reason_pleo_adds_later"])
def test_parse_job_keeps_pleo_failure_reason(reason_type: str) -> None:
    """A failed job's failureReasonType and failureReason are read as sent, enum or not."""
    raw = job_obj(status="failed", failureReasonType=reason_type, failureReason="Expired.")
    job = parse_job(raw, job_id=JOB)
    assert (job.failure_reason_type, job.failure_reason) == (reason_type, "Expired.")
    assert parse_job(job_obj(failureReasonType=None), job_id=JOB).failure_reason_type is None


def test_parse_job_response_unwraps_data() -> None:
    """GET /v3/export-jobs/{id} bodies are {"data": ExportJobV3}; a body without data is refused."""
    assert parse_job_response({"data": job_obj()}, job_id=JOB).id == JOB
    with pytest.raises(ContractViolation, match="data is missing"):
        parse_job_response({"job": job_obj()}, job_id=JOB)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"status": "done"}, "data.status"),
        ({"id": OTHER_JOB}, "data.id"),
        ({"companyId": "acme"}, "data.companyId"),
        ({"numberOfItems": True}, "data.numberOfItems"),
        ({"numberOfItems": -1}, "data.numberOfItems"),
        ({"expiresIn": "3600"}, "data.expiresIn"),
        ({"isInteractive": "yes"}, "data.isInteractive"),
        ({"failureReasonType": 3}, "data.failureReasonType"),
    ],
)
def test_parse_job_rejects_spec_violations(override: dict[str, Any], field: str) -> None:
    """A wrong status, id, company id, count or flag is a ContractViolation naming the field."""
    with pytest.raises(ContractViolation) as caught:
        parse_job(job_obj(**override), job_id=JOB)
    assert field in str(caught.value)
    assert caught.value.job_id == JOB


@pytest.mark.parametrize("missing", ["companyId", "createdAt", "status", "vendorBasedBookkeeping"])
def test_parse_job_rejects_missing_required_fields(missing: str) -> None:
    """Every field the spec marks required must be present."""
    raw = job_obj()
    del raw[missing]
    with pytest.raises(ContractViolation, match=f"data.{missing} is missing"):
        parse_job(raw, job_id=JOB)


def test_parse_job_items_page_reads_items_and_cursor_facts() -> None:
    """A control-layer page keeps item order and reads hasNextPage, endCursor and total."""
    page = parse_job_items_page(
        body([job_item(E2, "in_progress"), job_item(E1)], has_next=True, end="CURSOR2", total=9),
        job_id=JOB,
    )
    assert page.items == (JobItem(E2, "in_progress"), JobItem(E1, "pending"))
    assert page.info == PageInfo(has_next_page=True, end_cursor="CURSOR2", total=9)


def test_parse_job_items_page_reads_explicit_nulls_as_absent() -> None:
    """Null endCursor and total on a last page mean "not sent", as Pleo writes absent optionals."""
    raw = body([job_item()])
    raw["pagination"].update(endCursor=None, total=None, startCursor=None)
    assert parse_job_items_page(raw, job_id=JOB).info == PageInfo(False, None, None)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (job_item(status="done"), "data[1].status"),
        (job_item(entry="entry-1"), "data[1].accountingEntryId"),
        (job_item(job=OTHER_JOB), "data[1].exportJobId"),
        (job_item(job="job-1"), "data[1].exportJobId"),
        ({"accountingEntryId": E2, "exportJobId": JOB}, "data[1].status is missing"),
        ("not an object", "data[1]"),
    ],
)
def test_parse_job_items_page_rejects_bad_items(item: Any, field: str) -> None:
    """A bad status, a non-UUID id, a foreign item or a missing field names field and page."""
    with pytest.raises(ContractViolation) as caught:
        parse_job_items_page(body([job_item(), item]), job_id=JOB, page=3)
    message = str(caught.value)
    assert field in message
    assert "page 3" in message
    assert JOB in message


@pytest.mark.parametrize(
    ("info", "field"),
    [
        ({"hasNextPage": "true"}, "pagination.hasNextPage"),
        ({"hasNextPage": True, "endCursor": None}, "pagination.endCursor is missing"),
        ({"hasNextPage": True, "endCursor": "abc"}, "pagination.endCursor"),
        ({"total": -1}, "pagination.total"),
        ({"total": 2.5}, "pagination.total"),
        ({"hasPreviousPage": None}, "pagination.hasPreviousPage"),
        ({"currentRequestPagination": []}, "pagination.currentRequestPagination"),
    ],
)
def test_parse_page_info_rejects_spec_violations(info: dict[str, Any], field: str) -> None:
    """hasNextPage must be a bool, a next page needs a well-formed cursor, total is a count."""
    raw = body([job_item()])
    raw["pagination"].update(info)
    with pytest.raises(ContractViolation, match=field.replace("[", r"\[")):
        parse_job_items_page(raw, job_id=JOB)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([], "body is list"),
        ({"pagination": pagination()}, "data is missing"),
        ({"data": {}, "pagination": pagination()}, "data is dict, not an array"),
        ({"data": []}, "pagination is missing"),
    ],
)
def test_parse_page_rejects_malformed_envelopes(raw: Any, fragment: str) -> None:
    """A page must be an object with a data array and a pagination object."""
    with pytest.raises(ContractViolation, match=fragment):
        parse_job_items_page(raw, job_id=JOB)


def test_parse_export_items_page_converts_dates_to_utc_and_keeps_payload() -> None:
    """The date is kept as sent and parsed into aware UTC; the payload is the dict received."""
    raw_item = export_item(date="2025-12-10T17:46:34+02:00")
    page = parse_export_items_page(body([raw_item]), job_id=JOB)
    (item,) = page.items
    assert item.date == "2025-12-10T17:46:34+02:00"
    assert item.booked_at == datetime(2025, 12, 10, 15, 46, 34, tzinfo=UTC)
    assert item.booked_at.tzinfo is UTC
    assert item.payload == raw_item


@pytest.mark.parametrize(
    ("raw_item", "fragment"),
    [
        (export_item(date="yesterday"), "data[0].date"),
        (export_item(date="2025-12-10T15:46:34"), "no timezone"),
        (export_item(date="2025-12-10"), "no timezone"),
        (export_item(date="0001-01-01T00:00:00+01:00"), "not a usable ISO-8601 date-time"),
        (export_item(entry="E-1"), "data[0].accountingEntryId"),
        ({**export_item(), "date": 20251210}, "data[0].date"),
        ({k: v for k, v in export_item().items() if k != "amount"}, "data[0].amount is missing"),
        ({k: v for k, v in export_item().items() if k != "_links"}, "data[0]._links is missing"),
    ],
)
def test_parse_export_items_page_rejects_bad_items(raw_item: dict[str, Any], fragment: str) -> None:
    """A bad date, a non-UUID entry id or a missing required key is a ContractViolation."""
    with pytest.raises(ContractViolation) as caught:
        parse_export_items_page(body([raw_item]), job_id=JOB, page=1)
    assert fragment in str(caught.value)


def test_parse_jobs_page_reads_every_job() -> None:
    """GET /v3/export-jobs pages become ExportJobs; a bad job names its index."""
    page = parse_jobs_page(body([job_obj(), job_obj(id=OTHER_JOB, status="pending")]))
    assert [job.id for job in page.items] == [JOB, OTHER_JOB]
    with pytest.raises(ContractViolation, match=r"data\[1\].status"):
        parse_jobs_page(body([job_obj(), job_obj(status="PENDING")]))


def test_parse_update_result_reads_data_and_per_item_errors() -> None:
    """A 200 to an item update may still carry per-item errors; both lists are read."""
    result = parse_update_result(
        {
            "data": [job_item(E1, "successful")],
            "errors": [
                {
                    "accountingEntryId": E2,
                    "message": "Accounting entry does not exist.",
                    "type": "ACCOUNTING_ENTRY_DOES_NOT_EXIST",
                }
            ],
        },
        job_id=JOB,
    )
    assert result.data == (JobItem(E1, "successful"),)
    assert result.errors == (
        ItemError(E2, "Accounting entry does not exist.", "ACCOUNTING_ENTRY_DOES_NOT_EXIST"),
    )
    with pytest.raises(ContractViolation, match="errors is missing"):
        parse_update_result({"data": []}, job_id=JOB)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
page_like = (
    st.fixed_dictionaries({"data": st.lists(json_values, max_size=2), "pagination": json_values})
    | json_values
)


@settings(database=None, max_examples=200)
@given(page_like)
def test_parsers_raise_only_contract_violation(raw: Any) -> None:
    """Whatever JSON arrives, a parser returns or raises ContractViolation, never another error."""
    for parse in (parse_job_items_page, parse_export_items_page):
        with contextlib.suppress(ContractViolation):
            parse(raw, job_id=JOB)
    for parse_one in (parse_job_response, parse_update_result):
        with contextlib.suppress(ContractViolation):
            parse_one(raw, job_id=JOB)


def outcome(parse: Any, raw: object, **kwargs: Any) -> Any:
    """What a parser makes of ``raw``: the page, or the sentence of the violation it raises."""
    try:
        return parse(raw, **kwargs)
    except ContractViolation as exc:
        return ("refused", str(exc), exc.job_id)


# A mutation of a valid page: a key dropped or set to another JSON value, at some path.
mutations = st.lists(
    st.tuples(
        st.sampled_from(["pagination", "item"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzACEIJNPST_", max_size=22)
        | st.sampled_from(
            [
                "hasNextPage",
                "hasPreviousPage",
                "currentRequestPagination",
                "endCursor",
                "total",
                "accountingEntryId",
                "exportJobId",
                "status",
                "date",
                "type",
                "_links",
                "amount",
                "companyId",
            ]
        ),
        st.none()
        | json_values
        | st.sampled_from([*ITEM_STATUSES, *EXPORT_ITEM_TYPES, JOB, OTHER_JOB, E2, "CURSOR=~2"])
        | st.sampled_from(["2025-12-10T15:46:34", "2025-12-10T15:46:34+01:00", 2**70, -1, True]),
        st.booleans(),
    ),
    max_size=3,
)


def mutated(items: list[dict[str, Any]], changes: Any, **info: Any) -> dict[str, Any]:
    raw = body(items, **info)
    for where, key, value, drop in changes:
        target = raw["pagination"] if where == "pagination" or not items else items[-1]
        if drop:
            target.pop(key, None)
        else:
            target[key] = value
    return raw


@settings(database=None, max_examples=300)
@given(
    count=st.integers(0, 3),
    changes=mutations,
    has_next=st.booleans(),
    total=st.none() | st.integers(0, 5),
)
def test_the_typed_decode_decides_as_the_hand_checks(
    count: int, changes: Any, has_next: bool, total: int | None
) -> None:
    """Bytes decoded by msgspec give the page, or the very sentence, the dict parsers give."""
    entries = [E1, E2, OTHER_JOB][:count]
    for decode, parse, make in (
        (decode_job_items_page, parse_job_items_page, job_item),
        (decode_export_items_page, parse_export_items_page, export_item),
    ):
        raw = mutated(
            [make(e) for e in entries], changes, has_next=has_next, end="CURSOR2", total=total
        )
        try:
            content = json.dumps(raw, allow_nan=False).encode()
        except ValueError:  # NaN and infinities are not JSON
            return
        expected = outcome(parse, raw, job_id=JOB, page=2)
        got = outcome(decode, content, job_id=JOB, page=2)
        assert got == expected
        if not isinstance(expected, tuple) and parse is parse_export_items_page:
            assert [item.payload for item in got.items] == [item.payload for item in expected.items]


@settings(database=None, max_examples=100)
@given(page_like)
def test_the_typed_decode_refuses_only_with_contract_violation(raw: Any) -> None:
    """Whatever JSON arrives as bytes, the typed decode agrees with the dict parser."""
    try:
        content = json.dumps(raw, allow_nan=False).encode()
    except ValueError:  # NaN and infinities are not JSON
        return
    for decode, parse in (
        (decode_job_items_page, parse_job_items_page),
        (decode_export_items_page, parse_export_items_page),
    ):
        assert outcome(decode, content, job_id=JOB) == outcome(parse, raw, job_id=JOB)


def test_export_items_keep_the_bytes_pleo_sent() -> None:
    """Each item's raw is its text as received: spacing, escapes, numbers past 64 bits."""
    big = 2**70 + 1
    item = (
        f'{{"_links": {{}}, "accountingEntryId": "{E1}", "accountingEntryLines": [ ],\n'
        f' "additionalInformation": {{"note": "Kaffe \\u2615 ☕", "n": {big}, "m": -{big}}},'
        f' "amount": 1.50, "companyId": "{COMPANY}", "date": "2025-12-10T15:46:34Z",'
        ' "type": "fee"}'
    )
    content = f'{{"data": [ {item} ], "pagination": {json.dumps(pagination())}}}'.encode()
    (decoded,) = decode_export_items_page(content, job_id=JOB).items
    assert decoded.raw == item.encode()
    assert decoded.payload["additionalInformation"]["n"] == big
    assert decoded.payload["additionalInformation"]["m"] == -big
    assert decode_job_items_page(
        json.dumps(body([job_item()], total=big)).encode(), job_id=JOB
    ).info == PageInfo(False, None, big)


@pytest.mark.parametrize("content", [b"", b'{"data": [', b"NaN", b'{"data": "\xff"}'])
def test_a_body_that_is_not_json_is_a_decode_error(content: bytes) -> None:
    """Not JSON (cut off, not UTF-8): msgspec.DecodeError, which the client retries."""
    with pytest.raises(msgspec.DecodeError):
        decode_export_items_page(content, job_id=JOB)
