"""Results back to Pleo: buffered per job in Redis, written in batches of at most 100, and the
job completed exactly once when every published entry has been reported.

Any worker may flush any job: a per-job lock (``:flush``) keeps it to one flusher at a time, and a
flusher that finds more work when it is done schedules the next flush. A 200 whose ``errors[]``
names some entries keeps just those in the outbox for the next flush (``report_max_attempts`` times
at most); a 422 means the job was finished elsewhere and nothing more can be written (how Pleo
finished it, e.g. ``job_expired``, is recorded: ``consumers/finished.py``). Every accepted PUT and
final event stamps our last action on the job, which Pleo's ``expiresIn`` counts from.

Each batch is noted in ``:sending`` before its PUT and cleared in the same transaction that records
Pleo's answer. A flusher killed in between (Pleo may or may not have applied the PUT) leaves the
note behind; the next flusher settles it from Pleo's own item statuses before sending anything, so
an update Pleo applied is never sent twice. A flusher that died may have left its PUT on the way
(sent, not yet served): Pleo's statuses are read only once no request it sent can still land,
``request_timeout`` after the last one it may have sent (its retries stop ``retry_budget`` after
the note, ``:sending-at``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis

from consumers.finished import FinishedInPleo
from consumers.item_records import FLUSH_DUE_MS, After, Before, ItemRecords
from consumers.results import AUDIT_FIELDS, RECORD, STAMP_REPORTED, record_args
from contract import metrics
from contract.errors import LeaseHeld, PleoExportError, Unprocessable
from contract.keys import (
    attempts_key,
    erp_down_key,
    final_key,
    flush_due_key,
    flushed_key,
    items_key,
    marks_key,
    outbox_key,
    progress_key,
    reported_key,
    results_key,
    sending_at_key,
    sending_key,
)
from contract.lease import Lease
from contract.ledger import Ledger
from contract.states import PUBLISHED
from contract.store import redis_call
from pleo.activity import Expiry, PleoActivity
from pleo.client import MAX_UPDATE_ITEMS, PleoClient
from pleo.final_event import FINAL_EVENTS, record_final, send_final
from pleo.models import ACTIONABLE_ITEM_STATUSES

log = logging.getLogger(__name__)

# ``:items`` fields while Pleo refuses our credentials for the write-back (``pleo-export status``
# shows them); the next update Pleo accepts deletes them.
CREDENTIALS_REFUSED = ("credentials_refused", "credentials_refused_at")


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush wrote back."""

    sent: int = 0
    accepted: int = 0
    refused: int = 0
    dropped: int = 0
    locked: bool = False


class Reporter:
    """Per-job result buffer, batched write-back and the final job event.

    ``expiry_recheck`` is how long (seconds) this process trusts Pleo's answer on whether a quiet
    job is finished (``finished_in_pleo``); ``post_allowance`` and ``file_allowance``, how long
    a post, and each receipt of a booked entry, stay in flight (``consumers/ending.py``).
    """

    def __init__(
        self,
        client: redis.Redis,
        pleo: PleoClient,
        ledger: Ledger,
        *,
        dedup_ttl: int,
        max_attempts: int,
        request_timeout: float,
        retry_budget: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        expiry_recheck: float = 30.0,
        post_allowance: float = 60.0,
        file_allowance: float = 60.0,
    ) -> None:
        self._r = client
        self._request_timeout = request_timeout
        self._retry_budget = retry_budget
        self._sleep = sleep
        self._pleo = pleo
        self._ledger = ledger
        self._ttl_ms = dedup_ttl * 1000
        self._max_attempts = max_attempts
        self._clock = clock
        self._record = client.register_script(RECORD)
        self._stamp_reported = client.register_script(STAMP_REPORTED)
        self._items = ItemRecords(
            client, dedup_ttl=dedup_ttl, allowance=post_allowance, clock=clock
        )
        self._file_allowance = file_allowance
        self._activity = PleoActivity(client, dedup_ttl=dedup_ttl)
        self._finished = FinishedInPleo(
            client, pleo, self._activity, dedup_ttl=dedup_ttl, recheck=expiry_recheck, clock=clock
        )

    @property
    def ttl_ms(self) -> int:
        """How long the job's records live while it runs, in milliseconds (``PLEO_DEDUP_TTL``)."""
        return self._ttl_ms

    # -- results -----------------------------------------------------------------------------

    def outcome(self, job_id: str, entry_id: str) -> Mapping[str, Any] | None:
        """The entry's recorded outcome (the update for Pleo), if it has one."""
        raw = self._redis(lambda: self._r.hget(results_key(job_id), entry_id))
        if raw is None:
            return None
        kept = dict(json.loads(raw))
        for name in AUDIT_FIELDS:
            kept.pop(name, None)
        return kept

    def record(self, job_id: str, update: Mapping[str, Any], *, attempt: int = 1) -> int:
        """Keep an entry's first outcome and queue it for write-back; 0 if it had one already.

        ``attempt``: how many times a worker has taken the entry's message, this one included.
        """
        keys = [results_key(job_id), outbox_key(job_id), items_key(job_id)]
        args = record_args(update, attempt=attempt, now=self._clock(), ttl_ms=self._ttl_ms)
        return int(self._redis(lambda: self._record(keys=keys, args=args)))

    def before_post(self, job_id: str, entry_id: str) -> Before:
        """The direct path's one read before the ERP call (``consumers/item_records.py``)."""
        return self._items.before(job_id, entry_id)

    def keep_in_flight(self, job_id: str, entry_id: str, *, files: int) -> None:
        """The booked ``entry_id`` stays in flight while its ``files`` receipts are transferred."""
        self._items.extend(job_id, entry_id, files * self._file_allowance)

    def record_posted(
        self, job_id: str, update: Mapping[str, Any], *, attempt: int, interval: float
    ) -> After:
        """The direct path's one write after the ERP call: ``erp_reachable``, ``record`` and
        ``request_flush`` (with ``interval``) in one script (``consumers/item_records.py``)."""
        return self._items.after(job_id, update, attempt=attempt, interval=interval)

    def final_event(self, job_id: str) -> str | None:
        """The job's final event once sent (or "already_finished"), else None."""
        raw = self._redis(lambda: self._r.get(final_key(job_id)))
        value = None if raw is None else raw.decode()
        return value if value in FINAL_EVENTS else None

    def request_flush(self, job_id: str, interval: float) -> str:
        """Decide who writes waiting results back: ``schedule``, ``now`` or ``none``.

        At most one delayed flush task is pending per job (``:flush-due``, cleared when that task
        runs): the first result that finds none schedules one. That task may sit behind a backlog
        of items in the queue, so a worker that finds the last flush older than ``interval``
        flushes itself (``now``): results never wait much longer than the interval.
        """
        due, flushed = flush_due_key(job_id), flushed_key(job_id)
        now = self._clock()
        if self._redis(lambda: self._r.set(due, repr(now), nx=True, px=FLUSH_DUE_MS)):
            return "schedule"
        stamps = [float(v) for v in self._redis(lambda: self._r.mget(due, flushed)) if v]
        return "now" if stamps and now - max(stamps) >= interval else "none"

    def scheduled_flush_started(self, job_id: str) -> None:
        """The pending delayed flush task is running: the next result may schedule another."""
        self._redis(lambda: self._r.delete(flush_due_key(job_id)))

    def pending(self, job_id: str) -> int:
        """Results waiting to be written back."""
        return int(self._redis(lambda: self._r.hlen(outbox_key(job_id))))

    # -- write-back --------------------------------------------------------------------------

    def flush(self, job_id: str) -> FlushResult:
        """Write every waiting result back in batches of at most 100; one flusher per job.

        The flusher holds the job's ``flush`` lease (heartbeat, short TTL), so a worker killed
        mid-flush frees the write-back within seconds.
        """
        if self.final_event(job_id) is not None:
            # The job is over (and may be closed already, its working state gone): Pleo takes no
            # more updates of it, and a late flush task must not write that state again.
            return FlushResult()
        try:
            with self._ledger.held(job_id, wait=0, name="flush") as lease:
                stamp = flushed_key(job_id)
                self._redis(lambda: self._r.set(stamp, repr(self._clock()), px=self._ttl_ms))
                return self._flush_locked(job_id, lease)
        except LeaseHeld:
            return FlushResult(locked=True)

    def _flush_locked(self, job_id: str, lease: Lease) -> FlushResult:
        outbox = outbox_key(job_id)
        try:
            self._settle_interrupted(job_id)
        except Unprocessable:
            return self._job_finished_elsewhere(job_id, waiting=self.pending(job_id))
        waiting = self._redis(lambda: self._r.hgetall(outbox))
        updates = [json.loads(v) for _, v in sorted(waiting.items())]
        sent = accepted = refused = dropped = 0
        for start in range(0, len(updates), MAX_UPDATE_ITEMS):
            if not self._ledger.renew(lease):
                # Our heartbeat was late and another flusher may hold the job now: sending
                # more would race it. What is left waits for the next flush.
                log.warning("report_lease_lost job_id=%s sent=%d", job_id, sent)
                break
            batch = updates[start : start + MAX_UPDATE_ITEMS]
            ids = [u["accountingEntryId"] for u in batch]
            self._redis(partial(self._note_sending, job_id, ids))
            asked_at = self._clock()
            try:
                result = self._pleo.update_job_items(job_id, batch)
            except Unprocessable:
                metrics.writeback_calls.labels("job_finished").inc()
                self._job_finished_elsewhere(job_id, waiting=len(updates))
                return FlushResult(sent=sent, accepted=accepted, refused=len(updates) - accepted)
            except PleoExportError:
                metrics.writeback_calls.labels("error").inc()
                raise
            metrics.writeback_calls.labels("ok").inc()
            metrics.writeback_refusals.inc(len(result.errors))
            errors = {e.accounting_entry_id: e for e in result.errors}
            ok = [entry for entry in ids if entry not in errors]
            if ok:
                # A PUT that changed no item may not count as an action to Pleo: no stamp.
                self._activity.touch(job_id, asked_at)
            gave_up = self._note_refusals(job_id, list(errors))
            self._accept(job_id, ok, gave_up, settled=ids)
            sent += len(batch)
            accepted += len(ok)
            refused += len(errors)
            dropped += len(gave_up)
            for error in result.errors:
                log.warning(
                    "report_item_refused job_id=%s entry=%s type=%s message=%s",
                    job_id,
                    error.accounting_entry_id,
                    error.type,
                    error.message,
                )
            log.info(
                "report_batch_sent job_id=%s items=%d accepted=%d refused=%d",
                job_id,
                len(batch),
                len(ok),
                len(errors),
            )
        return FlushResult(sent=sent, accepted=accepted, refused=refused, dropped=dropped)

    def _note_refusals(self, job_id: str, entry_ids: list[str]) -> list[str]:
        """Count refusals; return the entries refused too often, which leave the outbox."""
        if not entry_ids:
            return []
        attempts = attempts_key(job_id)

        def bump() -> list[Any]:
            with self._r.pipeline(transaction=True) as pipe:
                for entry_id in entry_ids:
                    pipe.hincrby(attempts, entry_id, 1)
                pipe.pexpire(attempts, self._ttl_ms)
                return list(pipe.execute())

        counts = self._redis(bump)[: len(entry_ids)]
        gave_up = [e for e, n in zip(entry_ids, counts, strict=True) if n >= self._max_attempts]
        for entry_id in gave_up:
            log.error(
                "report_dropped job_id=%s entry=%s attempts=%d",
                job_id,
                entry_id,
                self._max_attempts,
            )
        return gave_up

    def _note_sending(self, job_id: str, ids: list[str]) -> None:
        with self._r.pipeline(transaction=True) as pipe:
            sending = sending_key(job_id)
            pipe.delete(sending)
            pipe.sadd(sending, *ids)
            pipe.pexpire(sending, self._ttl_ms)
            pipe.set(sending_at_key(job_id), repr(self._clock()), px=self._ttl_ms)
            pipe.execute()

    def _settle_interrupted(self, job_id: str) -> None:
        """Record the batch a killed flusher left in ``:sending`` as far as Pleo applied it.

        Pleo's status of each of those items says it: one no longer pending or in progress got
        our update (only we move items on), the others go out with the next batch.
        """
        sending = sending_key(job_id)
        left = {e.decode() for e in self._redis(lambda: self._r.smembers(sending))}
        if not left:
            return
        self._sleep(self._in_flight_for(job_id))
        landed = [
            item.accounting_entry_id
            for page in self._pleo.iter_job_items(job_id)
            for item in page.items
            if item.accounting_entry_id in left and item.status not in ACTIONABLE_ITEM_STATUSES
        ]
        self._accept(job_id, landed, [], settled=sorted(left))
        log.warning(
            "report_batch_settled job_id=%s interrupted=%d applied_by_pleo=%d",
            job_id,
            len(left),
            len(landed),
        )

    def _in_flight_for(self, job_id: str) -> float:
        """Seconds until no PUT of the flusher that left ``:sending`` can still reach Pleo.

        It may have sent (or retried) its PUT until ``retry_budget`` after the note, and a request
        sent is served, or given up, within ``request_timeout``; it is dead now, so nothing it
        sends starts later than now. A note from before ``:sending-at`` was kept waits the most.
        """
        raw = self._redis(lambda: self._r.get(sending_at_key(job_id)))
        if raw is None:
            return self._request_timeout
        last_send = float(raw) + self._retry_budget
        return max(
            0.0, min(self._request_timeout, last_send + self._request_timeout - self._clock())
        )

    def _job_finished_elsewhere(self, job_id: str, *, waiting: int) -> FlushResult:
        log.warning("report_refused_job_finished job_id=%s waiting=%d", job_id, waiting)
        self._finished.explain(job_id)
        self._finish(job_id, "already_finished")
        self._redis(
            lambda: self._r.delete(outbox_key(job_id), sending_key(job_id), sending_at_key(job_id))
        )
        return FlushResult(refused=waiting)

    def _accept(
        self, job_id: str, accepted: list[str], dropped: list[str], *, settled: list[str]
    ) -> None:
        """Move accepted entries from the outbox to ``reported``; drop the hopeless ones.

        ``settled`` (the batch just answered) leaves ``:sending`` in the same transaction.
        """
        outbox, items = outbox_key(job_id), items_key(job_id)

        def write() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                if settled:
                    pipe.srem(sending_key(job_id), *settled)
                if accepted or dropped:
                    pipe.hdel(outbox, *accepted, *dropped)
                if accepted:
                    # Pleo takes our updates again: a refusal of our credentials is over.
                    pipe.hdel(items, *CREDENTIALS_REFUSED)
                    pipe.sadd(reported_key(job_id), *accepted)
                    pipe.hincrby(items, "reported", len(accepted))
                    stamp: list[str | int] = [int(self._clock()), *accepted]
                    self._stamp_reported(keys=[results_key(job_id)], args=stamp, client=pipe)
                if dropped:
                    pipe.hincrby(items, "report_dropped", len(dropped))
                pipe.pexpire(reported_key(job_id), self._ttl_ms)
                pipe.pexpire(items, self._ttl_ms)
                pipe.execute()

        self._redis(write)
        metrics.entries_reported.inc(len(accepted))
        metrics.writeback_dropped.inc(len(dropped))

    def credentials_refused(self, job_id: str, message: str) -> None:
        """Pleo refused our credentials for the job's write-back: noted for ``status``."""
        refused, at = CREDENTIALS_REFUSED
        items = items_key(job_id)
        self._redis(lambda: self._r.hset(items, mapping={refused: message, at: self._clock()}))

    # -- completion --------------------------------------------------------------------------

    def maybe_complete(self, job_id: str) -> str | None:
        """Send the final event once every published entry is reported; return it if sent now."""
        state = self._redis(lambda: self._r.hget(progress_key(job_id), "state"))
        if state is None or state.decode() not in PUBLISHED:
            return None
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hlen(marks_key(job_id))
            pipe.scard(reported_key(job_id))
            pipe.hlen(outbox_key(job_id))
            pipe.hget(items_key(job_id), "failed")
            pipe.hget(items_key(job_id), "report_dropped")
            published, reported, waiting, failed, dropped = self._redis(pipe.execute)
        if waiting or int(reported) + int(dropped or 0) < int(published):
            return None
        event = (
            "completed"
            if not int(failed or 0) and not int(dropped or 0)
            else ("completed_with_errors")
        )
        return self.send_final(job_id, event)

    def send_final(
        self,
        job_id: str,
        event: str,
        *,
        failure_reason: str | None = None,
        failure_reason_type: str | None = None,
    ) -> str | None:
        """Send the job's final event unless one was sent or is being sent; return it if sent."""
        return send_final(
            self._r,
            self._pleo,
            job_id,
            event,
            ttl_ms=self._ttl_ms,
            failure_reason=failure_reason,
            failure_reason_type=failure_reason_type,
            activity=self._activity,
            on_refused=self._finished.explain,
            clock=self._clock,
        )

    def _finish(self, job_id: str, event: str) -> None:
        record_final(self._r, job_id, event, ttl_ms=self._ttl_ms)

    # -- jobs Pleo finished -------------------------------------------------------------------

    def finished_elsewhere(self, job_id: str) -> None:
        """Pleo refused a read or write of the job with 422: it is finished; record how."""
        self._job_finished_elsewhere(job_id, waiting=self.pending(job_id))

    def finished_in_pleo(self, job_id: str) -> bool:
        """Whether Pleo finished the job while we were quiet (it expired); recorded if so.

        Pleo is asked only when our last action is older than the job's expiresIn.
        """
        if not self._finished.check(job_id):
            return False
        self._finish(job_id, "already_finished")
        return True

    def expiry(self, job_id: str) -> Expiry | None:
        """The job's expiresIn and our last action on it, if both are recorded."""
        return self._activity.expiry(job_id)

    # -- ERP availability --------------------------------------------------------------------

    def erp_down_for(self, job_id: str) -> float:
        """Seconds since the ERP was first found unreachable for this job (0 on first sight)."""
        key = erp_down_key(job_id)
        now = self._clock()
        self._redis(lambda: self._r.set(key, repr(now), nx=True, px=self._ttl_ms))
        since = self._redis(lambda: self._r.get(key))
        return max(0.0, now - float(since)) if since is not None else 0.0

    def erp_reachable(self, job_id: str) -> None:
        """Forget an earlier ERP outage for this job."""
        self._redis(lambda: self._r.delete(erp_down_key(job_id)))

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _redis(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "reporting")
