"""The ``/_sim/`` control API of the ERP simulator: what tests and the demo read and change.

Not part of any ERP's API, and unauthenticated: never expose the simulator beyond a test machine.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.erp_simulator.state import ErpSimState


def routes(state: ErpSimState) -> list[Route]:
    """The control routes bound to ``state``."""

    async def bookings(request: Request) -> Response:
        data = [
            {
                "accountingEntryId": b.accounting_entry_id,
                "id": b.id,
                "bookedAt": b.booked_at,
                "via": b.via,
            }
            for b in state.bookings()
        ]
        return JSONResponse({"data": data})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def get_config(request: Request) -> Response:
        return JSONResponse(state.config.to_json())

    async def patch_config(request: Request) -> Response:
        try:
            state.configure(state.config.patched(await _object(request)))
        except (TypeError, ValueError) as failure:
            return _bad(failure)
        return JSONResponse(state.config.to_json())

    async def pause(request: Request) -> Response:
        try:
            body = await _object(request)
            retry_after, seconds = _seconds(body, "retry_after"), _seconds(body, "seconds")
        except (TypeError, ValueError) as failure:
            return _bad(failure)
        state.pause(retry_after, seconds)
        return JSONResponse({"retry_after": retry_after, "seconds": seconds})

    async def reset(request: Request) -> Response:
        state.reset()
        return Response(status_code=204)

    return [
        Route("/_sim/bookings", bookings, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", patch_config, methods=["PATCH"]),
        Route("/_sim/pause", pause, methods=["POST"]),
        Route("/_sim/reset", reset, methods=["POST"]),
    ]


async def _object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or ``ValueError``/``TypeError``."""
    payload = json.loads(await request.body() or b"{}")
    if not isinstance(payload, dict):
        raise TypeError("Body must be a JSON object.")
    return payload


def _seconds(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds.")
    if value < 0:
        raise ValueError(f"{name} must not be negative.")
    return float(value)


def _bad(failure: Exception) -> Response:
    return JSONResponse({"reasonType": "bad_request", "reason": str(failure)}, status_code=400)
