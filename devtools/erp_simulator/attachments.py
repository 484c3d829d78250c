"""The simulated ERP's attachments: receipts uploaded to booked entries, once per key.

``POST /journal/attachments`` (through the journal's auth, limits, latency and faults) takes a
file's bytes with the headers ``consumers/erp_http.py`` sends. The first upload of an
``Idempotency-Key`` is stored; a replay answers the first upload's id and stores nothing
(``replays``). Faults, set by ``PATCH /_sim/attachments``: ``fail_next`` uploads answer 503
before storing; ``lose_next`` are stored, then answered 503 (the answer lost, not the upload);
``hold`` seconds each upload waits after storing, before answering (a worker killed meanwhile);
``refuse`` answers 422 (the ERP will never take it). ``GET /_sim/attachments`` lists them
(without bytes) with the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_KNOBS = ("fail_next", "lose_next", "hold", "refuse")


@dataclass(frozen=True, slots=True)
class Stored:
    """One attachment the ERP keeps."""

    id: str
    key: str
    accounting_entry_id: str
    external_id: str
    file_index: int
    content_type: str
    size: int
    sha256: str


class AttachmentStore:
    """Every attachment uploaded, and the upload faults; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every attachment, count and fault."""
        with getattr(self, "_lock", threading.Lock()):
            self._by_key: dict[str, Stored] = {}
            self._stored: list[Stored] = []
            self.uploads = 0
            self.replays = 0
            self.fail_next = 0
            self.lose_next = 0
            self.hold = 0.0
            self.refuse = False

    def configure(self, changes: dict[str, Any]) -> None:
        """Set fault knobs by name; ValueError for an unknown one."""
        if not isinstance(changes, dict):
            raise TypeError("Body must be a JSON object.")
        unknown = set(changes) - set(_KNOBS)
        if unknown:
            raise ValueError(f"No such attachment setting: {', '.join(sorted(unknown))}.")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def upload(self, key: str, meta: dict[str, Any], content: bytes) -> tuple[str, Stored | None]:
        """Store an upload unless its key is known: (fault or "ok", what the key stands for)."""
        with self._lock:
            self.uploads += 1
            if self.refuse:
                return "refuse", None
            if self.fail_next > 0:
                self.fail_next -= 1
                return "fail", None
            known = self._by_key.get(key)
            if known is not None:
                self.replays += 1
                return "ok", known
            stored = Stored(
                id=f"AT-{len(self._stored) + 1:06d}",
                key=key,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                **meta,
            )
            self._by_key[key] = stored
            self._stored.append(stored)
            if self.lose_next > 0:
                self.lose_next -= 1
                return "lose", stored
            return "ok", stored

    def stored(self) -> list[Stored]:
        """Every attachment kept, in upload order."""
        with self._lock:
            return list(self._stored)

    def view(self) -> dict[str, Any]:
        """What ``GET /_sim/attachments`` shows."""
        with self._lock:
            return {
                "data": [asdict(s) for s in self._stored],
                "uploads": self.uploads,
                "replays": self.replays,
            }

    def routes(self) -> list[Route]:
        """The control routes of the attachments."""

        async def view(request: Request) -> Response:
            return JSONResponse(self.view())

        async def patch(request: Request) -> Response:
            try:
                self.configure(json.loads(await request.body() or b"{}"))
            except (TypeError, ValueError) as failure:
                return JSONResponse({"reason": str(failure)}, status_code=400)
            return JSONResponse(self.view())

        return [
            Route("/_sim/attachments", view, methods=["GET"]),
            Route("/_sim/attachments", patch, methods=["PATCH"]),
        ]


async def upload(store: AttachmentStore, request: Request, raw: bytes) -> tuple[int, Any]:
    """``POST /journal/attachments``: (status, JSON body)."""
    headers = request.headers
    key = headers.get("idempotency-key")
    entry_id = headers.get("x-accounting-entry-id")
    if not key or not entry_id or not raw:
        why = "An upload needs Idempotency-Key, X-Accounting-Entry-Id and a body."
        return 400, {"reasonType": "receipt_upload_failure", "reason": why}
    try:
        index = int(headers.get("x-file-index", "0"))
    except ValueError:
        index = 0
    meta = {
        "accounting_entry_id": entry_id,
        "external_id": headers.get("x-entry-external-id", ""),
        "file_index": index,
        "content_type": headers.get("content-type", "application/octet-stream"),
    }
    fault, stored = store.upload(key, meta, raw)
    if fault == "refuse":
        return 422, {"reasonType": "receipt_upload_failure", "reason": "Injected refusal."}
    if fault == "fail":
        return 503, {"reasonType": "unexpected_failure", "reason": "Injected failure."}
    if store.hold > 0:
        await asyncio.sleep(store.hold)
    if fault == "lose":
        return 503, {"reasonType": "unexpected_failure", "reason": "Injected lost answer."}
    assert stored is not None
    return 201, {"id": stored.id, "sha256": stored.sha256}
