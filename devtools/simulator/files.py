"""The simulator's receipt files: URLs that expire, real bytes behind them.

Once serving (``serving``, on as soon as any knob is set: off, the items keep the seeded
``https://files.pleo.io/...`` URLs, so the pages are the same on every fetch), every
``GET /v3/export-items`` answer has each item's ``files[].url`` replaced by a URL of this
simulator, ``/files/{entry}/{n}?size=&type=&expires=&sig=``, signed (keyed BLAKE2b) and good for
``lifetime`` seconds from that fetch (Pleo: 24 h), as Pleo's are. A fetch after ``expires``, or a
URL whose signature does not match, is answered 403, as an expired presigned URL is. The bytes
are deterministic for (entry, n) and as many as the URL says; a PDF starts with ``%PDF-``.

Knobs (``ReceiptFiles`` attributes, or ``PATCH /_sim/receipts``): ``serving``; ``lifetime``;
``size`` (bytes served and declared for every file, None: the item's own declared size);
``declared_size`` (what ``files[].size`` says, when it should lie); ``content_type`` (the declared
type); ``served_type`` (the ``Content-Type`` answered); ``fail_next`` (that many downloads answer
503 first). Counts: ``downloads``, ``expired`` (403s), ``failed`` (503s).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

JsonObject = dict[str, Any]
_KNOBS = (
    "serving",
    "lifetime",
    "size",
    "declared_size",
    "content_type",
    "served_type",
    "fail_next",
)


class ReceiptFiles:
    """The receipt files the simulator serves (see the module docstring); thread-safe."""

    def __init__(self, *, lifetime: float = 24 * 3600.0, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self.serving = False
        self.lifetime = lifetime
        self.size: int | None = None
        self.declared_size: int | None = None
        self.content_type: str | None = None
        self.served_type: str | None = None
        self.fail_next = 0
        self.downloads = 0
        self.expired = 0
        self.failed = 0

    def configure(self, **changes: Any) -> None:
        """Set knobs by name, serving the files from then on unless ``serving=False`` is among
        them; ValueError for an unknown one or a bad value."""
        unknown = set(changes) - set(_KNOBS)
        if unknown:
            raise ValueError(f"No such receipt setting: {', '.join(sorted(unknown))}.")
        for name in ("lifetime",):
            if name in changes and not (
                isinstance(changes[name], int | float) and changes[name] > 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds.")
        with self._lock:
            self.serving = True
            for name, value in changes.items():
                setattr(self, name, value)

    def counts(self) -> dict[str, int]:
        """Downloads served, refused as expired, failed on purpose."""
        with self._lock:
            return {"downloads": self.downloads, "expired": self.expired, "failed": self.failed}

    # -- the URLs in export items -------------------------------------------------------------

    def rewrite(self, body: Any, base_url: str) -> Any:
        """An export-items page with each file's URL one of ours, expiring ``lifetime`` from now."""
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return body
        expires = int(self._clock() + self.lifetime)
        data = []
        for item in body["data"]:
            files = item.get("files") if isinstance(item, dict) else None
            if not files:
                data.append(item)
                continue
            entry_id = str(item.get("accountingEntryId"))
            new = [self._file(base_url, entry_id, n, f, expires) for n, f in enumerate(files)]
            data.append({**item, "files": new})
        return {**body, "data": data}

    def _file(self, base: str, entry_id: str, n: int, file: JsonObject, expires: int) -> JsonObject:
        # Every export-items page goes through here: a few ms for a 1,000-item page, no more.
        size = self.size if self.size is not None else int(file.get("size") or 0)
        kind = self.content_type or str(file.get("type") or "application/pdf")
        sig = self._sign(entry_id, n, size, kind, expires)
        url = (
            f"{base}/files/{entry_id}/{n}?size={size}"
            f"&type={_quoted(kind)}&expires={expires}&sig={sig}"
        )
        declared = self.declared_size if self.declared_size is not None else size
        return {**file, "url": url, "type": kind, "size": declared}

    def _sign(self, entry_id: str, n: int, size: int, kind: str, expires: int) -> str:
        text = f"{entry_id}/{n}?size={size}&type={kind}&expires={expires}".encode()
        return hashlib.blake2b(text, key=self._secret, digest_size=16).hexdigest()

    # -- serving ------------------------------------------------------------------------------

    async def serve(self, request: Request) -> Response:
        """``GET /files/{entry}/{n}``: the bytes, 403 once expired or forged, 503 when told."""
        entry_id, n = request.path_params["entry_id"], int(request.path_params["n"])
        params = request.query_params
        try:
            size, kind, expires = int(params["size"]), params["type"], int(params["expires"])
        except (KeyError, ValueError):
            return JSONResponse({"message": "Not a receipt URL."}, status_code=404)
        sig = self._sign(entry_id, n, size, kind, expires)
        good = hmac.compare_digest(sig, params.get("sig", ""))
        with self._lock:
            if not good or self._clock() >= expires:
                self.expired += 1
                return Response(b"<Error>Request has expired</Error>", 403)
            if self.fail_next > 0:
                self.fail_next -= 1
                self.failed += 1
                return Response(b"unavailable", 503)
            self.downloads += 1
            served_type = self.served_type or kind
        return Response(content_of(entry_id, n, size), 200, media_type=served_type)

    def routes(self) -> list[Route]:
        """The download route and its control route."""

        async def patch(request: Request) -> Response:
            try:
                self.configure(**(await request.json()))
            except (TypeError, ValueError) as failure:
                return JSONResponse({"message": str(failure)}, status_code=400)
            return JSONResponse(self.counts())

        async def counts(request: Request) -> Response:
            return JSONResponse(self.counts())

        return [
            Route("/files/{entry_id}/{n:int}", self.serve, methods=["GET"]),
            Route("/_sim/receipts", patch, methods=["PATCH"]),
            Route("/_sim/receipts", counts, methods=["GET"]),
        ]


@functools.cache
def _quoted(text: str) -> str:
    return quote(text, safe="")


def content_of(entry_id: str, n: int, size: int) -> bytes:
    """The bytes of file ``n`` of ``entry_id``: ``size`` of them, the same on every download."""
    block = hashlib.sha256(f"{entry_id}:{n}".encode()).digest()
    head = b"%PDF-1.4\n"
    body = head + block * (size // len(block) + 1)
    return body[:size]
