"""Read what the producer left on RabbitMQ's items queue without taking it away from the workers."""

from __future__ import annotations

import json
from typing import Any

from kombu import Connection

from contract.names import ITEMS_QUEUE


def peek(url: str, queue: str = ITEMS_QUEUE) -> list[tuple[str, dict[str, Any]]]:
    """Every message on ``queue``, as (task id, kwargs) in delivery order, left on the queue.

    Each message is fetched without an acknowledgement, so closing the connection hands them all
    back; a classic queue puts requeued messages back where they were, so the order is kept.
    The workers see them as redelivered, which an item task treats like any other delivery.
    """
    out = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            out.append((message.headers["id"], kwargs))
    return out


def depth(url: str, queue: str = ITEMS_QUEUE) -> int:
    """How many messages ``queue`` holds that no consumer has taken."""
    with Connection(url) as conn:
        _name, messages, _consumers = conn.default_channel.queue_declare(queue, passive=True)
    return int(messages)
