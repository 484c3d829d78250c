"""Plan → messages on the broker, each (job, entry) exactly once.

Two paths, chosen by the broker URL:

- **Redis broker** (``RedisPublisher``): each message is exactly the bytes kombu's Redis
  transport would ``LPUSH`` for Celery's task message, filled in from a per-job template
  (``producer/template.py``). Each batch's marks and messages are then written by one Lua script, so
  a SIGKILL at any instant leaves every entry marked *and* queued, or neither.
- **Any other broker** (``KombuPublisher``, e.g. RabbitMQ): a batch's entries are reserved in the
  ledger, published with publisher confirms (messages built by ``producer/amqp_template.py``, equal
  to kombu's own), then marked published once RabbitMQ acknowledged the whole batch; several
  batches await their acknowledgements at once. A rerun resends only what was never marked, so a
  crash between publish and mark can repeat those entries (at least once, never lost; the ERP
  workers' dedup books each once).

Messages go to the default exchange with the queue name as routing key, as Celery itself does for
direct queues: they land in the queue even before any worker has declared its bindings.

Each publish pass writes one schema, chosen as it starts (``contract/schemas.py``: one every live
ERP worker reads) and recorded in the job's progress as ``message_schema``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Connection, Producer
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps

from contract import metrics
from contract.celery_app import app_settings
from contract.errors import BadInput, BrokerUnavailable, cause
from contract.lease import Lease
from contract.ledger import Ledger
from contract.message import escape_payload, placement, stamp, unescape_payload
from contract.names import ITEMS_QUEUE
from contract.wire import AmqpEncoder, MessageEncoder, celery_message, send_message, task_id_for
from producer.amqp_template import AmqpTemplate
from producer.confirms import Confirms
from producer.plan import PlannedItem
from producer.template import MessageTemplate

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# Entry id → its payload as JSON text (as kombu encodes it), or None when the data layer had none.
PayloadSource = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What one publish pass did."""

    enqueued: int
    already_enqueued: int


class Publisher(Protocol):
    """Puts a plan's messages on the broker, once per (job, entry)."""

    def publish(
        self,
        lease: Lease,
        company_id: str | None,
        items: Sequence[PlannedItem],
        *,
        payloads: PayloadSource | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PublishResult:
        """Publish ``items`` in order under ``lease``; report (done, total) as batches land.

        An item's payload is its own ``export_item`` when the plan holds it, else what
        ``payloads`` returns for its entry id (the spool), else null.
        """
        ...  # pragma: no cover


class Landing(Protocol):
    """A batch on its way: ``result()`` waits until it landed and says how many were new."""

    def result(self) -> int:
        """How many of the batch's entries were new, once it landed."""
        ...  # pragma: no cover


# Sends one batch; its landing (a Future on the Redis path) resolves to how many were new.
BatchSender = Callable[[Sequence[PlannedItem]], Landing]


class _BatchPublisher:
    """Walks the plan in batches; a subclass session sends one batch and counts the new entries.

    A session may return before its batch has landed (the Redis session sends on its own thread,
    so building the next batch overlaps Redis running the last one). At most ``_IN_FLIGHT``
    batches are outstanding, they land in plan order, and progress is reported as each lands.
    """

    _IN_FLIGHT = 1

    def __init__(
        self,
        app: Celery,
        ledger: Ledger,
        broker_url: str,
        *,
        batch_size: int,
        choose_schema: Callable[[], int] | None = None,
    ) -> None:
        self._app = app
        self._ledger = ledger
        self._broker_url = broker_url
        self._batch_size = batch_size
        # Which schema this pass writes (contract.schemas.SchemaChoice.choose); None: schema 1.
        self._choose_schema = choose_schema

    def _schema(self, job_id: str) -> int:
        """The schema of this pass's messages, chosen now and recorded in the job's progress."""
        schema = 1 if self._choose_schema is None else self._choose_schema()
        self._ledger.record(job_id, message_schema=schema)
        log.info("message_schema_chosen job_id=%s schema=%d", job_id, schema)
        return schema

    def publish(
        self,
        lease: Lease,
        company_id: str | None,
        items: Sequence[PlannedItem],
        *,
        payloads: PayloadSource | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PublishResult:
        """Publish ``items`` in plan order, skipping entries the ledger has already published."""
        total = len(items)
        added = done = 0
        outstanding: deque[tuple[Landing, int]] = deque()

        def land_oldest() -> None:
            nonlocal added, done
            sent, size = outstanding.popleft()
            new = sent.result()
            # Counted as each batch lands: a run killed mid-publish has counted what it sent.
            metrics.entries_published.inc(new)
            metrics.entries_already_published.inc(size - new)
            added += new
            done += size
            log.debug("batch_published job_id=%s done=%d total=%d", lease.job_id, done, total)
            if on_progress is not None:
                on_progress(done, total)

        with self._session(lease, company_id, total, payloads or _no_payloads) as send:
            for start in range(0, total, self._batch_size):
                batch = items[start : start + self._batch_size]
                outstanding.append((send(batch), len(batch)))
                while len(outstanding) > self._IN_FLIGHT:
                    land_oldest()
            while outstanding:
                land_oldest()
        return PublishResult(enqueued=added, already_enqueued=total - added)

    def _session(
        self, lease: Lease, company_id: str | None, total: int, payloads: PayloadSource
    ) -> AbstractContextManager[BatchSender]:
        raise NotImplementedError


class RedisPublisher(_BatchPublisher):
    """Marks and messages written together, one Lua transaction per batch."""

    @contextmanager
    def _session(
        self, lease: Lease, company_id: str | None, total: int, payloads: PayloadSource
    ) -> Iterator[BatchSender]:
        encoder = MessageEncoder(self._app, self._broker_url)
        try:
            template = MessageTemplate(
                self._app,
                encoder,
                lease.job_id,
                company_id,
                total,
                schema=self._schema(lease.job_id),
            )
        finally:
            encoder.close()

        def export_json(item: PlannedItem) -> str | None:
            return _payload_json(item, payloads)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-publish") as redis_thread:

            def send(batch: Sequence[PlannedItem]) -> Future[int]:
                pairs = template.render_batch(batch, export_json)
                return redis_thread.submit(
                    self._ledger.publish_batch, lease, template.queue_key, pairs
                )

            yield send


class KombuPublisher(_BatchPublisher):
    """Reserve, publish, mark once confirmed: for non-Redis brokers (RabbitMQ).

    Publishes go out back to back on one confirming channel, batch after batch, while RabbitMQ's
    acknowledgements (``basic.ack``, often one for many with ``multiple``) are read as they come:
    up to ``_IN_FLIGHT`` batches wait for theirs at once. A batch is marked published, in plan
    order, once every one of its publishes is acknowledged. A ``basic.nack``, a channel the
    broker closed or no acknowledgement within ``_CONFIRM_TIMEOUT`` seconds ends the pass with
    BrokerUnavailable: the batches not yet marked stay reserved, and the rerun sends them again.
    A kombu transport other than py-amqp (no publisher confirms: SQS, memory, ...) sends each
    message through kombu itself and marks its batch once sent.
    """

    _IN_FLIGHT = 4
    _CONFIRM_TIMEOUT = 60.0

    @contextmanager
    def _session(
        self, lease: Lease, company_id: str | None, total: int, payloads: PayloadSource
    ) -> Iterator[BatchSender]:
        schema = self._schema(lease.job_id)
        connection = Connection(self._broker_url)
        try:
            with connection:
                channel = connection.default_channel
                self._declare(channel)
                job = _Job(lease, company_id, total, payloads, schema)
                if connection.transport.driver_name == "py-amqp":
                    yield self._windowed(job, connection, channel)
                else:
                    # A transport without publisher confirms (kombu's SQS, memory, ...).
                    yield self._one_by_one(job, channel)
        except (
            OperationalError,
            *connection.connection_errors,
            *connection.channel_errors,
        ) as exc:
            # kombu wraps a connection that never came up in its own OperationalError.
            raise BrokerUnavailable(
                f"The broker refused or dropped the publish: {cause(exc)}."
            ) from exc

    def _windowed(self, job: _Job, connection: Connection, channel: Any) -> BatchSender:
        """RabbitMQ: publish each batch at once, land it when all of it is confirmed."""
        job_id = job.lease.job_id
        encoder = AmqpEncoder(self._app, connection)
        try:
            template = AmqpTemplate(
                self._app, encoder, job_id, job.company_id, job.total, schema=job.schema
            )
        finally:
            encoder.close()
        confirms = Confirms(connection, channel, timeout=self._CONFIRM_TIMEOUT)
        publish = channel.basic_publish
        exchange, routing_key = template.exchange, template.routing_key

        def send(batch: Sequence[PlannedItem]) -> Landing:
            sent = self._reserve(job, batch)
            published_at = stamp()
            placed = {}
            for item in sent:
                entry = item.accounting_entry_id
                message = template.render(
                    item,
                    task_id_for(job_id, entry),
                    _payload_json(item, job.payloads),
                    published_at,
                )
                publish(message, exchange=exchange, routing_key=routing_key)
                placed[entry] = placement(
                    item.sequence, job.total, item.status_at_fetch, item.booked_at
                )
            last = confirms.published(len(sent))

            def land() -> int:
                confirms.wait(last)
                self._ledger.confirm(job_id, placed, already=len(batch) - len(sent))
                return len(sent)

            return _Deferred(land)

        return send

    def _one_by_one(self, job: _Job, channel: Any) -> BatchSender:
        """Any other kombu transport: each message through kombu, the batch marked once sent."""
        producer = Producer(channel, auto_declare=False)
        job_id = job.lease.job_id

        def send(batch: Sequence[PlannedItem]) -> Landing:
            sent = self._reserve(job, batch)
            placed = {}
            for item in sent:
                full = (
                    _with_payload(item, job.payloads)
                    .message(job_id, job.company_id, job.total)
                    .written_as(job.schema)
                )
                message = celery_message(
                    self._app, task_id_for(job_id, item.accounting_entry_id), full.to_kwargs()
                )
                send_message(self._app, producer, message)
                placed[item.accounting_entry_id] = full.placement()
            self._ledger.confirm(job_id, placed, already=len(batch) - len(sent))
            landed: Future[int] = Future()
            landed.set_result(len(sent))
            return landed

        return send

    def _reserve(self, job: _Job, batch: Sequence[PlannedItem]) -> list[PlannedItem]:
        """Reserve ``batch`` in the ledger; the items to send (all but those already marked)."""
        todo = set(self._ledger.reserve(job.lease, [i.accounting_entry_id for i in batch]))
        return [i for i in batch if i.accounting_entry_id in todo]

    def _declare(self, channel: Any) -> None:
        """Declare the items queue as the app's settings have it (classic or quorum).

        RabbitMQ refuses an existing queue of the other type (PRECONDITION_FAILED): a setting to
        fix, not an outage, so BadInput (exit 2).
        """
        try:
            self._app.amqp.queues[ITEMS_QUEUE](channel).declare()
        except PreconditionFailed as exc:
            wanted = app_settings(self._app).rabbitmq_queue_type
            raise BadInput(
                f"RabbitMQ refused to declare {ITEMS_QUEUE} as a {wanted} queue "
                "(PLEO_RABBITMQ_QUEUE_TYPE), as a queue keeps the type it was created with (the "
                f"README's RabbitMQ notes say how to move): {cause(exc)}"
            ) from exc


@dataclass(frozen=True, slots=True)
class _Job:
    """What one publish pass sends: under which lease, for which company, how many, which schema."""

    lease: Lease
    company_id: str | None
    total: int
    payloads: PayloadSource
    schema: int


class _Deferred:
    """A batch whose landing runs when asked for (on the publishing thread)."""

    def __init__(self, land: Callable[[], int]) -> None:
        self._land = land

    def result(self) -> int:
        """Wait for the batch's confirms, mark it, and return how many of it were new."""
        return self._land()


def _no_payloads(entry_id: str) -> None:
    return None


def _payload_json(item: PlannedItem, payloads: PayloadSource) -> str | None:
    if item.export_json is not None:
        return item.export_json
    if item.export_item is not None:
        return str(dumps(escape_payload(item.export_item)))
    return payloads(item.accounting_entry_id)


def _with_payload(item: PlannedItem, payloads: PayloadSource) -> PlannedItem:
    if item.export_item is not None:
        return item
    text = item.export_json or payloads(item.accounting_entry_id)
    if text is None:
        return item
    # The spooled text is as it travels: escaped where it had to be, so undone before to_kwargs.
    return dataclasses.replace(item, export_item=unescape_payload(json.loads(text)))
