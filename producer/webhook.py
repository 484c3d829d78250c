"""The webhook receiver: verify Pleo's delivery, drop repeats, enqueue the producer, answer 202.

``POST /webhooks/pleo`` answers within milliseconds and never calls Pleo: it reads at most 1 MiB,
checks the Standard Webhooks signature (401), the event's shape (400), marks the delivery's
``webhook-id`` so a redelivery enqueues nothing (202 ``duplicate``), and hands
``v1.export-job.created`` to ``triggers.enqueue`` (202 ``enqueued`` or ``deduplicated``). Other
event types are acknowledged and ignored without touching Redis. When Redis or the broker is
down it answers 503 and forgets the delivery, so Pleo's retry is processed. ``GET /healthz``
says the process is up; ``GET /readyz`` says whether Redis and the broker answer; ``GET /metrics``
serves Prometheus's text format (the fleet's active-job gauges and this process's counters).

Redis keys (on ``settings.ledger_url``; the job keys are listed in ``contract/keys.py``):

    pleo-export:webhook:{webhook-id}   the job id of an accepted delivery; SET NX EX 24 h, longer
                                       than Pleo's retry schedule of one delivery; deleted when the
                                       enqueue fails (503), so the retry is not taken for a repeat

Every log line names the webhook id and the job id (``-`` while unknown); none carries the
secret or a signature.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis
from celery import Celery
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.errors import BadInput, BrokerUnavailable
from contract.ids import is_uuid
from contract.keys import webhook_delivery_key
from contract.metrics_endpoint import render
from contract.settings import Settings
from producer import serving, signature, triggers
from producer.endpoints import (
    Backends,
    error,
    healthz,
    http_error,
    json_object,
    read_capped,
    readiness,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
MIN_SECRET_BYTES: Final = 24
_PLACEHOLDER = re.compile(
    r"(change|replace)[-_]?me|example|placeholder|your[-_]?secret|x{4,}", re.IGNORECASE
)
DELIVERY_TTL_SECONDS: Final = 24 * 3600
EXPORT_JOB_CREATED: Final = "v1.export-job.created"


@dataclass(frozen=True, slots=True)
class ExportJobCreated:
    """A checked ``v1.export-job.created`` event: the job to produce and its company."""

    job_id: str
    company_id: str | None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A well-formed event of a type this receiver does not act on."""

    event_type: str
    job_id: str | None


class BadPayload(BadInput):
    """The signed body is not an event this receiver can read (answered 400)."""


def parse_event(body: bytes) -> ExportJobCreated | OtherEvent:
    """Decide what a verified body asks for; a malformed one raises BadPayload."""
    event = json_object(body, BadPayload)
    event_type = event.get("eventType")
    if not isinstance(event_type, str):
        raise BadPayload("eventType is missing or not a string")
    data = event.get("data")
    job_id = _uuid_or_none(data.get("id")) if isinstance(data, dict) else None
    if event_type != EXPORT_JOB_CREATED:
        return OtherEvent(event_type, job_id)
    if not isinstance(data, dict):
        raise BadPayload("data is missing or not an object")
    if job_id is None:
        raise BadPayload("data.id is missing or not a UUID")
    raw_company = data.get("companyId")
    company_id = _uuid_or_none(raw_company)
    if raw_company is not None and company_id is None:
        raise BadPayload("data.companyId is not a UUID", job_id=job_id)
    return ExportJobCreated(job_id, company_id)


def _uuid_or_none(value: object) -> str | None:
    """``value`` lower-cased when it is a UUID string, else None."""
    return value.lower() if isinstance(value, str) and is_uuid(value) else None


def check_secret(secret: str | None) -> str:
    """The secret, if it is a usable ``whsec_<base64>`` one; else BadInput in one sentence.

    Standard Webhooks keys are 24 to 64 bytes; a shorter one, or a placeholder left from
    ``.env.example``, would let anyone who guesses it sign deliveries.
    """
    if not secret:
        raise BadInput("PLEO_WEBHOOK_SECRET is not set, so webhook deliveries cannot be verified.")
    try:
        key = signature.decode_secret(secret)
    except signature.SignatureInvalid:
        raise BadInput("PLEO_WEBHOOK_SECRET is not a whsec_<base64> secret.") from None
    if _PLACEHOLDER.fullmatch(secret.removeprefix("whsec_")):
        raise BadInput(
            "PLEO_WEBHOOK_SECRET is a placeholder: set it to the subscription's secret "
            "(GET /v1/subscriptions/{id}/secret)."
        )
    if len(key) < MIN_SECRET_BYTES:
        raise BadInput(
            f"PLEO_WEBHOOK_SECRET's key is {len(key)} bytes, shorter than the {MIN_SECRET_BYTES} "
            "a webhook secret has: set it to the subscription's secret."
        )
    return secret


def create_app(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    celery_app: Celery | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The receiver as an ASGI app; clients it creates itself are closed at lifespan shutdown."""
    secret = check_secret(settings.webhook_secret)
    backends = Backends.open(settings, redis_client, celery_app)
    receiver = _Receiver(settings, secret, backends, clock)
    return Starlette(
        routes=[
            # With or without a trailing slash, as a subscription's URL may be written: a redirect
            # would be a delivery failure to Pleo (Standard Webhooks count a 3xx as one).
            Route("/webhooks/pleo", receiver.deliver, methods=["POST"]),
            Route("/webhooks/pleo/", receiver.deliver, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", receiver.ready, methods=["GET"]),
            Route("/metrics", receiver.metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=backends.lifespan,
    )


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the receiver on ``host:port`` until stopped (what ``pleo-export webhook`` runs).

    ``on_listening`` hears the delivery URL once the socket is bound.
    """
    check_secret(settings.webhook_secret)
    serving.serve(
        lambda: create_app(settings),
        host,
        port,
        name="webhook",
        path="/webhooks/pleo",
        fields="webhook_id=- job_id=-",
        on_listening=on_listening,
    )


class _Receiver:
    """The request handlers, bound to their settings, clients and clock."""

    def __init__(
        self,
        settings: Settings,
        secret: str,
        backends: Backends,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._secret = secret
        self._backends = backends
        self._redis = backends.rdb
        self._app = backends.celery
        self._clock = clock

    async def deliver(self, request: Request) -> Response:
        """``POST /webhooks/pleo``: verify, dedupe, enqueue; see the module docstring."""
        shown_id = _shown(request.headers.get(signature.ID_HEADER))
        body = await read_capped(request, MAX_BODY_BYTES)
        if body is None:
            log.warning("webhook_too_large webhook_id=%s job_id=- status=413", shown_id)
            return error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            signature.verify(request.headers, body, self._secret, now=self._clock())
        except signature.SignatureInvalid as exc:
            log.warning(
                "webhook_rejected webhook_id=%s job_id=- status=401 reason=%s",
                shown_id,
                exc.reason,
            )
            return error(401, exc.reason)
        # Verified: the id is now printable ASCII, and signed.
        webhook_id = request.headers[signature.ID_HEADER]
        try:
            event = parse_event(body)
        except BadPayload as exc:
            log.warning(
                "webhook_bad_payload webhook_id=%s job_id=%s status=400 reason=%s",
                webhook_id,
                exc.job_id or "-",
                exc.message,
            )
            return error(400, exc.message)
        if isinstance(event, OtherEvent):
            log.info(
                "webhook_ignored webhook_id=%s job_id=%s event_type=%s",
                webhook_id,
                event.job_id or "-",
                _shown(event.event_type),
            )
            return JSONResponse({"status": "ignored"}, status_code=202)
        return await self._enqueue(webhook_id, event)

    async def _enqueue(self, webhook_id: str, event: ExportJobCreated) -> Response:
        job_id = event.job_id
        key = webhook_delivery_key(webhook_id)
        try:
            first = await run_in_threadpool(
                self._redis.set, key, job_id, nx=True, ex=DELIVERY_TTL_SECONDS
            )
        except redis.RedisError as exc:
            return self._unavailable(webhook_id, job_id, f"Redis is unreachable: {exc}")
        if not first:
            log.info("webhook_duplicate webhook_id=%s job_id=%s", webhook_id, job_id)
            return JSONResponse({"status": "duplicate"}, status_code=202)
        try:
            result = await run_in_threadpool(
                triggers.enqueue,
                job_id,
                company_id=event.company_id,
                settings=self._settings,
                app=self._app,
                client=self._redis,
                source="webhook",
            )
        except BrokerUnavailable as exc:
            with contextlib.suppress(redis.RedisError):
                await run_in_threadpool(self._redis.delete, key)
            return self._unavailable(webhook_id, job_id, exc.message)
        status = "deduplicated" if result.deduplicated else "enqueued"
        log.info(
            "webhook_accepted webhook_id=%s job_id=%s task_id=%s status=%s",
            webhook_id,
            job_id,
            result.task_id,
            status,
        )
        return JSONResponse(
            {"status": status, "job_id": result.job_id, "task_id": result.task_id},
            status_code=202,
        )

    def _unavailable(self, webhook_id: str, job_id: str, reason: str) -> Response:
        log.warning(
            "webhook_unavailable webhook_id=%s job_id=%s status=503 reason=%s",
            webhook_id,
            job_id,
            reason,
        )
        return error(503, "Redis or the broker is unavailable; retry later")

    async def ready(self, _: Request) -> Response:
        """``GET /readyz``: 200 when Redis and the broker both answer within two seconds."""
        down = await self._backends.down()
        if down:
            log.warning("webhook_not_ready webhook_id=- job_id=- down=%s", ",".join(down))
        return readiness(down)

    async def metrics(self, _: Request) -> Response:
        """``GET /metrics``: Prometheus's text format (``contract/metrics_endpoint.py``)."""
        body, kind = await run_in_threadpool(render, self._redis)
        return Response(body, media_type=kind)


def _shown(value: str | None) -> str:
    """An unverified header value made safe for a log line: printable, at most 100 characters."""
    if not value:
        return "-"
    text = value if value.isprintable() and len(value) <= 100 else repr(value[:100])
    return text.replace(" ", "_")
