"""The Redis both sides keep their state in: one way to connect, one way to fail.

``ledger_client(settings)`` is the ledger's Redis; ``redis_client(url)`` any Redis URL the settings
accept, a ``sentinel://`` list included: its client talks to the master the Sentinels name now and
follows a failover (redis-py's ``Sentinel.master_for``), as kombu's Sentinel transport does for the
broker.

``redis_call`` turns an unreachable or refusing Redis into ``BrokerUnavailable`` (exit 4, retried
by the tasks), so no caller handles ``redis.RedisError`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from contract.errors import BadInput, BrokerUnavailable, cause

if TYPE_CHECKING:
    from contract.settings import Settings

T = TypeVar("T")

# Bounded, so an unreachable Redis fails fast and clearly (Sentinels answer at once or never).
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
SENTINEL_PORT = 26379


def redis_client(url: str, *, sentinel_master: str | None = None) -> redis.Redis:
    """A Redis client with bounded timeouts; for a ``sentinel://`` URL, of the named master."""
    if url.startswith("sentinel://"):
        if not sentinel_master:
            raise BadInput(
                "A sentinel:// Redis URL needs REDIS_SENTINEL_MASTER (the master's name)."
            )
        return _sentinel_master(url, sentinel_master)
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT
    )


def ledger_client(settings: Settings) -> redis.Redis:
    """A client of the ledger's Redis (the broker's when the broker is Redis)."""
    return redis_client(settings.ledger_url, sentinel_master=settings.redis_sentinel_master)


def _sentinel_master(url: str, master: str) -> redis.Redis:
    """The master behind ``sentinel://h1:26379;sentinel://h2:26379/db``, read as kombu reads it.

    Each URL names one Sentinel; the first one's password, user name and database are the
    master's (kombu's Sentinel transport takes them from there too). Sentinels themselves are
    asked without a password.
    """
    nodes = [urlsplit(part) for part in url.split(";")]
    first = nodes[0]
    db = first.path.strip("/")
    if db and not db.isdigit():
        raise BadInput(f"A sentinel:// URL's path must be a Redis database number, not {db!r}.")
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
        [(node.hostname or "127.0.0.1", node.port or SENTINEL_PORT) for node in nodes],
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
        },
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        master,
        redis_class=redis.Redis,
        db=int(db) if db else 0,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password is not None else None,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=READ_TIMEOUT,
    )
    return client


def redis_call(fn: Callable[[], T], purpose: str) -> T:
    """Run one Redis operation; an unreachable or refusing Redis becomes BrokerUnavailable."""
    try:
        return fn()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis could not be reached for {purpose}: {cause(exc)}.") from exc


def now_iso() -> str:
    """UTC timestamp for progress records."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
