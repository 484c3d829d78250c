"""Publish rate to a real RabbitMQ, with publisher confirms: our publisher against the ceiling.

Two contenders write the same planned items to the items queue of one RabbitMQ virtual host,
each run three times (the median is reported):

(r) ours: ``KombuPublisher``: reserve in the Redis ledger, publish with confirms, mark what
    RabbitMQ confirmed, under a lease, payloads read from a ``PayloadSpool`` as a run has them;
(s) ceiling: raw ``basic_publish`` of byte strings as long as (r)'s messages on one confirming
    channel, waiting for RabbitMQ's acknowledgements once per 1,000 messages.

After each run the queue is read back: (r)'s messages must be every entry once, with its own task
id, and (s)'s as many as were sent, so no contender wins by skipping work. The queue is purged
before and after every run. The items queue of the virtual host the URL names is used and emptied:
give the bench a virtual host of its own (``rabbitmqctl add_vhost pleo-bench``) on a shared broker;
on the default one it takes turns with the test suite (``tests/support/serial.py``).
"""

from __future__ import annotations

import json
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import amqp
from kombu import Connection

from contract.celery_app import make_app
from contract.names import ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import task_id_for
from producer.components import make_ledger
from producer.plan import PlannedItem
from producer.publish import KombuPublisher, PayloadSource
from tests.support.serial import taking_turns

RUNS = 3
CONFIRM_EVERY = 1_000


@dataclass(frozen=True, slots=True)
class RabbitOutcome:
    """One contender: its message count and the seconds of each of its runs."""

    name: str
    items: int
    runs: tuple[float, ...]

    @property
    def seconds(self) -> float:
        """The median run."""
        return statistics.median(self.runs)


def reachable(url: str) -> bool:
    """Whether anything listens where ``url`` points (the bench skips RabbitMQ otherwise)."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1).close()
    except OSError:
        return False
    return True


@contextmanager
def own_queue(url: str) -> Iterator[Callable[[], None]]:
    """The items queue of ``url``'s vhost, declared as Celery declares it; yields a purge."""
    app = make_app(Settings(broker_url=url))
    vhost = urlsplit(url).path.lstrip("/") or "/"
    turns = taking_turns("rabbitmq") if vhost == "/" else _no_turns()
    with turns, Connection(url) as conn:
        queue = app.amqp.queues[ITEMS_QUEUE](conn.default_channel)
        queue.declare()

        def purge() -> None:
            queue.purge()

        purge()
        try:
            yield purge
        finally:
            purge()


@contextmanager
def _no_turns() -> Iterator[None]:
    yield


def read_back(url: str) -> list[tuple[str, bytes]]:
    """Every message on the items queue, taken off it: (task id header, body), in order."""
    out: list[tuple[str, bytes]] = []
    with Connection(url) as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(ITEMS_QUEUE, no_ack=True)) is not None:
            out.append((str((message.headers or {}).get("id", "")), message.body))
    return out


def run_ours(
    settings: Settings,
    url: str,
    items: Sequence[PlannedItem],
    payloads: PayloadSource,
    *,
    job_id: str,
    company_id: str,
) -> float:
    """(r) once: our publisher over every item, under a fresh lease; the seconds it took."""
    app = make_app(settings)
    ledger = make_ledger(settings)
    ledger.client.flushdb()
    publisher = KombuPublisher(app, ledger, url, batch_size=settings.publish_batch)
    started = time.perf_counter()
    with ledger.held(job_id, wait=settings.lease_wait) as lease:
        result = publisher.publish(lease, company_id, items, payloads=payloads)
    seconds = time.perf_counter() - started
    if result.enqueued != len(items):
        raise SystemExit(f"(r) enqueued {result.enqueued} of {len(items)}")
    got = read_back(url)
    want = [task_id_for(job_id, item.accounting_entry_id) for item in items]
    if [task_id for task_id, _ in got] != want:
        raise SystemExit(f"(r): the queue holds {len(got)} messages, not each of {len(want)} once")
    entry = json.loads(got[0][1])[1]["accounting_entry_id"]
    if entry != items[0].accounting_entry_id:
        raise SystemExit("(r): the first message does not carry the first entry")
    return seconds


def run_ceiling(url: str, sizes: Sequence[int]) -> float:
    """(s) once: raw confirmed publishes of bodies of ``sizes``; the seconds it took."""
    bodies = [b"x" * size for size in sizes]
    parts = urlsplit(url)
    connection = amqp.Connection(
        f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        virtual_host=(parts.path[1:] or "/") if parts.path else "/",
    )
    connection.connect()
    acked = 0

    def on_ack(tag: int, multiple: bool) -> None:
        nonlocal acked
        acked = max(acked, tag)

    try:
        channel = connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(on_ack)
        started = time.perf_counter()
        for sent, body in enumerate(bodies, 1):
            channel.basic_publish(
                amqp.Message(body, delivery_mode=2, message_id=str(uuid.uuid4())),
                exchange="",
                routing_key=ITEMS_QUEUE,
            )
            if sent % CONFIRM_EVERY == 0 or sent == len(bodies):
                while acked < sent:
                    connection.drain_events(timeout=30)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    got = read_back(url)
    if len(got) != len(bodies):
        raise SystemExit(f"(s): the queue holds {len(got)} messages, not {len(bodies)}")
    return seconds


def bench_rabbitmq(
    url: str,
    redis_url: str,
    items: Sequence[PlannedItem],
    payloads: PayloadSource,
    *,
    job_id: str,
    company_id: str,
) -> tuple[RabbitOutcome, RabbitOutcome, float]:
    """Both contenders, ``RUNS`` times each, alternating; and the mean message size."""
    settings = Settings(redis_url=redis_url, broker_url=url)
    ours: list[float] = []
    ceiling: list[float] = []
    with own_queue(url) as purge:
        sizes = _message_sizes(settings, url, items, payloads, job_id=job_id, company_id=company_id)
        purge()
        for _ in range(RUNS):
            ours.append(
                run_ours(settings, url, items, payloads, job_id=job_id, company_id=company_id)
            )
            purge()
            ceiling.append(run_ceiling(url, sizes))
            purge()
    make_ledger(settings).client.flushdb()
    return (
        RabbitOutcome("(r) ours: KombuPublisher, confirms", len(items), tuple(ours)),
        RabbitOutcome("(s) ceiling: raw confirmed publish", len(items), tuple(ceiling)),
        sum(sizes) / len(sizes),
    )


def _message_sizes(
    settings: Settings,
    url: str,
    items: Sequence[PlannedItem],
    payloads: PayloadSource,
    *,
    job_id: str,
    company_id: str,
) -> list[int]:
    """The body sizes of our messages for ``items`` (one untimed run of (r))."""
    app = make_app(settings)
    ledger = make_ledger(settings)
    ledger.client.flushdb()
    publisher = KombuPublisher(app, ledger, url, batch_size=settings.publish_batch)
    with ledger.held(job_id, wait=settings.lease_wait) as lease:
        publisher.publish(lease, company_id, items, payloads=payloads)
    sizes = [len(body) for _, body in read_back(url)]
    ledger.client.flushdb()
    return sizes
