"""The simulator's ASGI app: Pleo's ``/v3`` routes wrapped in latency, auth, faults, call records.

Every ``/v3`` request goes through the same steps: read the body, wait ``state.latency`` seconds
(``asyncio.sleep``, so concurrent requests overlap), check the credential (401 before any fault is
counted), evaluate the fault rules, run the handler unless a fault answered instead, distort the
answer if a fault says so, record the call, send it. ``/_sim/`` is the control API (``control``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from devtools import oauth_server
from devtools.simulator import control, handlers
from devtools.simulator.auth import authorized
from devtools.simulator.faults import (
    DISTORTING_KINDS,
    Firing,
    break_schema,
    distort_page,
    error_body,
    hold_back_updates,
)
from devtools.simulator.handlers import Handler, Reply
from devtools.simulator.records import Call, JsonObject
from devtools.simulator.state import SimState

logger = logging.getLogger(__name__)

MEDIA_TYPE: Final = "application/json;charset=UTF-8"
_TRANSPORT_KEY: Final = "pleo_simulator.transport"


class SimulatorApp(Starlette):
    """Starlette, plus a handle on the server's connection so a ``drop`` fault can cut it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Remember the transport behind uvicorn's ``send`` (absent under other servers)."""
        scope[_TRANSPORT_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


def create_app(state: SimState) -> Starlette:
    """The simulator as an ASGI app serving ``state``."""

    def pleo(endpoint: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            return await _serve(state, endpoint, handler, request)

        return run

    routes = [
        Route("/v3/export-jobs", pleo("jobs", handlers.list_jobs), methods=["GET"]),
        Route("/v3/export-jobs/{job_id}", pleo("job", handlers.get_job), methods=["GET"]),
        Route("/v3/export-job-events", pleo("job_events", handlers.post_event), methods=["POST"]),
        Route(
            "/v3/export-jobs/{job_id}/items",
            pleo("job_items", handlers.get_job_items),
            methods=["GET"],
        ),
        Route(
            "/v3/export-jobs/{job_id}/items",
            pleo("job_items_put", handlers.put_job_items),
            methods=["PUT"],
        ),
        Route("/v3/export-items", pleo("export_items", handlers.get_export_items), methods=["GET"]),
        *control.routes(state),
        # Receipt files behind the export items' URLs, and their knobs (files.py).
        *state.receipts.routes(),
        # OAuth (devtools/oauth_server.py): Pleo's authorize and token endpoints, when enabled.
        *oauth_server.routes(lambda: state.oauth),
    ]
    return SimulatorApp(routes=routes)


async def _serve(state: SimState, endpoint: str, handler: Handler, request: Request) -> Response:
    """Run one ``/v3`` request through latency, auth, faults, the handler, and the call record."""
    body = await request.body()
    if state.latency > 0:
        await asyncio.sleep(state.latency)
    firings: tuple[Firing, ...] = ()
    if not _authorized(state, request.headers.get("authorization")):
        body_401 = {"type": "UNAUTHORIZED", "message": "Missing or invalid credentials."}
        reply = Reply(401, body_401, {"WWW-Authenticate": 'Bearer, Basic realm="pleo"'})
    else:
        firings = state.evaluate_faults(endpoint)
        for firing in firings:
            if firing.rule.kind == "timeout":
                await _wait_for_hangup(request, firing.rule.delay)
        answering = next((f for f in firings if f.rule.kind in {"status", "rate_limit"}), None)
        if any(f.rule.kind == "drop" for f in firings) and await _drop(request):
            _record(state, endpoint, request, body, status=0, firings=firings)
            return Response(status_code=204)
        held: list[JsonObject] = []
        if any(f.rule.kind == "item_errors" for f in firings):
            body, held = hold_back_updates(body)
        reply = _fault_reply(answering) if answering else handler(state, request, body)
        if held and reply.status == 200:
            reply = Reply(200, {**reply.body, "errors": [*reply.body["errors"], *held]})
        reply = _distort(reply, firings, endpoint)
        if endpoint == "export_items" and reply.status == 200 and state.receipts.serving:
            base = str(request.base_url).rstrip("/")
            reply = Reply(200, state.receipts.rewrite(reply.body, base), reply.headers, reply.page)
    # orjson: a 1,000-item page of export items is 2.5 MB, which json.dumps takes ~30 ms to write;
    # the simulator's own cost would otherwise swamp the latency a benchmark sets.
    raw = b"" if reply.body is None else orjson.dumps(reply.body)
    if any(f.rule.kind == "truncated" for f in firings):
        raw = raw[: len(raw) // 2]
    _record(state, endpoint, request, body, status=reply.status, firings=firings)
    media = MEDIA_TYPE if reply.body is not None else None
    return Response(raw, reply.status, dict(reply.headers), media_type=media)


def _authorized(state: SimState, header: str | None) -> bool:
    """With OAuth on, a Bearer token must be a live access token it issued; else as configured."""
    if state.oauth is not None and (header or "").strip().lower().startswith("bearer"):
        return state.oauth.accepts(header)
    return authorized(header, token=state.token, api_key=state.api_key)


def _fault_reply(firing: Firing) -> Reply:
    """The answer of a ``status`` or ``rate_limit`` fault."""
    rule = firing.rule
    if rule.kind == "status":
        return Reply(rule.status, error_body(rule.status))
    headers = {} if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
    return Reply(429, error_body(429), headers)


def _distort(reply: Reply, firings: tuple[Firing, ...], endpoint: str) -> Reply:
    """Apply the page-mutating faults to a successful answer."""
    body = reply.body
    if reply.status != 200:
        return reply
    for firing in firings:
        kind = firing.rule.kind
        if kind == "schema":
            body = break_schema(firing, body, endpoint)
        elif kind in DISTORTING_KINDS and reply.page is not None:
            page = reply.page
            body = distort_page(firing, body, page.restart_cursor, page.previous_entry)
    return Reply(reply.status, body, reply.headers, reply.page)


async def _wait_for_hangup(request: Request, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if the client hangs up first (its timeout fired)."""

    async def hangup() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(hangup(), timeout=delay)
    except TimeoutError:
        return


async def _drop(request: Request) -> bool:
    """Close the connection without answering; False where the server gives no transport."""
    transport = request.scope.get(_TRANSPORT_KEY)
    if not isinstance(transport, asyncio.Transport):
        logger.warning(
            "sim_drop_unsupported path=%s (no transport; answering normally)", request.url.path
        )
        return False
    transport.abort()
    # Wait for the server to notice, so it neither answers nor logs a missing response.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    return True


def _record(
    state: SimState,
    endpoint: str,
    request: Request,
    body: bytes,
    *,
    status: int,
    firings: tuple[Firing, ...],
) -> None:
    """Add the answered request to ``state.calls``."""
    params = request.query_params
    items = None
    if endpoint == "job_items_put":
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        items = len(payload) if isinstance(payload, list) else None
    state.record(
        Call(
            method=request.method,
            path=request.url.path,
            query={name: ",".join(params.getlist(name)) for name in params},
            status=status,
            endpoint=endpoint,
            items=items,
            fault=",".join(f.rule.kind for f in firings) or None,
        )
    )
    logger.debug("sim_call %s %s status=%d", request.method, request.url.path, status)
