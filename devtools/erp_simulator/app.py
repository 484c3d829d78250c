"""The ERP simulator's ASGI app: the ``/journal`` routes wrapped in auth, limits, latency, faults.

Every ``/journal`` call goes through the same steps: count it; check the bearer token (401);
ask for admission (the forced pause, the concurrency cap, the rate limit: 429 with
``Retry-After``); wait ``latency`` seconds (``asyncio.sleep``, so calls overlap and the cap can
bite); draw a fault (``fail_status``, or a hang of ``hang`` seconds); run the handler; count the
answer. ``/_sim/`` is the control API (``control``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools import oauth_server
from devtools.erp_simulator import control
from devtools.erp_simulator.attachments import upload
from devtools.erp_simulator.journal import Refusal, check_entry
from devtools.erp_simulator.state import ErpSimState, Outcome


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] | None = None


Handler = Callable[[ErpSimState, Request, bytes], Reply]


def create_app(state: ErpSimState) -> Starlette:
    """The ERP simulator as an ASGI app serving ``state``."""

    def journal(endpoint: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            reply = await _serve(state, endpoint, handler, request)
            state.answered(reply.status)
            return JSONResponse(reply.body, reply.status, reply.headers)

        return run

    routes = [
        Route("/journal/entries", journal("post", post_entry), methods=["POST"]),
        Route("/journal/batch", journal("batch", post_batch), methods=["POST"]),
        Route("/journal/entries", journal("lookup", lookup), methods=["GET"]),
        *control.routes(state),
        # Receipts (attachments.py): uploads through the same auth, limits and faults.
        Route("/journal/attachments", _attach_route(state), methods=["POST"]),
        *state.attachments.routes(),
        # OAuth (devtools/oauth_server.py): the ERP's authorize and token endpoints, when enabled.
        *oauth_server.routes(lambda: state.oauth),
    ]
    return Starlette(routes=routes)


async def _serve(state: ErpSimState, endpoint: str, handler: Handler, request: Request) -> Reply:
    body = await request.body()
    state.called(endpoint)
    config = state.config
    if state.oauth is not None and not state.oauth.accepts(request.headers.get("authorization")):
        return Reply(401, _error("authorization_failure", "Missing or expired access token."))
    if config.token is not None and not _authorized(request, config.token):
        return Reply(401, _error("authorization_failure", "Missing or invalid bearer token."))
    admission = state.admit()
    if not admission.admitted:
        headers = {"Retry-After": state.retry_after_header(admission.retry_after)}
        return Reply(429, _error("accounting_system_rate_limit", "Too many requests."), headers)
    try:
        if config.latency > 0:
            await asyncio.sleep(config.latency)
        fault = state.draw_fault()
        if fault == "fail":
            return Reply(config.fail_status, _error("unexpected_failure", "Injected failure."))
        if fault == "timeout":
            # Booked first (or not), then held: the client's timeout fires before any answer.
            reply = handler(state, request, body) if config.timeout_books else None
            await _hang(request, config.hang)
            return reply or Reply(504, _error("accounting_system_timeout", "Injected timeout."))
        return handler(state, request, body)
    finally:
        state.release()


def _attach_route(state: ErpSimState) -> Callable[[Request], Awaitable[Response]]:
    async def attach(request: Request) -> Response:
        reply = await _serve(state, "attach", _admitted, request)
        if reply.status == 0:
            status, body = await upload(state.attachments, request, await request.body())
            reply = Reply(status, body)
        state.answered(reply.status)
        return JSONResponse(reply.body, reply.status, reply.headers)

    return attach


def _admitted(state: ErpSimState, request: Request, raw: bytes) -> Reply:
    """An upload past auth, limits and faults: stored by ``attachments.upload``, async."""
    return Reply(0, None)


def post_entry(state: ErpSimState, request: Request, raw: bytes) -> Reply:
    """``POST /journal/entries``: one entry, booked once per ``Idempotency-Key``."""
    try:
        body = json.loads(raw)
    except ValueError:
        return Reply(400, _error("accounting_system_validation_failure", "The body is not JSON."))
    checked = check_entry(body, state.config)
    if checked.accounting_entry_id is None:
        assert checked.refusal is not None
        return Reply(400, _refusal_body(None, checked.refusal))
    key = request.headers.get("idempotency-key")
    outcome = state.post(checked.accounting_entry_id, key, checked.refusal, "entries")
    if outcome.booking is not None:
        return Reply(201, outcome.booking.to_json(_base(request)))
    assert outcome.refusal is not None
    return Reply(422, _refusal_body(outcome.accounting_entry_id, outcome.refusal))


def post_batch(state: ErpSimState, request: Request, raw: bytes) -> Reply:
    """``POST /journal/batch``: up to ``batch_max`` entries, one outcome each, in order."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        why = 'The body must be {"entries": [...]} with at least one entry.'
        return Reply(400, _error("accounting_system_validation_failure", why))
    config = state.config
    if len(entries) > config.batch_max:
        why = f"A batch takes at most {config.batch_max} entries, not {len(entries)}."
        return Reply(413, _error("accounting_system_validation_failure", why))
    key_field = config.name("idempotencyKey")
    results = []
    for entry in entries:
        checked = check_entry(entry, config)
        if checked.accounting_entry_id is None:
            assert checked.refusal is not None
            results.append({**_refusal_body(None, checked.refusal), "status": "rejected"})
            continue
        key = entry.get(key_field)
        key = key if isinstance(key, str) and key else None
        outcome = state.post(checked.accounting_entry_id, key, checked.refusal, "batch")
        results.append(_result(outcome, _base(request)))
    return Reply(200, {"results": results})


def lookup(state: ErpSimState, request: Request, raw: bytes) -> Reply:
    """``GET /journal/entries?accountingEntryId=X``: the entry's bookings, oldest first."""
    param = state.config.name("accountingEntryId")
    entry_id = request.query_params.get(param)
    if not entry_id:
        return Reply(400, _error("accounting_system_validation_failure", f"Give ?{param}=."))
    base = _base(request)
    return Reply(200, {"data": [booking.to_json(base) for booking in state.find(entry_id)]})


def _result(outcome: Outcome, base: str) -> dict[str, Any]:
    if outcome.booking is not None:
        return {**outcome.booking.to_json(base), "status": "booked"}
    assert outcome.refusal is not None
    return {**_refusal_body(outcome.accounting_entry_id, outcome.refusal), "status": "rejected"}


def _refusal_body(entry_id: str | None, refusal: Refusal) -> dict[str, Any]:
    return {
        "accountingEntryId": entry_id,
        "reasonType": refusal.reason_type,
        "reason": refusal.reason,
    }


def _error(reason_type: str, reason: str) -> dict[str, Any]:
    return {"reasonType": reason_type, "reason": reason}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.strip().encode(), token.encode())


async def _hang(request: Request, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if the client hangs up first (its timeout fired)."""

    async def hangup() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(hangup(), timeout=delay)
    except TimeoutError:
        return
