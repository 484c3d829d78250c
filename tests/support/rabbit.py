"""Read what the producer left on RabbitMQ's items queue without taking it away from the workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


@contextmanager
def own_vhost(base_url: str, name: str) -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own (``rabbitmqctl``), deleted with all it holds.

    Yields ``base_url`` pointing at it: queues declared there (of any type) leave the shared
    default vhost and its classic items queue alone.
    """
    vhost = f"{name}-{os.getpid()}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        parts = urlsplit(base_url)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", "", ""))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def queue_types(vhost_url: str) -> dict[str, str]:
    """Each queue of the URL's vhost and its type (``classic``, ``quorum``), by ``rabbitmqctl``."""
    vhost = urlsplit(vhost_url).path.lstrip("/") or "/"
    out = _rabbitmqctl("list_queues", "-q", "--no-table-headers", "-p", vhost, "name", "type")
    return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)


def have_rabbitmqctl() -> bool:
    """Whether this machine can create virtual hosts (``rabbitmqctl`` on PATH)."""
    return shutil.which("rabbitmqctl") is not None


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout
