"""The reference HTTP adapter: a generic REST journal over httpx, with idempotency keys.

Chosen by ``ERP_ADAPTER=consumers.erp_http:from_settings``. Relative to ``ERP_HTTP_URL`` it calls

- ``POST /journal/entries``: one entry's body (below), header ``Idempotency-Key`` (the name
  ``ERP_HTTP_IDEMPOTENCY_HEADER``) = ``idempotency_key(accountingEntryId)``; 2xx ``{id, url,
  bookedAt}``;
- ``POST /journal/batch`` (when ``ERP_HTTP_BATCH`` > 1): ``{"entries": [body + idempotencyKey]}``
  → ``{"results": [{status: "booked"|"rejected", id, url, bookedAt | reasonType, reason}]}``,
  one per entry, in order;
- ``GET /journal/entries?accountingEntryId=X``: ``{"data": [booking, ...]}`` (empty: not booked).
- ``POST ERP_HTTP_ATTACHMENTS_URL`` (receipts; unset: this adapter takes none): the file's bytes
  as the body with its ``Content-Type``, the same idempotency header carrying
  ``attachment_key(accountingEntryId, sha256)``, and ``X-Accounting-Entry-Id``,
  ``X-Entry-External-Id``, ``X-File-Index``, ``X-Content-SHA256``; 2xx ``{id}``. A 4xx refuses
  the receipt (``receipt_upload_failure``); 5xx, 429 and timeouts are tried again, same key.

The body, from ``consumers.posting.to_posting`` (Pleo's checks run first; an entry they refuse is
never sent): ``accountingEntryId``, ``date`` (the entry's booked_at), ``currency``, ``amount``
(cents), ``type``, and ``lines`` of ``lineNo``, ``lineId``, ``accountId``, ``accountCode``,
``accountName``, ``lineAmount``, ``netAmount``, ``taxAmount``, ``taxCode``. ``ERP_HTTP_FIELDS``
(a JSON object) renames any of these fields, and the lookup's parameter, for an ERP that calls them
otherwise. Every answer maps to the protocol as ``consumers/erp_http_answers.py`` draws it.
``ERP_HTTP_AUTH`` is sent as the value of ``ERP_HTTP_AUTH_HEADER`` (without it, a
``user:password@`` in ``ERP_HTTP_URL`` is sent as Basic auth); neither is in any repr, log line
(httpx logs each request's URL, from which the user info is taken out) or message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from consumers.erp import (
    Attachment,
    Entry,
    EntryRejected,
    ERPAuthenticationFailed,
    ERPLimits,
    ERPUnavailable,
    ExternalRef,
)
from consumers.erp import idempotency_key as key_for
from consumers.erp_http_answers import (
    answer_failure,
    external_ref,
    json_body,
    reason_of,
    rejected,
)
from consumers.posting import to_posting
from contract.credentials import OAuthAuth, credential_for, with_login_hint
from contract.errors import BadInput, TransientUpstreamError, shown
from contract.oauth import GrantRefused
from contract.settings import Settings, redact_url
from contract.store import ledger_client

# The body's fields by their default names: the entry's and each line's (ERP_HTTP_FIELDS keys).
ENTRY_FIELDS: Final = (
    "accountingEntryId",
    "date",
    "currency",
    "amount",
    "type",
    "lines",
    "idempotencyKey",
)
LINE_FIELDS: Final = (
    "lineNo",
    "lineId",
    "accountId",
    "accountCode",
    "accountName",
    "lineAmount",
    "netAmount",
    "taxAmount",
    "taxCode",
)
ENTRIES_PATH: Final = "/journal/entries"
BATCH_PATH: Final = "/journal/batch"


def parse_fields(raw: str | None) -> dict[str, str]:
    """``ERP_HTTP_FIELDS`` as {default name: ERP's name}; BadInput, one sentence, if it is wrong."""
    if raw is None or not raw.strip():
        return {}
    try:
        names = json.loads(raw)
    except ValueError:
        raise BadInput(f"ERP_HTTP_FIELDS must be a JSON object, not {shown(raw)}.") from None
    if not isinstance(names, dict) or not all(
        isinstance(v, str) and v.strip() for v in names.values()
    ):
        raise BadInput(f"ERP_HTTP_FIELDS must map field names to new names, not {shown(raw)}.")
    unknown = sorted(set(names) - {*ENTRY_FIELDS, *LINE_FIELDS})
    if unknown:
        known = ", ".join((*ENTRY_FIELDS, *LINE_FIELDS))
        raise BadInput(f"ERP_HTTP_FIELDS renames unknown fields {unknown}; known: {known}.")
    for group in (ENTRY_FIELDS, LINE_FIELDS):
        wire = [names.get(name, name) for name in group]
        if len(set(wire)) != len(wire):
            raise BadInput(f"ERP_HTTP_FIELDS gives two fields one name: {shown(raw)}.")
    return names


class HttpJournal:
    """An ERP over HTTP: post, post a batch, look up; one httpx client, closed by ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        auth: str | None = None,
        auth_header: str = "Authorization",
        idempotency_header: str = "Idempotency-Key",
        fields: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        batch_size: int = 1,
        transport: httpx.BaseTransport | None = None,
        attachments_url: str | None = None,
        oauth: httpx.Auth | None = None,
    ) -> None:
        self._where = redact_url(url)
        self._names = dict(fields or {})
        self._idempotency_header = idempotency_header
        self._timeout = timeout
        self.limits = ERPLimits(batch_size=max(batch_size, 1), idempotency_key=True)
        base, userinfo = _without_userinfo(url)
        headers = {} if auth is None else {auth_header: auth}
        # A user:password@ in the URL is sent as Basic auth, never in the URL httpx logs.
        basic = httpx.BasicAuth(*userinfo) if userinfo is not None and auth is None else None
        self._client = httpx.Client(
            base_url=base,
            headers=headers,
            auth=oauth or basic,
            timeout=timeout,
            transport=transport,
        )
        # Receipts: where they are uploaded (consumers/receipts.py); None: none are.
        self._attachments_url = attachments_url
        self.takes_attachments = attachments_url is not None

    def __repr__(self) -> str:
        return f"HttpJournal(url={self._where!r}, batch_size={self.limits.batch_size})"

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self._client.close()

    def find(self, accounting_entry_id: str) -> ExternalRef | None:
        """The entry's first booking in the ERP, or None if it has none."""
        params = {self._name("accountingEntryId"): accounting_entry_id}
        response = self._call("GET", ENTRIES_PATH, accounting_entry_id, params=params)
        body = json_body(response, self._where)
        found = body.get("data") if isinstance(body, Mapping) else body
        if not isinstance(found, list):
            raise ERPUnavailable(f"The ERP at {self._where} answered a lookup without a list.")
        return external_ref(found[0], self._where) if found else None

    def post(self, entry: Entry) -> ExternalRef:
        """Post ``entry`` once: its idempotency key makes a replay return the first booking."""
        body = self._body(entry)
        headers = {self._idempotency_header: key_for(entry.accounting_entry_id)}
        response = self._call(
            "POST", ENTRIES_PATH, entry.accounting_entry_id, json=body, headers=headers
        )
        return external_ref(json_body(response, self._where), self._where)

    def post_batch(self, entries: Sequence[Entry]) -> list[ExternalRef | EntryRejected]:
        """Post ``entries`` in one call; one outcome each, in order (Pleo's refusals unsent)."""
        if len(entries) > self.limits.batch_size:
            raise ValueError(f"{len(entries)} entries, but the ERP takes {self.limits.batch_size}")
        outcomes: list[ExternalRef | EntryRejected | None] = []
        bodies = []
        for entry in entries:
            try:
                body = self._body(entry)
            except EntryRejected as refused:
                outcomes.append(refused)
                continue
            body[self._name("idempotencyKey")] = key_for(entry.accounting_entry_id)
            bodies.append(body)
            outcomes.append(None)
        if bodies:
            sent = [e for e, o in zip(entries, outcomes, strict=True) if o is None]
            results = self._batch(bodies, sent)
            answers = iter(results)
            outcomes = [next(answers) if o is None else o for o in outcomes]
        return [o for o in outcomes if o is not None]

    def attach(self, attachment: Attachment) -> str:
        """Upload one receipt once: its key makes a replay return the first upload's id."""
        if self._attachments_url is None:
            raise ERPUnavailable("ERP_HTTP_ATTACHMENTS_URL names no URL to upload receipts to.")
        headers = {
            self._idempotency_header: attachment.key,
            "Content-Type": attachment.content_type,
            "X-Accounting-Entry-Id": attachment.accounting_entry_id,
            "X-Entry-External-Id": attachment.external_id,
            "X-File-Index": str(attachment.index),
            "X-Content-SHA256": attachment.sha256,
        }
        response = self._call(
            "POST",
            self._attachments_url,
            attachment.accounting_entry_id,
            content=attachment.content,
            headers=headers,
        )
        body = json_body(response, self._where)
        found = body.get("id") if isinstance(body, Mapping) else None
        if not isinstance(found, str | int) or isinstance(found, bool):
            raise ERPUnavailable(f"The ERP at {self._where} answered an upload without an id.")
        return str(found)

    def _batch(self, bodies: list[dict[str, Any]], sent: list[Entry]) -> list[Any]:
        response = self._call("POST", BATCH_PATH, None, json={"entries": bodies})
        body = json_body(response, self._where)
        results = body.get("results") if isinstance(body, Mapping) else None
        if not isinstance(results, list) or len(results) != len(sent):
            raise ERPUnavailable(
                f"The ERP at {self._where} answered a batch of {len(sent)} without one result "
                "per entry."
            )
        outcomes: list[ExternalRef | EntryRejected] = []
        for entry, result in zip(sent, results, strict=True):
            if isinstance(result, Mapping) and result.get("status") == "booked":
                outcomes.append(external_ref(result, self._where))
            else:
                reason_type, reason = reason_of(result)
                outcomes.append(rejected(entry.accounting_entry_id, reason_type, reason, None))
        return outcomes

    def _call(self, method: str, path: str, entry_id: str | None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ERPUnavailable(
                f"The ERP at {self._where} did not answer within {self._timeout:g} s."
            ) from None
        except httpx.TransportError as exc:
            raise ERPUnavailable(
                f"The ERP at {self._where} could not be reached ({type(exc).__name__})."
            ) from None
        except TransientUpstreamError as exc:
            # Its OAuth token endpoint is down, or another process's refresh is slow: retry.
            raise ERPUnavailable(f"The ERP's credentials could not be refreshed: {exc}") from exc
        if not response.is_success:
            raise answer_failure(response, self._where, entry_id)
        return response

    def _name(self, field: str) -> str:
        return self._names.get(field, field)

    def _body(self, entry: Entry) -> dict[str, Any]:
        """The entry as the ERP's body (after Pleo's checks: EntryRejected if they refuse it)."""
        posting = to_posting(entry)
        item = entry.export_item or {}
        date = entry.booked_at or item.get("date")
        name = self._name
        lines = [
            {
                name("lineNo"): line.line_no,
                name("lineId"): line.line_id,
                name("accountId"): line.account_id,
                name("accountCode"): line.account_code,
                name("accountName"): line.account_name,
                name("lineAmount"): line.line_value,
                name("netAmount"): line.net_value,
                name("taxAmount"): line.tax_value,
                name("taxCode"): line.tax_code,
            }
            for line in posting.lines
        ]
        return {
            name("accountingEntryId"): entry.accounting_entry_id,
            name("date"): date,
            name("currency"): posting.currency,
            name("amount"): posting.amount_value,
            name("type"): posting.entry_type,
            name("lines"): lines,
        }


def _without_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and that (user, password) if it had one."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    userinfo = (unquote(parts.username or ""), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=host)), userinfo


def from_settings(settings: Settings) -> HttpJournal:
    """The HTTP journal ``ERP_HTTP_URL`` names; BadInput, one sentence, when it names none."""
    if settings.erp_http_url is None:
        raise BadInput(
            "ERP_HTTP_URL must name the ERP's base URL (http:// or https://) for the HTTP adapter."
        )
    return HttpJournal(
        settings.erp_http_url,
        auth=settings.erp_http_auth,
        auth_header=settings.erp_http_auth_header,
        idempotency_header=settings.erp_http_idempotency_header,
        fields=parse_fields(settings.erp_http_fields),
        timeout=settings.erp_http_timeout,
        batch_size=settings.erp_http_batch,
        attachments_url=settings.erp_http_attachments_url,
        oauth=_oauth(settings) if settings.erp_uses_oauth else None,
    )


def _oauth(settings: Settings) -> httpx.Auth:
    """The connection's stored OAuth credential (``contract/credentials.py``) as an auth flow.

    On a 401 it refreshes once and retries; a refused refresh is ``ERPAuthenticationFailed``.
    """
    credential = credential_for(settings, "erp", ledger_client(settings))

    def refused(error: GrantRefused) -> ERPAuthenticationFailed:
        return ERPAuthenticationFailed(
            f"The accounting system refused the OAuth credential of connection "
            f"{credential.name!r}: {with_login_hint(error.message, 'pleo-export auth login --erp')}"
        )

    return OAuthAuth(credential, refused=refused, header=settings.erp_http_auth_header)
