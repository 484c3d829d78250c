"""Publish rate to a real Redis: our publisher against the hand-written baseline and raw LPUSH.

Three contenders write the same planned items (schema-1 messages carrying a realistic
``export_item`` from the simulator's own generator) to the same Redis database, one after the
other in one run:

(a) ours: ``RedisPublisher``, dedup marks and messages in one Lua script per batch, under a lease,
    with payloads read from a ``PayloadSpool`` as a run has them (encoded while pages arrive);
    (a') the same publisher handed payload dicts, so it encodes every payload itself;
(b) baseline: what one writes by hand, per item a ``SET NX`` on a dedup key, then ``send_task``
    with the same kwargs and task id through a Celery app configured like ours;
(b') the best hand-written: per batch of 500, the ``SET NX`` marks in one pipeline, then the
    new entries' ``send_task`` calls with a short ``kwargsrepr`` inside kombu's
    ``Producer.batch`` (their LPUSHes in one pipeline), and no ``task-sent`` event (ours sends
    none); ours against it is the headline ratio;
(c) ceiling: raw ``LPUSH`` of byte strings as long as (a)'s messages, pipelined 1,000 at a time.

After each, the queue is checked to hold every message (and (a)'s, (b)'s and (b')'s decode as Celery
task messages with the right ids and kwargs), so no contender wins by skipping work. A second
table does the same on RabbitMQ with publisher confirms (``bench/rabbit.py``: ours against raw
confirmed publishes, median of 3), when anything listens at ``--rabbitmq``.
Usage: ``python -m bench.publish [-n 100000] [--baseline-items 10000] [--quick] [--profile]
[--rabbitmq URL] [--rabbit-items 20000]``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import redis
from celery import Celery

from bench.common import (
    bench_rabbitmq_url,
    bench_redis_url,
    own_redis,
    print_table,
    rate,
    sample_export_items,
)
from bench.rabbit import RabbitOutcome, bench_rabbitmq, reachable
from bench.raw_limit import lpush_seconds
from contract.celery_app import make_app
from contract.ledger import Ledger
from contract.names import ITEM_TASK, ITEMS_QUEUE
from contract.settings import Settings
from contract.wire import short_repr, task_id_for
from pleo.models import ExportItem
from producer.components import make_ledger
from producer.plan import PlannedItem
from producer.publish import PayloadSource, PublishResult, RedisPublisher
from producer.spool import PayloadSpool
from tests.support.queues import decode

JOB_ID = "5b0e1a4c-7d2f-4e8a-9c31-2f6d8b7a1e90"
COMPANY_ID = "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
# (b')'s batch: as many marks and messages a pipeline as ours puts in one script.
PIPELINED_BATCH = 500


@dataclass(frozen=True, slots=True)
class Outcome:
    """One contender's run: how many messages it wrote and how long it took."""

    name: str
    items: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Messages per second."""
        return self.items / self.seconds


def planned_items(count: int) -> list[PlannedItem]:
    """``count`` planned entries, each with its own realistic export item, in plan order."""
    payloads = sample_export_items(count, COMPANY_ID)
    return [
        PlannedItem(
            accounting_entry_id=payload["accountingEntryId"],
            sequence=sequence,
            status_at_fetch="pending",
            booked_at=payload["date"],
            export_item=payload,
        )
        for sequence, payload in enumerate(payloads)
    ]


def spooled(items: Sequence[PlannedItem]) -> tuple[list[PlannedItem], PayloadSpool]:
    """The same plan as a run holds it: bare items, their payloads in a spool."""
    spool = PayloadSpool()
    spool.add(
        ExportItem(
            item.accounting_entry_id,
            str(item.booked_at),
            datetime.fromisoformat(str(item.booked_at)),
            json.dumps(item.export_item or {}).encode(),
        )
        for item in items
    )
    return [dataclasses.replace(item, export_item=None) for item in items], spool


def publish_ours(
    app: Celery,
    ledger: Ledger,
    settings: Settings,
    items: Sequence[PlannedItem],
    payloads: PayloadSource | None,
) -> PublishResult:
    """Publish ``items`` with our publisher, under the job's lease."""
    publisher = RedisPublisher(app, ledger, settings.broker_url, batch_size=settings.publish_batch)
    with ledger.held(JOB_ID, wait=settings.lease_wait) as lease:
        return publisher.publish(lease, COMPANY_ID, items, payloads=payloads)


def run_ours(
    app: Celery,
    settings: Settings,
    items: Sequence[PlannedItem],
    payloads: PayloadSource | None = None,
    name: str = "(a) ours: RedisPublisher, spooled payloads",
) -> Outcome:
    """(a): time our publisher over every item."""
    ledger = make_ledger(settings)
    started = time.perf_counter()
    result = publish_ours(app, ledger, settings, items, payloads)
    seconds = time.perf_counter() - started
    if result.enqueued != len(items):
        raise SystemExit(f"(a) enqueued {result.enqueued} of {len(items)}")
    return Outcome(name, len(items), seconds)


def run_baseline(app: Celery, client: redis.Redis, items: Sequence[PlannedItem]) -> Outcome:
    """(b): per item, ``SET NX`` on a dedup key, then ``send_task`` with our kwargs and id."""
    total = len(items)
    started = time.perf_counter()
    for item in items:
        mark = f"bench:dedup:{JOB_ID}:{item.accounting_entry_id}"
        if client.set(mark, 1, nx=True, ex=3600):
            app.send_task(
                ITEM_TASK,
                kwargs=item.message(JOB_ID, COMPANY_ID, total).to_kwargs(),
                task_id=task_id_for(JOB_ID, item.accounting_entry_id),
                queue=ITEMS_QUEUE,
            )
    seconds = time.perf_counter() - started
    return Outcome("(b) baseline: SET NX + send_task", total, seconds)


def run_pipelined(app: Celery, client: redis.Redis, items: Sequence[PlannedItem]) -> Outcome:
    """(b'): per batch of 500, the ``SET NX`` marks in one pipeline, then the new entries' Celery
    messages in one (kombu's ``Producer.batch``), each with a short ``kwargsrepr``.

    ``app`` should send no ``task-sent`` events (``task_send_sent_event``), as ours sends none:
    with them every message is two publishes.
    """
    total = len(items)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for start in range(0, total, PIPELINED_BATCH):
            batch = items[start : start + PIPELINED_BATCH]
            with client.pipeline(transaction=False) as pipe:
                for item in batch:
                    pipe.set(
                        f"bench:dedup:{JOB_ID}:{item.accounting_entry_id}", 1, nx=True, ex=3600
                    )
                fresh = pipe.execute()
            with producer.batch(max_size=PIPELINED_BATCH):
                for item, new in zip(batch, fresh, strict=True):
                    if new:
                        kwargs = item.message(JOB_ID, COMPANY_ID, total).to_kwargs()
                        app.send_task(
                            ITEM_TASK,
                            kwargs=kwargs,
                            task_id=task_id_for(JOB_ID, item.accounting_entry_id),
                            queue=ITEMS_QUEUE,
                            producer=producer,
                            kwargsrepr=short_repr(kwargs),
                        )
    seconds = time.perf_counter() - started
    return Outcome(
        "(b') hand-written, pipelined: SET NX x 500, then send_task x 500", total, seconds
    )


def run_raw(client: redis.Redis, sizes: Sequence[int]) -> Outcome:
    """(c): LPUSH byte strings of the given sizes (``bench.raw_limit.lpush_seconds``)."""
    seconds = lpush_seconds(client, ITEMS_QUEUE, sizes)
    return Outcome("(c) ceiling: raw pipelined LPUSH", len(sizes), seconds)


def check_celery_queue(client: redis.Redis, items: Sequence[PlannedItem], who: str) -> list[int]:
    """Every item is queued once as a Celery message with its id and kwargs; the sizes, in order."""
    raw = client.lrange(ITEMS_QUEUE, 0, -1)
    if len(raw) != len(items):
        raise SystemExit(f"{who}: the queue holds {len(raw)} messages, not {len(items)}")
    by_id = {task_id_for(JOB_ID, item.accounting_entry_id): item for item in items}
    seen: set[str] = set()
    for body in raw:
        message = decode(body)
        item = by_id.get(message.task_id)
        if (
            item is None
            or message.task != ITEM_TASK
            or message.kwargs["accounting_entry_id"] != item.accounting_entry_id
            or message.kwargs["export_item"] != item.export_item
        ):
            raise SystemExit(f"{who}: an unexpected message {message.task_id} is queued")
        seen.add(message.task_id)
    if len(seen) != len(items):
        raise SystemExit(f"{who}: {len(items) - len(seen)} entries are queued twice")
    return [len(body) for body in raw]


def profile_ours(
    app: Celery, settings: Settings, items: Sequence[PlannedItem], payloads: PayloadSource
) -> str:
    """cProfile of (a) on ``items``: the top entries by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_ours(app, settings, items, payloads)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> None:
    """Run the three contenders and print their rates side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--items", type=int, default=100_000, help="messages for (a), (c)")
    parser.add_argument(
        "--baseline-items", type=int, default=10_000, help="messages for (b), the slow one"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 2,000 for (b)")
    parser.add_argument(
        "--redis", default=bench_redis_url(), help="a Redis database to empty and use"
    )
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of (a)")
    parser.add_argument(
        "--rabbitmq",
        default=bench_rabbitmq_url(),
        help="a RabbitMQ URL whose vhost's items queue may be emptied and used ('' to skip)",
    )
    parser.add_argument(
        "--rabbit-items", type=int, default=20_000, help="messages per RabbitMQ run (r), (s)"
    )
    args = parser.parse_args()
    count, baseline_count = (20_000, 2_000) if args.quick else (args.items, args.baseline_items)
    baseline_count = min(baseline_count, count)

    settings = Settings(redis_url=args.redis, broker_url=args.redis)
    app = make_app(settings)
    items = planned_items(count)
    bare, spool = spooled(items)
    with own_redis(args.redis) as client, spool:
        ours = run_ours(app, settings, bare, spool.payload_json)
        sizes = check_celery_queue(client, items, "(a)")
        client.flushdb()
        encoding = run_ours(app, settings, items, name="(a') ours, encoding payload dicts")
        check_celery_queue(client, items, "(a')")
        client.flushdb()
        # (b) gets a plan of its own size, so its `total` and dedup keys match what it sends.
        baseline_items = planned_items(baseline_count)
        baseline = run_baseline(app, client, baseline_items)
        check_celery_queue(client, baseline_items, "(b)")
        client.flushdb()
        # The same app's configuration, less the task-sent event per message ours does not send.
        quiet = make_app(settings)
        quiet.conf.task_send_sent_event = False
        pipelined = run_pipelined(quiet, client, items)
        check_celery_queue(client, items, "(b')")
        client.flushdb()
        raw = run_raw(client, sizes)
        if client.llen(ITEMS_QUEUE) != count:
            raise SystemExit(f"(c): the queue holds {client.llen(ITEMS_QUEUE)}, not {count}")
        client.flushdb()
        rabbit = (
            bench_rabbitmq(
                args.rabbitmq,
                args.redis,
                bare[: min(args.rabbit_items, count)],
                spool.payload_json,
                job_id=JOB_ID,
                company_id=COMPANY_ID,
            )
            if args.rabbitmq and reachable(args.rabbitmq)
            else None
        )
        profile = (
            profile_ours(app, settings, bare[: min(count, 20_000)], spool.payload_json)
            if args.profile
            else ""
        )

    mean_size = sum(sizes) / len(sizes)
    rows = [
        [o.name, f"{o.items:,}", f"{o.seconds:.2f}", rate(o.items, o.seconds)]
        for o in (ours, encoding, baseline, pipelined, raw)
    ]
    print_table(
        f"Publish to Redis: {count:,} schema-1 messages, mean {mean_size:,.0f} bytes",
        ["contender", "messages", "seconds", "messages/s"],
        rows,
        [
            f"a/b' = {ours.per_second / pipelined.per_second:.1f}x (the headline: ours against"
            f" the best hand-written)   a/c = {ours.per_second / raw.per_second:.0%}"
            "   (goal: a/c >= 50%)",
            f"a/b = {ours.per_second / baseline.per_second:.1f}x (against the naive one)   "
            f"b'/c = {pipelined.per_second / raw.per_second:.0%}",
            f"a'/b = {encoding.per_second / baseline.per_second:.1f}x   "
            f"a'/c = {encoding.per_second / raw.per_second:.0%}",
            f"(b) ran on {baseline_count:,} messages (slow); rates are per second either way.",
            "Each queue was checked after its run: every message there once, (a), (a'), (b) and"
            " (b') decoded with the right task ids and kwargs.",
        ],
    )
    if rabbit is not None:
        print_rabbitmq(*rabbit)
    else:
        print(f"RabbitMQ: nothing listens at {args.rabbitmq or '(skipped)'}; no RabbitMQ rows.")
    if profile:
        print(f"cProfile of (a) on {min(count, 20_000):,} messages, by own time:")
        print(profile)


def print_rabbitmq(ours: RabbitOutcome, ceiling: RabbitOutcome, mean_size: float) -> None:
    """The RabbitMQ table: (r) and (s), median of three runs each."""
    count = ours.items
    rows = [
        [o.name, f"{o.items:,}", f"{o.seconds:.2f}", rate(o.items, o.seconds)]
        for o in (ours, ceiling)
    ]
    runs = ", ".join(f"{s:.2f}" for s in ours.runs)
    print_table(
        f"Publish to RabbitMQ with confirms: {count:,} messages, mean body {mean_size:,.0f} bytes",
        ["contender", "messages", "seconds (median of 3)", "messages/s"],
        rows,
        [
            f"r/s = {ceiling.seconds / ours.seconds:.0%}   (goal: r >= 10,000 messages/s)",
            f"(r) runs: {runs} s",
            "Each queue was read back after its run: (r) every entry once with its task id.",
        ],
    )


if __name__ == "__main__":
    main()
