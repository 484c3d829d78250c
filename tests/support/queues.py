"""Read what the producer left on the broker, the way a worker would see it."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import redis

from contract.names import ITEMS_QUEUE


@dataclass(frozen=True)
class Queued:
    """One task message: its Celery id and keyword arguments, plus the raw envelope."""

    task_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    envelope: dict[str, Any]


def decode(raw: bytes | str) -> Queued:
    """Decode one kombu Redis-transport message (JSON envelope, base64 JSON body)."""
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return Queued(envelope["headers"]["id"], envelope["headers"]["task"], args, kwargs, envelope)


def redis_queue(client: redis.Redis, queue: str = ITEMS_QUEUE) -> list[Queued]:
    """The queue's messages in delivery order (kombu LPUSHes and workers BRPOP)."""
    return [decode(raw) for raw in reversed(client.lrange(queue, 0, -1))]
