"""What the producer's HTTP apps (the webhook, the enqueue API) share.

Their backends (the Redis client and Celery app a trigger enqueues with, closed at shutdown when
the app made them, and the readiness checks on both), ``GET /healthz``, a body read up to a cap
and parsed as a JSON object, and JSON error answers that keep HTTP's own (404, 405 with ``Allow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import redis
from celery import Celery
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contract.celery_app import make_app
from contract.errors import BadInput
from contract.settings import Settings
from contract.store import ledger_client

READY_TIMEOUT_SECONDS: Final = 2.0
# A body trickling in slower than this is answered 408 and its connection closed: one client at a
# byte a second would otherwise hold a worker's connection open indefinitely.
BODY_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Backends:
    """The Redis client and Celery app an HTTP app enqueues with, and which of them it owns."""

    rdb: redis.Redis
    celery: Celery
    owns_redis: bool
    owns_celery: bool

    @classmethod
    def open(
        cls, settings: Settings, redis_client: redis.Redis | None, celery_app: Celery | None
    ) -> Backends:
        """The given clients, or new ones from ``settings`` (closed by ``lifespan``)."""
        return cls(
            rdb=ledger_client(settings) if redis_client is None else redis_client,
            celery=make_app(settings) if celery_app is None else celery_app,
            owns_redis=redis_client is None,
            owns_celery=celery_app is None,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        """Starlette's lifespan: at shutdown, close the clients this app created."""
        yield
        if self.owns_redis:
            self.rdb.close()
        if self.owns_celery:
            self.celery.close()

    async def down(self) -> list[str]:
        """The backends (``redis``, ``broker``) that did not answer within the timeout."""
        checks = {"redis": self._ping_redis, "broker": self._ping_broker}
        results = await asyncio.gather(*(_within(check) for check in checks.values()))
        return [name for name, ok in zip(checks, results, strict=True) if not ok]

    def _ping_redis(self) -> None:
        self.rdb.ping()

    def _ping_broker(self) -> None:
        with self.celery.connection_for_write(connect_timeout=READY_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=READY_TIMEOUT_SECONDS
            )


def readiness(down: list[str]) -> Response:
    """``GET /readyz``'s answer: 200 ready, or 503 naming what is down."""
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _within(check: Callable[[], None]) -> bool:
    """True when ``check`` returns within the readiness timeout without raising."""
    try:
        await asyncio.wait_for(run_in_threadpool(check), READY_TIMEOUT_SECONDS)
    except Exception:  # noqa: BLE001  # any failure means "not ready"; the name says which
        return False
    return True


async def read_capped(
    request: Request, limit: int, *, within: float = BODY_TIMEOUT_SECONDS
) -> bytes | None:
    """The body, or None when it is (or says it is) larger than ``limit`` bytes.

    A body that has not arrived whole ``within`` seconds is answered 408 (HTTPException).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return None
    except TimeoutError:
        raise HTTPException(
            408, f"the body did not arrive within {within:g} s", headers={"connection": "close"}
        ) from None
    return bytes(body)


def json_object(body: bytes, refusal: type[BadInput] = BadInput) -> dict[str, Any]:
    """``body`` as a JSON object; anything else raises ``refusal`` saying what the body is."""
    try:
        data = json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        raise refusal("the body is not JSON") from None
    except RecursionError:  # nesting deeper than the interpreter's stack: hostile, not a 500
        raise refusal("the body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise refusal("the body is not a JSON object")
    return data


async def healthz(_: Request) -> Response:
    """``GET /healthz``: 200 while the process serves."""
    return JSONResponse({"status": "ok"})


async def http_error(_: Request, exc: Exception) -> Response:
    """404/405 and friends as JSON, keeping headers such as ``Allow``."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
