"""The Pleo Export API client (jobs, job events, both item layers, item updates) over httpx.

Each HTTP request is one unit of retry (``contract.retrying``), and every failure is mapped onto
the error tree there (``pleo.responses``), so callers only ever see ``contract.errors`` types.
Page walks follow ``pleo.paging`` and every page is checked by ``pleo.models`` before it is
handed on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Generator, Hashable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import httpx
import msgspec
import redis

from contract.credentials import OAuthAuth, credential_for, with_login_hint
from contract.errors import AuthenticationFailed, BadInput, RateLimited
from contract.ids import is_uuid
from contract.oauth import GrantRefused
from contract.retrying import RateGate, RetryPolicy, Target, call_with_retries, gate_hold
from contract.settings import Settings, redact_url
from contract.store import ledger_client
from pleo.models import (
    ITEM_STATUSES,
    JOB_EVENTS,
    JOB_STATUSES,
    ExportItem,
    ExportJob,
    ItemError,
    JobItem,
    Page,
    UpdateResult,
    decode_export_items_page,
    decode_job_items_page,
    parse_job_response,
    parse_jobs_page,
    parse_update_result,
)
from pleo.offset_walk import SORTING, id_key, offset_walk, with_fallback
from pleo.paging import Done, Walk, advance
from pleo.responses import error_for_body, error_for_status, error_for_transport

__all__ = ["ItemError", "PleoClient", "UpdateResult", "make_http_client"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_UPDATE_ITEMS = 100  # the spec's limit for one PUT; more is a 413


def _user_agent() -> str:
    try:
        return f"pleo-export-producer/{version('pleo-export-producer')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "pleo-export-producer/0+unknown"


class _BearerAuth(httpx.Auth):
    """Sends ``Authorization: Bearer <token>``; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(token='***')"


def oauth_auth(settings: Settings, redis_client: redis.Redis | None = None) -> httpx.Auth:
    """The stored OAuth credential of PLEO_OAUTH_COMPANY as an httpx auth flow.

    A refused refresh is ``AuthenticationFailed``: the run or write-back ends the job with
    ``authentication_failure`` (``pleo/final_event.py``).
    """
    client = redis_client if redis_client is not None else ledger_client(settings)
    credential = credential_for(settings, "pleo", client)

    def refused(error: GrantRefused) -> AuthenticationFailed:
        return AuthenticationFailed(
            f"Pleo's OAuth credential for company {credential.name!r} was refused: "
            f"{with_login_hint(error.message, 'pleo-export auth login')}",
            status=error.status,
            url=error.url,
        )

    return OAuthAuth(credential, refused=refused)


def tls_context() -> ssl.SSLContext:
    """The TLS context every client of this process verifies servers with.

    httpx builds one per client unless given one, loading the CA bundle each time: about 20 ms of
    CPU, paid by every client an ERP worker or a CLI command opens. Built as httpx would
    (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` still apply), once per process: a forked pool
    process builds its own rather than use one it inherited.
    """
    return _tls_context_of(os.getpid())


@functools.cache
def _tls_context_of(pid: int) -> ssl.SSLContext:
    return httpx.create_ssl_context()


def make_http_client(
    settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """Build the keep-alive httpx.Client the Pleo client talks through, with Settings' auth."""
    # Credentials written into PLEO_API_URL (user:password@host) are sent as Basic auth, never as
    # part of the URL: httpx logs every request's URL, and a URL shows up in errors.
    url = httpx.URL(settings.api_url)
    auth: httpx.Auth | None = None
    if settings.pleo_uses_oauth:
        auth = oauth_auth(settings)
    elif settings.api_token:
        auth = _BearerAuth(settings.api_token)
    elif settings.api_key:
        # Pleo's basicAuth scheme: the API key is the user name and the password is empty.
        auth = httpx.BasicAuth(settings.api_key, "")
    elif url.userinfo:
        auth = httpx.BasicAuth(url.username, url.password)
    # Both layers' pages in flight at once, each on its own connection, and a spare.
    connections = max(10, 2 * settings.page_concurrency + 2)
    return httpx.Client(
        base_url=url.copy_with(username=None, password=None),
        timeout=httpx.Timeout(settings.http_timeout),
        limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=30
        ),
        headers={"Accept": "application/json", "User-Agent": _user_agent()},
        auth=auth,
        transport=transport,
        verify=tls_context(),
    )


class PleoClient:
    """Pleo's Export API v3 over an injected httpx.Client, with one retry layer per request."""

    def __init__(
        self,
        http: httpx.Client,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._policy = RetryPolicy.from_settings(settings)
        self._gate = RateGate(clock=clock, sleep=sleep)

    def __repr__(self) -> str:
        return f"PleoClient(base_url={redact_url(str(self._http.base_url))!r})"

    def get_job(self, job_id: str) -> ExportJob:
        """Fetch one export job (``GET /v3/export-jobs/{jobId}``)."""
        _check_job_id(job_id)
        body = self._send("GET", f"/v3/export-jobs/{job_id}", job_id=job_id)
        return parse_job_response(body, job_id=job_id)

    def post_job_event(
        self,
        job_id: str,
        event: str,
        *,
        failure_reason: str | None = None,
        failure_reason_type: str | None = None,
    ) -> None:
        """Send a job event (``POST /v3/export-job-events``; Pleo answers 202).

        A retried event whose first attempt did land answers 422, which callers already treat as
        "someone moved the job: re-read it".
        """
        _check_job_id(job_id)
        if event not in JOB_EVENTS:
            raise ValueError(f"Unknown export job event {event!r}.")
        payload: dict[str, str] = {"jobId": job_id, "event": event}
        if failure_reason is not None:
            payload["failureReason"] = failure_reason
        if failure_reason_type is not None:
            payload["failureReasonType"] = failure_reason_type
        self._send("POST", "/v3/export-job-events", job_id=job_id, body=payload, decode=False)
        log.info("job_event_sent job_id=%s event=%s", job_id, event)

    def iter_job_items(
        self,
        job_id: str,
        *,
        status: str | None = None,
        concurrency: int = 1,
        on_restart: Callable[[str], None] | None = None,
    ) -> Iterator[Page[JobItem]]:
        """Yield every checked page of the job's control layer.

        ``concurrency`` 1 is the cursor walk, in Pleo's order. More reads by offset, that many
        pages at a time, in ``accountingEntryId`` order (``pleo.offset_walk``); should the pages
        not prove complete, ``on_restart(reason)`` is called (the consumer must forget every page
        it was given) and the cursor walk's pages follow.
        """
        _check_job_id(job_id)
        if status is not None and status not in ITEM_STATUSES:
            raise BadInput(f"Unknown export job item status {status!r}.", job_id=job_id)
        params = {} if status is None else {"status": status}
        return self._pages(
            f"/v3/export-jobs/{job_id}/items",
            params,
            job_id=job_id,
            what="job items",
            parse=lambda body, n: decode_job_items_page(body, job_id=job_id, page=n),
            key=lambda item: id_key(item.accounting_entry_id),
            concurrency=concurrency,
            on_restart=on_restart,
        )

    def iter_export_items(
        self,
        job_id: str,
        *,
        concurrency: int = 1,
        on_restart: Callable[[str], None] | None = None,
    ) -> Iterator[Page[ExportItem]]:
        """Yield every checked page of the job's data layer (``GET /v3/export-items?job_id=``).

        ``concurrency`` and ``on_restart`` as for ``iter_job_items``.
        """
        _check_job_id(job_id)
        return self._pages(
            "/v3/export-items",
            {"job_id": job_id},
            job_id=job_id,
            what="export items",
            parse=lambda body, n: decode_export_items_page(body, job_id=job_id, page=n),
            key=lambda item: id_key(item.accounting_entry_id),
            concurrency=concurrency,
            on_restart=on_restart,
        )

    def update_job_items(self, job_id: str, updates: Sequence[Mapping[str, Any]]) -> UpdateResult:
        """Write at most 100 item results (``PUT /v3/export-jobs/{jobId}/items``).

        Pleo counts every application of an update, so a PUT that may have been applied (its
        answer timed out or broke off, a 500) is not sent again here: the error says
        ``maybe_applied``, and the write-back reads the items' statuses to learn which landed.
        """
        _check_job_id(job_id)
        if len(updates) > MAX_UPDATE_ITEMS:
            raise ValueError(
                f"Pleo takes at most {MAX_UPDATE_ITEMS} item updates per call, not {len(updates)}."
            )
        if not updates:
            return UpdateResult((), ())
        body = self._send(
            "PUT",
            f"/v3/export-jobs/{job_id}/items",
            job_id=job_id,
            body=[dict(u) for u in updates],
            replayable=False,
        )
        return parse_update_result(body, job_id=job_id)

    def list_jobs(
        self, statuses: Sequence[str], *, company_id: str | None = None
    ) -> Iterator[ExportJob]:
        """Yield every export job in one of ``statuses`` (``GET /v3/export-jobs``), all pages."""
        unknown = sorted(set(statuses) - JOB_STATUSES)
        if unknown:
            raise BadInput(f"Unknown export job status {', '.join(unknown)}.")
        if company_id is not None and not is_uuid(company_id):
            raise BadInput(f"Company id {company_id!r} is not a UUID.")
        params: dict[str, Any] = {"statuses": list(statuses)}
        if company_id is not None:
            params["company_id"] = company_id
        pages = self._walk(
            "/v3/export-jobs",
            params,
            job_id=None,
            what="export jobs",
            parse=lambda body, n: parse_jobs_page(json.loads(body), page=n),
            key=lambda job: job.id,
        )
        return (job for page in pages for job in page.items)

    def _pages(
        self,
        path: str,
        params: Mapping[str, Any],
        *,
        job_id: str,
        what: str,
        parse: Callable[[bytes, int], Page[T]],
        key: Callable[[T], Hashable],
        concurrency: int,
        on_restart: Callable[[str], None] | None,
    ) -> Iterator[Page[T]]:
        """The cursor walk, or the offset walk falling back to it (see ``iter_job_items``)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}.")

        def cursor_pages() -> Iterator[Page[T]]:
            return self._walk(path, params, job_id=job_id, what=what, parse=parse, key=key)

        if concurrency == 1:
            return cursor_pages()
        if on_restart is None:
            raise ValueError("an offset walk needs on_restart, in case it falls back.")

        def fetch(offset: int, number: int) -> Page[T]:
            query = {**params, **SORTING, "offset": offset, "limit": self._settings.page_size}
            page: Page[T] = self._send(
                "GET", path, job_id=job_id, params=query, read=lambda body: parse(body, number)
            )
            log.info(
                "page_fetched job_id=%s what=%s page=%d offset=%d items=%d has_next=%s",
                job_id,
                what,
                number,
                offset,
                len(page.items),
                page.info.has_next_page,
            )
            return page

        def offset_pages() -> Iterator[Page[T]]:
            return offset_walk(
                fetch, key, concurrency=concurrency, max_pages=self._settings.max_pages
            )

        return with_fallback(
            offset_pages, cursor_pages, on_restart=on_restart, what=what, job_id=job_id
        )

    def _walk(
        self,
        path: str,
        params: Mapping[str, Any],
        *,
        job_id: str | None,
        what: str,
        parse: Callable[[bytes, int], Page[T]],
        key: Callable[[T], Hashable],
    ) -> Iterator[Page[T]]:
        """Follow ``after=endCursor`` until Pleo says there is no next page, checking every step."""
        walk = Walk()
        after: str | None = None
        seen: set[Hashable] = set()
        while True:
            query = {**params, "limit": self._settings.page_size}
            if after is not None:
                query["after"] = after
            number = walk.pages + 1
            page = self._send(
                "GET",
                path,
                job_id=job_id,
                params=query,
                read=lambda body, n=number: parse(body, n),  # type: ignore[misc]
            )
            fresh = {key(item) for item in page.items} - seen
            seen |= fresh
            first_total = walk.total
            walk, step = advance(
                walk,
                page.info,
                len(fresh),
                max_pages=self._settings.max_pages,
                what=what,
                job_id=job_id,
            )
            if first_total is not None and page.info.total not in (None, first_total):
                log.warning(
                    "page_total_changed job_id=%s what=%s page=%d first=%d now=%s",
                    job_id,
                    what,
                    walk.pages,
                    first_total,
                    page.info.total,
                )
            log.info(
                "page_fetched job_id=%s what=%s page=%d items=%d repeated=%d has_next=%s",
                job_id,
                what,
                walk.pages,
                len(page.items),
                len(page.items) - len(fresh),
                page.info.has_next_page,
            )
            yield page
            if isinstance(step, Done):
                return
            after = step.after

    def _send(
        self,
        method: str,
        path: str,
        *,
        job_id: str | None,
        params: Mapping[str, Any] | None = None,
        body: object = None,
        decode: bool = True,
        read: Callable[[bytes], R] | None = None,
        replayable: bool = True,
    ) -> Any:
        """One request, retried as the policy allows; returns the decoded JSON body (or None).

        ``read`` (a page's typed decode) takes the body's bytes instead and returns what it
        makes of them; a body that is not JSON is a transient error either way.
        """
        target = Target(method, path, job_id, str(self._http.base_url).rstrip("/") + path)
        deadline = self._clock() + self._policy.budget

        def attempt() -> object:
            self._gate.wait(deadline)
            try:
                response = self._http.request(method, path, params=params, json=body)
                response.raise_for_status()
            except httpx.HTTPStatusError as exc:
                error = error_for_status(exc.response, target)
                if isinstance(error, RateLimited):
                    self._gate.hold(gate_hold(error, self._policy))
                raise error from exc
            except httpx.TransportError as exc:
                raise error_for_transport(exc, target) from exc
            if not decode:
                return None
            try:
                if read is not None:
                    return read(response.content)
                return response.json()
            except (msgspec.DecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise error_for_body(response, target) from exc

        return call_with_retries(
            attempt,
            policy=self._policy,
            sleep=self._sleep,
            clock=self._clock,
            target=target,
            replayable=replayable,
        )


def _check_job_id(job_id: str) -> None:
    """Reject a job id that is not a UUID before it can become part of a URL."""
    if not is_uuid(job_id):
        raise BadInput(f"Export job id {job_id!r} is not a UUID.", job_id=None)
