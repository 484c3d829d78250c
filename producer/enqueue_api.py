"""The HTTP enqueue API: a service in any language triggers a producer run with a bearer token.

``POST /v1/enqueue`` with ``Authorization: Bearer <PLEO_ENQUEUE_API_TOKEN>`` and the JSON body
``{"job_id": "<uuid>", "company_id": "<uuid>" or null}`` hands the job to ``triggers.enqueue``
(``source="http"``), deduplicated with every other trigger, and answers 202 with ``job_id``,
``task_id`` and ``deduplicated``. A missing or wrong token gets 401 with ``WWW-Authenticate:
Bearer`` (compared in constant time, before the body is read); a body over 16 KiB, 413; a body
that is not such an object, or an id that is not a UUID, 400 in one sentence; Redis or the broker
down, 503 with nothing claimed, so the caller retries. ``GET /healthz`` and ``GET /readyz`` are
the webhook's. ``openapi/enqueue-api.yaml`` is the contract, and the tests hold the app to it.

Off unless started (``pleo-export api``), on its own address (default 127.0.0.1:8001), never the
webhook's public port. It writes no Redis key of its own (the trigger's are in
``producer/triggers.py``). Log lines name the job id (``-`` while unknown), never the token.
"""

from __future__ import annotations

import hmac
import logging
import re
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

from contract.errors import BadInput, BrokerUnavailable, shown
from contract.ids import validate_job_id, validate_uuid
from contract.settings import Settings
from producer import endpoints, serving, triggers
from producer.endpoints import Backends, error

log = logging.getLogger(__name__)

ENQUEUE_PATH: Final = "/v1/enqueue"
DEFAULT_PORT: Final = 8001
# Two UUIDs in JSON take under 100 bytes; anything near this cap is not a request of ours.
MAX_BODY_BYTES: Final = 16 * 1024
MIN_TOKEN_LENGTH: Final = 32
# RFC 6750's token68: what a Bearer credential may be made of.
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# Words that mark a value copied from an example rather than generated.
_PLACEHOLDER_WORDS = ("change", "replace", "placeholder", "example", "secret", "password", "token")
_FIELDS = frozenset({"job_id", "company_id"})
_CHALLENGE = 'Bearer realm="pleo-export"'


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """A checked request body: the job to produce and, if the caller knows it, its company."""

    job_id: str
    company_id: str | None


def parse_request(body: bytes) -> EnqueueRequest:
    """Decide what a body asks for; one that is not a valid request raises BadInput."""
    data = endpoints.json_object(body)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise BadInput(f"The body has a field {shown(unknown[0])} besides job_id and company_id.")
    if "job_id" not in data:
        raise BadInput("The body has no job_id.")
    job_id = validate_job_id(data["job_id"])
    company_id = data.get("company_id")
    if company_id is not None:
        company_id = validate_uuid(company_id, "Company id")
    return EnqueueRequest(job_id, company_id)


def check_token(token: str | None) -> str:
    """The token, if it can authenticate callers; else BadInput in one sentence."""
    name = "PLEO_ENQUEUE_API_TOKEN"
    if not token:
        raise BadInput(f"{name} is not set, so callers of the enqueue API cannot be authenticated.")
    if not _TOKEN68.fullmatch(token):
        raise BadInput(f"{name} may hold only letters, digits and -._~+/ (it is a Bearer token).")
    lowered = token.lower()
    if (
        len(token) < MIN_TOKEN_LENGTH
        or len(set(token)) < 8
        or any(word in lowered for word in _PLACEHOLDER_WORDS)
    ):
        raise BadInput(
            f"{name} looks like a placeholder or is too weak: use at least {MIN_TOKEN_LENGTH} "
            "random characters (for instance from `openssl rand -hex 32`)."
        )
    return token


def create_app(
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
    celery_app: Celery | None = None,
) -> Starlette:
    """The enqueue API as an ASGI app; clients it creates itself are closed at lifespan shutdown."""
    token = check_token(settings.enqueue_api_token)
    backends = Backends.open(settings, redis_client, celery_app)
    api = _Api(settings, token.encode(), backends)
    return Starlette(
        routes=[
            Route(ENQUEUE_PATH, api.enqueue, methods=["POST"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/readyz", api.ready, methods=["GET"]),
        ],
        exception_handlers={HTTPException: endpoints.http_error},
        lifespan=backends.lifespan,
    )


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the API on ``host:port`` until stopped (what ``pleo-export api`` runs).

    ``on_listening`` hears the enqueue URL once the socket is bound.
    """
    check_token(settings.enqueue_api_token)
    serving.serve(
        lambda: create_app(settings),
        host,
        port,
        name="api",
        path=ENQUEUE_PATH,
        on_listening=on_listening,
    )


class _Api:
    """The request handlers, bound to their settings, token and backends."""

    def __init__(self, settings: Settings, token: bytes, backends: Backends) -> None:
        self._settings = settings
        self._token = token
        self._backends = backends

    async def enqueue(self, request: Request) -> Response:
        """``POST /v1/enqueue``: authenticate, check, enqueue; see the module docstring."""
        refusal = self._refusal(request.headers.get("authorization"))
        if refusal is not None:
            reason, challenge = refusal
            log.warning("api_unauthorized job_id=- status=401 reason=%s", reason)
            return error(401, f"{reason}.", {"WWW-Authenticate": challenge})
        body = await endpoints.read_capped(request, MAX_BODY_BYTES)
        if body is None:
            log.warning("api_too_large job_id=- status=413")
            return error(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
        try:
            wanted = parse_request(body)
        except BadInput as exc:
            log.warning("api_bad_request job_id=- status=400 reason=%s", exc.message)
            return error(400, _sentence(exc.message))
        try:
            result = await run_in_threadpool(
                triggers.enqueue,
                wanted.job_id,
                company_id=wanted.company_id,
                settings=self._settings,
                app=self._backends.celery,
                client=self._backends.rdb,
                source="http",
            )
        except BrokerUnavailable as exc:
            log.warning(
                "api_unavailable job_id=%s status=503 reason=%s", wanted.job_id, exc.message
            )
            return error(503, "Redis or the broker is unavailable; retry later.")
        log.info(
            "api_accepted job_id=%s task_id=%s deduplicated=%s",
            result.job_id,
            result.task_id,
            result.deduplicated,
        )
        return JSONResponse(
            {
                "job_id": result.job_id,
                "task_id": result.task_id,
                "deduplicated": result.deduplicated,
            },
            status_code=202,
        )

    def _refusal(self, header: str | None) -> tuple[str, str] | None:
        """None when ``header`` carries our token, else (why not, the challenge to answer)."""
        if header is None:
            return "No Authorization header", _CHALLENGE
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "The Authorization header is not a Bearer token", _CHALLENGE
        # Starlette decodes headers as latin-1, so this gives back the bytes that were sent.
        if not hmac.compare_digest(credentials.strip().encode("latin-1"), self._token):
            return "The Bearer token is not the one configured", (
                f'{_CHALLENGE}, error="invalid_token"'
            )
        return None

    async def ready(self, _: Request) -> Response:
        """``GET /readyz``: 200 when Redis and the broker both answer within two seconds."""
        down = await self._backends.down()
        if down:
            log.warning("api_not_ready job_id=- down=%s", ",".join(down))
        return endpoints.readiness(down)


def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first, a period last (the shared refusals have neither)."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else f"{text}."
