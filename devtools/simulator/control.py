"""The ``/_sim/`` control API: lets other processes (the demo, docker-compose) drive the simulator.

Not part of Pleo's API, and unauthenticated: never expose a simulator beyond a test machine.

- ``POST /_sim/jobs``: a JSON object of ``JobSpec`` fields (snake_case) → 201 with the job view
- ``GET /_sim/jobs/{id}``: the job view: ``ExportJobV3`` fields, ``events``, ``itemStatusCounts``
- ``POST /_sim/faults``: a JSON object of ``FaultRule`` fields → 201 with the active rules
- ``GET /_sim/faults`` / ``DELETE /_sim/faults``: the rules (with fire counts) / remove them all
- ``GET /_sim/calls`` / ``DELETE /_sim/calls``: the recorded ``/v3`` requests / forget them
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.simulator.data import JobSpec
from devtools.simulator.faults import FaultRule
from devtools.simulator.records import JsonObject
from devtools.simulator.state import SimState, UnknownJob


def job_view(state: SimState, job_id: str) -> JsonObject:
    """A job as the control API shows it: ``ExportJobV3`` plus its events and item status counts."""
    job = state.job(job_id)
    return {
        **job.to_json(),
        "events": [event.to_json() for event in job.events],
        "itemStatusCounts": state.item_counts(job_id),
        "exportItems": len(state.export_items(job_id)),
    }


def routes(state: SimState) -> list[Route]:
    """The control routes bound to ``state``."""

    async def add_job(request: Request) -> Response:
        try:
            spec = JobSpec(**await _object(request))
            job_id = state.add_job(spec)
        except (TypeError, ValueError) as failure:
            return _bad(failure)
        return JSONResponse(job_view(state, job_id), status_code=201)

    async def get_job(request: Request) -> Response:
        try:
            return JSONResponse(job_view(state, request.path_params["job_id"]))
        except UnknownJob:
            return JSONResponse({"type": "NOT_FOUND", "message": "No such job."}, status_code=404)

    async def add_fault(request: Request) -> Response:
        try:
            state.add_fault(FaultRule(**await _object(request)))
        except (TypeError, ValueError) as failure:
            return _bad(failure)
        return JSONResponse(_faults(state), status_code=201)

    async def list_faults(request: Request) -> Response:
        return JSONResponse(_faults(state))

    async def clear_faults(request: Request) -> Response:
        state.clear_faults()
        return Response(status_code=204)

    async def list_calls(request: Request) -> Response:
        return JSONResponse({"data": [call.to_json() for call in state.calls]})

    async def clear_calls(request: Request) -> Response:
        state.clear_calls()
        return Response(status_code=204)

    return [
        Route("/_sim/jobs", add_job, methods=["POST"]),
        Route("/_sim/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/_sim/faults", add_fault, methods=["POST"]),
        Route("/_sim/faults", list_faults, methods=["GET"]),
        Route("/_sim/faults", clear_faults, methods=["DELETE"]),
        Route("/_sim/calls", list_calls, methods=["GET"]),
        Route("/_sim/calls", clear_calls, methods=["DELETE"]),
    ]


async def _object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or ``ValueError``."""
    payload = json.loads(await request.body() or b"{}")
    if not isinstance(payload, dict):
        raise TypeError("Body must be a JSON object.")
    return payload


def _faults(state: SimState) -> JsonObject:
    return {"data": [{**dataclasses.asdict(rule), "fired": fired} for rule, fired in state.faults]}


def _bad(failure: Exception) -> Response:
    return JSONResponse({"type": "BAD_REQUEST", "message": str(failure)}, status_code=400)
