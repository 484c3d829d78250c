"""The Redis both sides keep their state in: one way to connect, one way to fail.

``redis_call`` turns an unreachable or refusing Redis into ``BrokerUnavailable`` (exit 4, retried
by the tasks), so no caller handles ``redis.RedisError`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import redis

from contract.errors import BrokerUnavailable, cause

T = TypeVar("T")


def redis_client(url: str) -> redis.Redis:
    """A Redis client with bounded timeouts, so an unreachable Redis fails fast and clearly."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)


def redis_call(fn: Callable[[], T], purpose: str) -> T:
    """Run one Redis operation; an unreachable or refusing Redis becomes BrokerUnavailable."""
    try:
        return fn()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis could not be reached for {purpose}: {cause(exc)}.") from exc


def now_iso() -> str:
    """UTC timestamp for progress records."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
