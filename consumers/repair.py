"""The repair sweep: item messages the Redis transport lost are published again.

Why it exists: kombu's Redis transport (5.x) takes a message with ``BRPOP`` and only afterwards
records it in its ``unacked`` hash (``QoS.append``); an ERP worker killed whole (main process and
pool) between the two loses that message for good, and its job never completes. kombu offers no
atomic fetch to close the window (no ``BLMOVE`` mode, no transport option), so the window is
watched instead of closed:

- a job is *stalled* when the producer published all of it (state ``enqueued``), no final event
  was sent, and nothing happened for ``stall`` seconds: no write-back (``:flushed-at``), no
  producer update, no earlier repair (``:repaired-at``);
- its *missing* entries are those marked published with no recorded outcome;
- a missing entry whose message is neither on the items queue nor in kombu's ``unacked`` hash
  (which also holds what live workers prefetched and the countdowns of retries) was lost: its
  message is built again from the placement the producer recorded when it first published the
  entry and its payload from the data layer (same task id and arguments; no re-plan), in a schema
  every live worker reads (``contract/schemas.py``), and pushed onto the queue. An entry whose
  message a worker parked (``contract/dead_letters.py``) is one of these: its job finishes;
- waiting results are written back and the job completed if it can be.

Re-sending a message that was not really lost (one caught inside another live worker's BRPOP
window at that very instant) is harmless: a worker posts and reports an entry at most once. The
stall time therefore only needs to exceed the quiet spells of a healthy job. A message left in
``unacked`` a minute (or the stall time, if longer) past its delivery, or past its ETA for a retry
waiting out its countdown, counts as lost too (see ``_stored_messages``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery

from consumers.reporting import Reporter
from contract import metrics
from contract.errors import LeaseHeld
from contract.keys import (
    REPAIR_SWEEP_KEY,
    REPAIR_SWEPT_KEY,
    KombuKeys,
    fence_of,
    final_key,
    flushed_key,
    items_key,
    job_id_of,
    marks_key,
    placed_key,
    progress_key,
    ready_items_key,
    repaired_key,
    results_key,
)
from contract.lease import Leases
from contract.ledger import PUBLISHED
from contract.message import ItemMessage, placement
from contract.names import ITEMS_QUEUE
from contract.settings import Ordering
from contract.states import JobState
from contract.store import redis_call
from contract.wire import MessageEncoder, celery_message, task_id_for
from pleo.client import PleoClient
from pleo.models import ACTIONABLE_ITEM_STATUSES, index_export_items

log = logging.getLogger(__name__)

# The first ``"id": "<uuid>"`` of a kombu envelope is the Celery task id in its headers (the body
# before it is base64, which holds no quotes).
_TASK_ID = re.compile(rb'"id": "([0-9a-fA-F-]{36})"')
_SCAN_CHUNK = 1000
# An item takes seconds: an unacked message a minute past its delivery (or its retry's ETA) is a
# delivery whose restore failed, re-sent by the sweep instead of the visibility timeout's hour.
HELD_FOR = 60.0


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What repairing one stalled job found and did."""

    job_id: str
    missing: int = 0
    republished: tuple[str, ...] = ()
    flushed: int = 0
    final_event: str | None = None


class Repairer:
    """Finds stalled jobs and re-publishes the item messages they lost."""

    def __init__(
        self,
        client: redis.Redis,
        pleo: PleoClient,
        reporter: Reporter,
        *,
        leases: Leases,
        app: Celery,
        broker_url: str,
        stall: float,
        held_for: float | None = None,
        ordering: Ordering,
        clock: Callable[[], float] = time.time,
        choose_schema: Callable[[], int] | None = None,
    ) -> None:
        self._r = client
        self._pleo = pleo
        self._reporter = reporter
        self._leases = leases
        self._app = app
        self._broker_url = broker_url
        self._stall = stall
        # How long a delivered, unacked message still counts as in a live worker's hands, from its
        # delivery or, for a retry waiting out its countdown, from its ETA (``_in_hands``).
        self._held_for = max(stall, HELD_FOR) if held_for is None else held_for
        self._ordering = ordering
        self._clock = clock
        # The schema of re-sent messages (contract.schemas.SchemaChoice.choose); None: schema 1.
        self._choose_schema = choose_schema
        kombu = KombuKeys.of(app.conf.broker_transport_options)
        self._unacked = kombu.unacked
        self._unacked_index = kombu.unacked_index
        self._queue = kombu.queue(ITEMS_QUEUE)

    def sweep(self, interval: float) -> list[RepairResult]:
        """Repair every stalled job, unless another worker sweeps now or did less than ``interval``
        seconds ago.

        One sweep at a time under the fleet's repair lease (the one lock, ``contract/lease.py``:
        a sweeper that dies frees it); the ``:repair-swept-at`` stamp, set for ``interval``,
        spaces the fleet's sweeps out however many workers run one.
        """
        try:
            with self._leases.held(
                REPAIR_SWEEP_KEY,
                fence_of(REPAIR_SWEEP_KEY),
                who="repair sweep",
                wait=0,
                patient=False,
            ):
                due = self._call(
                    lambda: self._r.set(REPAIR_SWEPT_KEY, "1", nx=True, px=int(interval * 1000))
                )
                return [self.repair(job_id) for job_id in self.stalled_jobs()] if due else []
        except LeaseHeld:
            return []

    def stalled_jobs(self) -> list[str]:
        """Jobs fully published, not finished, and quiet for longer than the stall time."""
        now = self._clock()
        stalled = []
        for key in self._call(lambda: list(self._r.scan_iter(progress_key("*"), count=1000))):
            job_id = job_id_of(key)
            if self._is_stalled(job_id, now):
                stalled.append(job_id)
        return stalled

    def repair(self, job_id: str) -> RepairResult:
        """Re-publish the job's lost messages, write waiting results back, complete it if due."""
        stamp, ttl_ms = repr(self._clock()), self._reporter.ttl_ms
        self._call(lambda: self._r.set(repaired_key(job_id), stamp, px=ttl_ms))
        missing = self._missing(job_id)
        lost = missing - self._still_held(job_id, missing)
        if lost:
            # A message acked between the two reads was staged or recorded before its ack (the
            # look at kombu's keys came second): read those again, or it would be sent twice.
            lost &= self._missing(job_id)
        republished = self._republish(job_id, lost) if lost else ()
        flushed = self._reporter.flush(job_id).sent if self._reporter.pending(job_id) else 0
        final = self._reporter.maybe_complete(job_id)
        log.warning(
            "job_repaired job_id=%s missing=%d lost=%d republished=%d flushed=%d final=%s",
            job_id,
            len(missing),
            len(lost),
            len(republished),
            flushed,
            final,
        )
        return RepairResult(job_id, len(missing), republished, flushed, final)

    # -- what is missing ---------------------------------------------------------------------

    def _is_stalled(self, job_id: str, now: float) -> bool:
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(progress_key(job_id), ["state", "updated_at"])
            pipe.exists(final_key(job_id))
            pipe.mget(flushed_key(job_id), repaired_key(job_id))
            (state, updated_at), final, stamps = self._call(pipe.execute)
        if final or state is None or state.decode() != JobState.ENQUEUED:
            return False
        moments = [float(s) for s in stamps if s]
        if updated_at:
            moments.append(datetime.fromisoformat(updated_at.decode()).timestamp())
        return not moments or now - max(moments) >= self._stall

    def _missing(self, job_id: str) -> set[str]:
        """Entries marked published that have no recorded outcome and are not staged."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hgetall(marks_key(job_id))
            pipe.hkeys(results_key(job_id))
            pipe.hkeys(ready_items_key(job_id))
            marks, done, staged = self._call(pipe.execute)
        published = {k.decode() for k, v in marks.items() if v.decode() == PUBLISHED}
        # A staged entry (a governed connection's, consumers/ready.py) is in a poster's hands.
        return published - {k.decode() for k in done} - {k.decode() for k in staged}

    def _still_held(self, job_id: str, entries: set[str]) -> set[str]:
        """Those of ``entries`` whose message kombu still holds, on the queue or unacked."""
        by_task = {task_id_for(job_id, entry): entry for entry in entries}
        held = set()
        for raw in self._stored_messages():
            match = _TASK_ID.search(raw)
            entry = by_task.get(match.group(1).decode()) if match is not None else None
            if entry is not None:
                held.add(entry)
        return held

    def _in_hands(self, raw: bytes, delivered: float, now: float) -> bool:
        """Whether an unacked message is still a live worker's: delivered (or, for a retry, due)
        less than ``held_for`` ago. A retry's countdown (up to ``RETRY_CAP``) is spent unacked in
        the worker that took it, so it counts from the ETA Celery wrote in the message's headers."""
        since = delivered
        try:
            eta = json.loads(raw)[0]["headers"].get("eta")
            if eta:
                since = max(since, datetime.fromisoformat(eta).timestamp())
        except (ValueError, TypeError, KeyError, IndexError):
            pass  # not a message of ours as we know it: judged by its delivery alone
        return now - since < self._held_for

    def _stored_messages(self) -> Iterator[bytes]:
        """Every message kombu holds: unacked (delivered, not acked) first, then the queue.

        An unacked message delivered longer ago than ``held_for`` (a minute or the stall time,
        whichever is longer, unless set), or for a retry whose countdown ended longer ago than
        that, does not count: an item takes seconds, so it is a delivery whose restore failed
        (kombu puts a worker's prefetched messages back when its connection drops, and that fails
        while Redis is down), and it would otherwise wait out the visibility timeout, an hour by
        default. Re-sending it is safe: the ERP post and the outcome are once per entry.
        """
        now = self._clock()
        delivered = dict(
            self._call(lambda: self._r.zrange(self._unacked_index, 0, -1, withscores=True))
        )
        for tag, raw in self._call(lambda: self._r.hscan_iter(self._unacked, count=_SCAN_CHUNK)):
            if tag in delivered and self._in_hands(raw, delivered[tag], now):
                yield raw
        length = int(self._call(lambda: self._r.llen(self._queue)))
        for start in range(0, length, _SCAN_CHUNK):
            chunk = self._call(lambda s=start: self._r.lrange(self._queue, s, s + _SCAN_CHUNK - 1))  # type: ignore[misc]
            yield from chunk

    # -- publishing again --------------------------------------------------------------------

    def _republish(self, job_id: str, lost: set[str]) -> tuple[str, ...]:
        """Build the lost entries' messages again from what the producer recorded, and queue them.

        Each message is rebuilt from the entry's placement, recorded when it was first published
        (``contract.keys.placed_key``: sequence, total, status and date), and its payload as the
        data layer gives it: the same task id and arguments, with no re-plan. An entry Pleo no
        longer lists as pending or in progress was settled elsewhere and is not sent again.
        """
        company = self._call(lambda: self._r.hget(progress_key(job_id), "company_id"))
        company_id = company.decode() if company else None
        current = {
            item.accounting_entry_id: item.status
            for page in self._pleo.iter_job_items(job_id)
            for item in page.items
        }
        # The payloads as the producer sent them: the data layer's one item per entry (none was
        # sent under entry_id ordering, which skips the data layer).
        payloads = (
            index_export_items(page.items for page in self._pleo.iter_export_items(job_id))
            if self._ordering == "booked_at"
            else {}
        )
        dates = {e: item.date for e, item in payloads.items()}
        placed = self._placements(job_id, lost, current, dates)
        schema = 1 if self._choose_schema is None else self._choose_schema()
        messages = sorted(
            (
                ItemMessage.rebuilt(
                    job_id, company_id, e, placed[e], getattr(payloads.get(e), "payload", None)
                ).written_as(schema)
                for e in lost
            ),
            key=lambda m: (m.sequence, m.accounting_entry_id),
        )
        encoder = MessageEncoder(self._app, self._broker_url)
        sent = []
        try:
            for message in messages:
                entry_id = message.accounting_entry_id
                if current.get(entry_id) not in ACTIONABLE_ITEM_STATUSES:
                    log.warning(
                        "repair_skipped job_id=%s entry=%s status=%s (moved in Pleo)",
                        job_id,
                        entry_id,
                        current.get(entry_id),
                    )
                    continue
                queue_key, body = encoder.encode(
                    celery_message(self._app, task_id_for(job_id, entry_id), message.to_kwargs())
                )
                self._call(lambda q=queue_key, b=body: self._r.lpush(q, b))  # type: ignore[misc]
                sent.append(entry_id)
                log.warning(
                    "message_republished job_id=%s entry=%s sequence=%d schema=%d",
                    job_id,
                    entry_id,
                    message.sequence,
                    message.schema,
                )
        finally:
            encoder.close()
            metrics.messages_republished.inc(len(sent))
        if sent:
            items, ttl_ms = items_key(job_id), self._reporter.ttl_ms

            def count() -> None:
                with self._r.pipeline(transaction=True) as pipe:
                    pipe.hincrby(items, "republished", len(sent))
                    pipe.pexpire(items, ttl_ms)
                    pipe.execute()

            self._call(count)
        return tuple(sent)

    def _placements(
        self,
        job_id: str,
        lost: set[str],
        statuses: Mapping[str, str],
        dates: Mapping[str, str],
    ) -> dict[str, str]:
        """The recorded placement of each lost entry (one read of just those fields).

        A job published by a version before placements were recorded has none (an upgrade with
        the job in flight): its entries get one in id order (sequence = position among the
        published entries, total = their count, status and date as Pleo gives them now: an entry
        with no outcome was never reported, so its status then is its status now). Task id, ids
        and payload stay exact; only the numbering differs from the first run's.
        """
        entries = sorted(lost)
        raw = self._call(lambda: self._r.hmget(placed_key(job_id), entries))
        known = {e: v.decode() for e, v in zip(entries, raw, strict=True) if v is not None}
        if len(known) == len(entries):
            return known
        marks = self._call(lambda: self._r.hgetall(marks_key(job_id)))
        published = sorted(k.decode() for k, v in marks.items() if v.decode() == PUBLISHED)
        position = {entry: n for n, entry in enumerate(published)}
        return {
            entry: known.get(entry)
            or placement(
                position[entry], len(published), _actionable(statuses.get(entry)), dates.get(entry)
            )
            for entry in entries
        }

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the repair sweep")


def _actionable(status: str | None) -> str:
    """The status an unreported entry was published with: pending unless Pleo says in progress."""
    return "in_progress" if status == "in_progress" else "pending"
