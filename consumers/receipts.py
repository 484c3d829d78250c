"""Receipts: each booked entry's files, downloaded from Pleo and handed to the adapter once.

Pleo's "Transfer Attachments" step, after the entry is posted (``consumers/worker.py`` on the
direct path, ``consumers/poster.py`` on a governed connection), when ``ERP_RECEIPTS`` is on and
the adapter takes attachments (``consumers.erp.accepts_attachments``). For each of the export
item's ``files``, in order, one at a time (at most one file's bytes in memory):

1. its declared ``type`` must be one of ``ERP_RECEIPT_TYPES`` (else ``receipt_conversion_failure``)
   and its declared ``size`` at most ``ERP_RECEIPT_MAX_BYTES`` (else
   ``receipt_file_size_limit_exceeded``), checked before anything is downloaded;
2. its URL lives ``PLEO_FILE_URL_LIFETIME`` (Pleo: 24 h) from the moment the export item was
   fetched. The worker knows that moment from the message (schema 2's ``published_at``, written
   just after the fetch); a URL within ``min(10 min, lifetime / 10)`` of its end is not tried: the
   job's data layer is read again (``GET /v3/export-items?job_id=``; Pleo has no per-entry read)
   for a fresh one, once per job per process while it stays fresh. A URL refused with 401, 403
   or 410 (expired early, or its fetch time unknown) is renewed the same way, twice at most;
3. the download streams (``httpx``), counting bytes: past the cap it stops at once
   (``receipt_file_size_limit_exceeded``); a served ``Content-Type`` outside the allowed types is
   ``receipt_conversion_failure``; 5xx, 429, timeouts and cut connections are retried by the
   HTTP retry policy (``contract/retrying.py``), then ``receipt_download_failure``, as is any
   other refusal;
4. the adapter's ``attach`` gets it with its key, ``attachment_key(accountingEntryId, sha256)``:
   a replay (a retried message, a worker killed mid-upload, a fresh URL for the same bytes)
   carries the first key, and the adapter uploads nothing twice. ``ERPUnavailable`` retries the
   whole entry later (its ``post`` returns the booking it made); ``EntryRejected`` from the ERP
   is ``receipt_upload_failure``.

The first failure ends the entry's transfer and is its outcome (the entry stays booked in the ERP;
a re-export finds it, and uploads only what is missing). File URLs are capabilities: the download
goes through an ``httpx`` transport directly, so no URL reaches httpx's request log, and no error
or log line here names one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx

from consumers.erp import (
    AttachingAdapter,
    Attachment,
    Entry,
    EntryRejected,
    ERPAdapter,
    ExternalRef,
    accepts_attachments,
)
from contract import metrics
from contract.errors import TransientUpstreamError
from contract.retrying import RetryPolicy, Target, call_with_retries
from contract.settings import Settings
from pleo.client import PleoClient

log = logging.getLogger(__name__)

R = TypeVar("R")
# What an ERP call goes through: the direct path calls it, a poster within the budget.
Caller = Callable[[Callable[[], Any]], Any]

# A URL this close to its end (at most) is renewed before it is tried.
RENEW_MARGIN: Final = 600.0
# Jobs whose renewed files one process keeps (each a few URLs per entry).
_FRESH_JOBS: Final = 4
# Renewals of one file's URL before its download counts as failed.
_RENEWALS: Final = 2
_EXPIRED_STATUSES: Final = frozenset({401, 403, 410})
_REASONS: Final = frozenset(metrics.RECEIPT_REASONS)


@dataclass(frozen=True, slots=True)
class ReceiptSettings:
    """What the receipt transfer reads (``ERP_RECEIPT*``, ``PLEO_FILE_URL_LIFETIME``)."""

    enabled: bool
    max_bytes: int
    types: frozenset[str]
    url_lifetime: float
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptSettings:
        """The receipt settings of ``settings``."""
        return cls(
            enabled=settings.erp_receipts,
            max_bytes=settings.erp_receipt_max_bytes,
            types=frozenset(settings.erp_receipt_types),
            url_lifetime=settings.pleo_file_url_lifetime,
            timeout=settings.erp_receipt_timeout,
        )

    def renew_at(self, fetched_at: float) -> float:
        """When a URL fetched at ``fetched_at`` is renewed rather than tried (epoch seconds)."""
        return fetched_at + self.url_lifetime - min(RENEW_MARGIN, self.url_lifetime / 10)


@dataclass(frozen=True, slots=True)
class FileRef:
    """One of an export item's ``files``: its URL (never shown), declared type and size."""

    url: str
    content_type: str | None
    size: int | None

    def __repr__(self) -> str:
        return f"FileRef(type={self.content_type!r}, size={self.size!r})"


def files_of(entry: Entry) -> list[FileRef]:
    """The entry's files as its export item lists them (none when it has no item or files)."""
    raw = (entry.export_item or {}).get("files") or []
    if not isinstance(raw, list):
        raise _refused(entry, "receipt_download_failure", "its files are not a list")
    files = []
    for n, item in enumerate(raw):
        url = item.get("url") if isinstance(item, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _refused(entry, "receipt_download_failure", f"file {n} has no http(s) URL")
        kind = item.get("type")
        size = item.get("size")
        files.append(
            FileRef(
                url=url,
                content_type=_media_type(kind) if isinstance(kind, str) else None,
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    return files


class Receipts:
    """Downloads an entry's files and hands each to the adapter (see the module docstring)."""

    def __init__(
        self,
        settings: ReceiptSettings,
        pleo: PleoClient,
        *,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._pleo = pleo
        self._retry = retry
        self._transport = transport or httpx.HTTPTransport(retries=0)
        self._clock = clock
        self._sleep = sleep
        # job id -> (when its data layer was read, each entry's files then); a process's poster
        # threads share it, and one of them reads a job's data layer while the others wait.
        self._fresh: OrderedDict[str, tuple[float, dict[str, list[FileRef]]]] = OrderedDict()
        self._fresh_lock = threading.Lock()

    def close(self) -> None:
        """Close the download connections."""
        self._transport.close()

    def wanted(self, erp: ERPAdapter) -> bool:
        """Whether receipts go to ``erp``: ``ERP_RECEIPTS`` on and an adapter that takes them."""
        return self._settings.enabled and accepts_attachments(erp)

    def files_to_transfer(self, erp: ERPAdapter, entry: Entry) -> int:
        """How many files ``transfer`` would take up for the booked ``entry`` (0: none)."""
        files = (entry.export_item or {}).get("files")
        return len(files) if self.wanted(erp) and isinstance(files, list) else 0

    def transfer(
        self,
        erp: ERPAdapter,
        entry: Entry,
        ref: ExternalRef,
        *,
        fetched_at: float | None,
        call: Caller = lambda fn: fn(),
    ) -> EntryRejected | None:
        """Attach each of the booked ``entry``'s files; the refusal that fails it, else None.

        ``fetched_at``: when its export item (and so its URLs) was read, None if unknown;
        ``call`` makes each ERP call (a poster's goes through the connection's budget).
        ``ERPUnavailable`` (and a poster's ``Leave``) propagate: the entry is tried again.
        """
        if not self.wanted(erp):
            return None
        attaching: AttachingAdapter = erp  # type: ignore[assignment]  # accepts_attachments
        try:
            files = files_of(entry)
            for index, file in enumerate(files):
                content, kind = self._fetch(entry, index, file, fetched_at)
                attachment = Attachment(
                    accounting_entry_id=entry.accounting_entry_id,
                    external_id=ref.external_id,
                    index=index,
                    content_type=kind,
                    sha256=hashlib.sha256(content).hexdigest(),
                    content=content,
                )
                upload = functools.partial(attaching.attach, attachment)
                try:
                    attached = call(upload)
                except EntryRejected as refused:
                    raise _refused(
                        entry, "receipt_upload_failure", f"the ERP refused file {index}: {refused}"
                    ) from None
                metrics.receipts_transferred.inc()
                metrics.receipt_bytes.inc(attachment.size)
                log.info(
                    "receipt_attached job_id=%s entry=%s file=%d bytes=%d attachment=%s",
                    entry.job_id,
                    entry.accounting_entry_id,
                    index,
                    attachment.size,
                    attached,
                )
        except EntryRejected as rejected:
            reason = metrics.failure_label(rejected.reason_type, _REASONS)
            metrics.receipt_failures.labels(reason).inc()
            log.info(
                "receipt_failed job_id=%s entry=%s type=%s",
                entry.job_id,
                entry.accounting_entry_id,
                rejected.reason_type,
            )
            return rejected
        return None

    # -- one file ---------------------------------------------------------------------------

    def _fetch(
        self, entry: Entry, index: int, file: FileRef, fetched_at: float | None
    ) -> tuple[bytes, str]:
        """The file's bytes and type, its URL renewed when it has expired."""
        self._check_declared(entry, index, file)
        started = time.monotonic()
        renewals = 0
        if fetched_at is not None and self._clock() >= self._settings.renew_at(fetched_at):
            file, renewals = self._renewed(entry, index, force=False), 1
        while True:
            try:
                fetched = self._download(entry, index, file)
            except _UrlExpired:
                if renewals >= _RENEWALS:
                    raise _refused(
                        entry,
                        "receipt_download_failure",
                        f"file {index}'s URL was refused even after it was renewed",
                    ) from None
                # The first renewal may come from this process's recent read; the second reads.
                file = self._renewed(entry, index, force=renewals > 0)
                renewals += 1
                continue
            metrics.receipt_download_seconds.observe(time.monotonic() - started)
            return fetched

    def _check_declared(self, entry: Entry, index: int, file: FileRef) -> None:
        cap = self._settings.max_bytes
        if file.content_type is not None and file.content_type not in self._settings.types:
            raise _refused(
                entry,
                "receipt_conversion_failure",
                f"file {index} is {file.content_type}, which the ERP does not take",
            )
        if file.size is not None and file.size > cap:
            raise _refused(
                entry,
                "receipt_file_size_limit_exceeded",
                f"file {index} is {file.size} bytes, over the limit of {cap}",
            )

    def _download(self, entry: Entry, index: int, file: FileRef) -> tuple[bytes, str]:
        target = Target("GET", "receipt file", entry.job_id, "receipt file")
        try:
            return call_with_retries(
                lambda: self._get(entry, index, file),
                policy=self._retry,
                sleep=self._sleep,
                clock=time.monotonic,
                target=target,
            )
        except TransientUpstreamError as failed:
            raise _refused(entry, "receipt_download_failure", failed.message) from None

    def _get(self, entry: Entry, index: int, file: FileRef) -> tuple[bytes, str]:
        """One streamed GET of the file; raises for each way it can go wrong."""
        what = f"File {index} of entry {entry.accounting_entry_id}"
        timeout = self._settings.timeout
        request = httpx.Request(
            "GET",
            file.url,
            headers={"Accept": "*/*"},
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        try:
            response = self._transport.handle_request(request)
        except httpx.TimeoutException:
            raise TransientUpstreamError(f"{what} did not arrive within {timeout:g} s.") from None
        except httpx.TransportError as exc:
            raise TransientUpstreamError(
                f"{what} could not be downloaded ({type(exc).__name__})."
            ) from None
        try:
            return self._read(entry, index, file, response, what)
        except httpx.TimeoutException:
            raise TransientUpstreamError(f"{what} stopped arriving for {timeout:g} s.") from None
        except httpx.TransportError as exc:
            raise TransientUpstreamError(f"{what} was cut off ({type(exc).__name__}).") from None
        finally:
            response.close()

    def _read(
        self, entry: Entry, index: int, file: FileRef, response: httpx.Response, what: str
    ) -> tuple[bytes, str]:
        status = response.status_code
        if status in _EXPIRED_STATUSES:
            raise _UrlExpired
        if status == 429 or status >= 500:
            raise TransientUpstreamError(f"{what} was answered HTTP {status}.", status=status)
        if status != 200:
            raise _refused(entry, "receipt_download_failure", f"file {index} got HTTP {status}")
        served = _media_type(response.headers.get("content-type", ""))
        kind = file.content_type or served
        if served and served != "application/octet-stream" and served not in self._settings.types:
            raise _refused(
                entry,
                "receipt_conversion_failure",
                f"file {index} was served as {served}, which the ERP does not take",
            )
        if not kind or kind not in self._settings.types:
            shown = kind or "of no type"
            raise _refused(
                entry,
                "receipt_conversion_failure",
                f"file {index} is {shown}, which the ERP does not take",
            )
        cap = self._settings.max_bytes
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise _too_big(entry, index, cap)
        content = bytearray()
        for chunk in response.iter_bytes():
            content += chunk
            if len(content) > cap:
                raise _too_big(entry, index, cap)
        return bytes(content), kind

    # -- fresh URLs -------------------------------------------------------------------------

    def _renewed(self, entry: Entry, index: int, *, force: bool) -> FileRef:
        """The file's URL from a read of the job's data layer no older than its URLs' life."""
        with self._fresh_lock:
            found = self._renewed_files(entry, force=force)
        if index >= len(found):
            raise _refused(entry, "receipt_download_failure", f"Pleo no longer lists file {index}")
        return found[index]

    def _renewed_files(self, entry: Entry, *, force: bool) -> list[FileRef]:
        job_id, entry_id = entry.job_id, entry.accounting_entry_id
        kept = self._fresh.get(job_id)
        now = self._clock()
        if force or kept is None or now >= self._settings.renew_at(kept[0]):
            files: dict[str, list[FileRef]] = {}
            for page in self._pleo.iter_export_items(job_id):
                for item in page.items:
                    probe = Entry(item.accounting_entry_id, job_id, None, 0, None, item.payload)
                    try:
                        files[item.accounting_entry_id] = files_of(probe)
                    except EntryRejected:
                        files[item.accounting_entry_id] = []
            kept = (now, files)
            self._fresh[job_id] = kept
            while len(self._fresh) > _FRESH_JOBS:
                self._fresh.popitem(last=False)
            log.info("receipt_urls_renewed job_id=%s entries=%d", job_id, len(files))
        self._fresh.move_to_end(job_id)
        return kept[1].get(entry_id, [])


class _UrlExpired(Exception):
    """The file's URL was refused as expired (401, 403, 410)."""


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _too_big(entry: Entry, index: int, cap: int) -> EntryRejected:
    return _refused(
        entry, "receipt_file_size_limit_exceeded", f"file {index} is over the limit of {cap} bytes"
    )


def _refused(entry: Entry, reason_type: Any, why: str) -> EntryRejected:
    """The entry's refusal: one sentence naming the receipt, never its URL."""
    why = why.rstrip(".")
    return EntryRejected(
        reason_type, f"The receipt of entry {entry.accounting_entry_id} was not transferred: {why}."
    )
