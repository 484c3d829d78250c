"""Plan → messages on the broker, each (job, entry) exactly once.

Two paths, chosen by the broker URL:

- **Redis broker** (``RedisPublisher``): each message is exactly the bytes kombu's Redis
  transport would ``LPUSH`` for Celery's task message, filled in from a per-job template
  (``producer/template.py``). Each batch's marks and messages are then written by one Lua script, so
  a SIGKILL at any instant leaves every entry marked *and* queued, or neither.
- **Any other broker** (``KombuPublisher``, e.g. RabbitMQ): entries are reserved in the ledger, sent
  through kombu with publisher confirms, then marked published. A rerun resends only what was never
  confirmed, so a crash between confirm and mark can repeat an entry (at least once, never lost).

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
from typing import Protocol

from celery import Celery
from kombu import Connection, Producer
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps

from contract import metrics
from contract.errors import BrokerUnavailable, cause
from contract.lease import Lease
from contract.ledger import Ledger
from contract.names import ITEMS_QUEUE
from contract.wire import MessageEncoder, celery_message, send_message, task_id_for
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


# Sends one batch; the future resolves to how many of its entries were new.
BatchSender = Callable[[Sequence[PlannedItem]], "Future[int]"]


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
        outstanding: deque[tuple[Future[int], int]] = deque()

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
    """Reserve, send with publisher confirms, then mark published: for non-Redis brokers."""

    @contextmanager
    def _session(
        self, lease: Lease, company_id: str | None, total: int, payloads: PayloadSource
    ) -> Iterator[BatchSender]:
        schema = self._schema(lease.job_id)
        connection = Connection(self._broker_url, transport_options={"confirm_publish": True})

        try:
            with connection:
                channel = connection.default_channel
                self._app.amqp.queues[ITEMS_QUEUE](channel).declare()
                producer = Producer(channel, auto_declare=False)

                def send(batch: Sequence[PlannedItem]) -> Future[int]:
                    todo = set(self._ledger.reserve(lease, [i.accounting_entry_id for i in batch]))
                    sent = [i for i in batch if i.accounting_entry_id in todo]
                    placed = {}
                    for item in sent:
                        full = (
                            _with_payload(item, payloads)
                            .message(lease.job_id, company_id, total)
                            .written_as(schema)
                        )
                        message = celery_message(
                            self._app,
                            task_id_for(lease.job_id, item.accounting_entry_id),
                            full.to_kwargs(),
                        )
                        send_message(self._app, producer, message)
                        placed[item.accounting_entry_id] = full.placement()
                    self._ledger.confirm(lease.job_id, placed, already=len(batch) - len(sent))
                    landed: Future[int] = Future()
                    landed.set_result(len(sent))
                    return landed

                yield send
        except (OperationalError, *connection.connection_errors) as exc:
            # kombu wraps a connection that never came up in its own OperationalError.
            raise BrokerUnavailable(
                f"The broker refused or dropped the publish: {cause(exc)}."
            ) from exc


def _no_payloads(entry_id: str) -> None:
    return None


def _payload_json(item: PlannedItem, payloads: PayloadSource) -> str | None:
    if item.export_item is not None:
        return str(dumps(item.export_item))
    return payloads(item.accounting_entry_id)


def _with_payload(item: PlannedItem, payloads: PayloadSource) -> PlannedItem:
    if item.export_item is not None:
        return item
    text = payloads(item.accounting_entry_id)
    return item if text is None else dataclasses.replace(item, export_item=json.loads(text))
