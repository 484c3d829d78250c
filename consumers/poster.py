"""Posting on a governed ERP connection: slot holders post staged entries within the budget.

A worker process that staged entries (``consumers/ready.py``) starts its idle posters, background
threads (``consumers/tasks.py``, ``ERP_POSTER_THREADS``). A poster takes a free posting slot
(``consumers/budget.py``), claims a batch of one job's staged entries, waits for the call's
token, posts them (one ``post_batch`` call, or ``post``), records each entry's outcome (first
outcome only, as ever), and goes on job by job until nothing is left to claim. Then it gives the
slot back, and looks once more: an entry staged while it held the slot is never left behind.

How it waits, and why that is safe:
- a message is acked once its entry is staged, so quota never holds one out of its queue: no
  redelivery after a visibility timeout, however long the wait, and no prefetched messages stuck
  behind a sleeping task; what a slot holder has claimed (at most ``batch_size`` entries per slot)
  is in Redis, given back if it dies (its slot lease lapses) or gives up;
- a slot holder sleeps for its token only up to ``MAX_WAIT`` seconds; past that (a long
  ``Retry-After``, an empty daily bucket) it gives its claim back and leaves, and the kick thread
  (``consumers/poster_step.py``) starts a poster again when the pause is over;
- a 429 pauses the connection for every worker (``Budget.pause``), and the entries of that call
  are posted again later with the same idempotency key;
- if a post was tried before (a crash, a timeout) and the ERP may have forgotten its key (older
  than ``ERP_KEY_WINDOW``, or an adapter without keys), the entry is looked up by its
  accountingEntryId before it is posted again.

When the ERP cannot finish in time: a wait longer than what is left of the job's ``expiresIn``
(from our last action on it) would let Pleo expire the job silently. The job is then given up
(``ReadyEntries.give_up``): no more calls for it, and the last poster to let go of its claims
writes back every recorded outcome and fails it with ``accounting_system_rate_limit`` and a
sentence saying how long the ERP holds its calls. Each write-back is an action Pleo counts, so a
job that keeps posting stays alive however slow the ERP is.

Ordered mode (``ERPLimits.ordered``): one poster per job at a time (the job's ``:poster`` lease),
claiming only the run of entries that starts at the job's next sequence, so no entry is posted
before every smaller sequence has its outcome. An entry whose message is late by more than
``ERP_ORDER_WAIT`` (lost, parked, or behind a long queue) is read from the job's plan (its
recorded placement) and the data layer, and staged by the poster itself: a gap never blocks the
chain for good.

Receipts (``consumers/receipts.py``), when on: each entry booked (or found booked) has its files
attached before its outcome is recorded, each upload one ERP call within the budget; a receipt
that cannot be transferred is the entry's outcome, and a call that makes the poster leave leaves
the entry unrecorded: its next try finds it booked and uploads, by key, only what is missing.
Unless the job was given up meanwhile (no next try comes): the booked entry is then recorded
``receipt_upload_failure``, so the job's end reports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from consumers.budget import Budget
from consumers.erp import (
    Entry,
    EntryRejected,
    ERPAdapter,
    ERPLimits,
    ExternalRef,
)
from consumers.erp_calls import BudgetedCalls, Leave, PosterSettings
from consumers.payloads import PayloadCache
from consumers.posting import validate_entry
from consumers.ready import Claimed, ReadyEntries
from consumers.receipts import Receipts
from consumers.reporting import Reporter
from consumers.results import failure_update, success_update
from consumers.worker import count_outcome
from contract import metrics
from contract.errors import Unprocessable
from contract.keys import lease_keys, order_gap_key, placed_key
from contract.lease import Lease
from contract.message import ItemMessage
from contract.store import redis_call

log = logging.getLogger(__name__)

# Passes over the jobs without a claim, after giving the slot back, before a poster leaves.
_LOOKS_AGAIN = 2
# A batch still filling (staging goes on) is given up to LINGER seconds to fill, looked at every
# LINGER_STEP; it is claimed at once when it is full or when a look finds it no larger than the
# last (staging stopped: the job's last messages, or a lost one the kick thread stands in for).
# Without it a poster that just posted claims whatever was staged meanwhile, a few entries a
# batch, and pays a call's and a transaction's fixed cost for each few (bench/e2e.py).
LINGER = 0.2
LINGER_STEP = 0.02


class Poster:
    """Posts one connection's staged entries for a company (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        erp: ERPAdapter,
        budget: Budget,
        ready: ReadyEntries,
        reporter: Reporter,
        payloads: PayloadCache,
        settings: PosterSettings,
        write_back: Callable[[str, int], None],
        who: str,
        receipts: Receipts | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._r = client
        self._erp = erp
        self._budget = budget
        self._limits: ERPLimits = budget.limits
        self._ready = ready
        self._reporter = reporter
        self._payloads = payloads
        self._settings = settings
        self._write_back = write_back
        self._who = who
        self._clock = clock
        # The entries of the batch under way that were sent to the ERP (this claim's tries).
        self._sent: set[str] = set()
        self._waited: dict[str, float | None] = {}
        self._receipts = receipts
        # When each claimed entry's export item was read from Pleo (its file URLs' clock).
        self._fetched: dict[str, float | None] = {}
        self._sleep = sleep
        self._calls = BudgetedCalls(
            budget, ready, reporter, settings, on_sent=self._sent.update, clock=clock, sleep=sleep
        )

    # -- the slot ---------------------------------------------------------------------------

    def drain(self, company_id: str | None) -> int:
        """Post what is staged for ``company_id`` while a slot is free; returns entries recorded.

        A drain lasts at most ``max_drain`` seconds (a minute, or a third of the visibility
        timeout, for a drain run inline by a task); a poster whose time is up leaves, and the
        kick thread (``consumers/poster_step.py``) starts one again.
        """
        recorded = looks = 0
        ends = self._clock() + self._settings.max_drain
        while looks <= _LOOKS_AGAIN:
            # Paused (a 429, the ERP down): the slot holders sleep through it, or the kick thread
            # sends a poster once it is over; a newcomer would only add a call that fails.
            if self._budget.paused_for(company_id) > 0:
                return recorded
            if self._budget.held_slots(company_id) >= self._budget.slots:
                return recorded
            slot = self._budget.take_slot(company_id, f"{self._who} posting")
            if slot is None:
                return recorded
            with self._budget.leases.kept(slot):
                self._ready.take_over(slot, company_id)
                self._ready.recover(company_id)
                done, left = self._serve(slot, company_id, ends)
            recorded += done
            if left == "time":
                return recorded  # the kick thread starts a poster again within seconds
            # Given back: look once more for entries staged while the slot was ours.
            if left or not self._ready.jobs(company_id) or self._budget.paused_for(company_id):
                return recorded
            looks = 0 if done else looks + 1
        return recorded

    def _serve(self, slot: Lease, company_id: str | None, ends: float) -> tuple[int, str | None]:
        """Post job by job, a batch each in turn, until a pass claims nothing or we must leave.

        Returns (entries recorded, why the poster left early: "time", "wait", or None).
        """
        recorded = 0
        while True:
            progress = 0
            try:
                for job_id in self._ready.jobs(company_id):
                    progress += self._serve_job(slot, company_id, job_id)
                    if self._clock() >= ends:
                        return recorded + progress, "time"
            except Leave as why:
                recorded += progress
                if why.pause is None or self._clock() + why.pause >= ends:
                    log.info("poster_left company=%s why=%s", company_id or "-", why)
                    return recorded, "wait"
                # A short pause (an outage's first backoff, say): slept out, slot kept.
                log.info(
                    "poster_paused company=%s why=%s for=%.1fs", company_id or "-", why, why.pause
                )
                self._sleep(why.pause)
                continue
            recorded += progress
            if not progress:
                return recorded, None

    # -- one job ----------------------------------------------------------------------------

    def _serve_job(self, slot: Lease, company_id: str | None, job_id: str) -> int:
        if self._reporter.final_event(job_id) is not None or self._reporter.finished_in_pleo(
            job_id
        ):
            self._ready.drop_job(company_id, job_id)
            return 0
        gave_up = self._ready.given_up(job_id)
        if gave_up is not None:
            if self._ready.claims_of(company_id, job_id) == 0:
                self._calls.fail(company_id, job_id, *gave_up)
            return 0
        if not self._limits.ordered:
            return self._serve_batch(slot, company_id, job_id)
        key, fence = lease_keys(job_id, "poster")
        lease = self._budget.leases.try_acquire(key, fence, who=f"{self._who} ordered poster")
        if lease is None:
            return 0  # another slot holder posts this job's next entries now
        with self._budget.leases.kept(lease):
            return self._serve_batch(slot, company_id, job_id)

    def _serve_batch(self, slot: Lease, company_id: str | None, job_id: str) -> int:
        ordered = self._limits.ordered
        self._let_fill(job_id)
        claim = self._ready.claim(
            slot, company_id, job_id, self._limits.batch_size, ordered=ordered
        )
        if claim.lost_slot:
            raise Leave("the posting slot's lease lapsed")
        if claim.waiting_for_gap and not claim.entries:
            self._mind_gap(company_id, job_id, claim.next_sequence)
        if not claim.entries:
            return 0
        outcomes: dict[str, dict[str, Any]] = {}
        leave: Leave | None = None
        self._sent.clear()
        try:
            self._post(company_id, job_id, claim.entries, outcomes)
        except Leave as why:
            leave = why
        except Unprocessable:
            # Pleo refused to read the job (a payload read): it finished it; nothing can report.
            self._ready.unclaim(slot, job_id, claim.entries)
            self._reporter.finished_elsewhere(job_id)
            self._ready.drop_job(company_id, job_id)
            return 0
        except BaseException:
            self._settle(slot, job_id, claim.entries, outcomes)
            raise
        recorded = self._settle(slot, job_id, claim.entries, outcomes)
        if leave is not None:
            raise leave
        return recorded

    def _let_fill(self, job_id: str) -> None:
        """Wait while the job's unclaimed entries are fewer than a batch and still growing."""
        batch = self._limits.batch_size
        if batch <= 1:
            return
        unclaimed = self._ready.unclaimed(job_id)
        for _ in range(round(LINGER / LINGER_STEP)):
            if not 0 < unclaimed < batch:
                return
            self._sleep(LINGER_STEP)
            now = self._ready.unclaimed(job_id)
            if now <= unclaimed:
                return
            unclaimed = now

    def _settle(
        self,
        slot: Lease,
        job_id: str,
        claimed: tuple[Claimed, ...],
        outcomes: Mapping[str, dict[str, Any]],
    ) -> int:
        """Record the outcomes got, give the rest back; ordered: move the chain on."""
        waiting = 0
        done: list[str] = []
        for c in claimed:
            entry_id = c.message.accounting_entry_id
            update = outcomes.get(entry_id)
            if update is None:
                continue
            attempt = max(1, c.tries + (entry_id in self._sent))
            now_waiting = self._reporter.record(job_id, update, attempt=attempt)
            if now_waiting:
                count_outcome(update)
                waiting = now_waiting
            done.append(entry_id)
        self._ready.done(slot, job_id, done)
        rest = tuple(c for c in claimed if c.message.accounting_entry_id not in outcomes)
        self._ready.unclaim(slot, job_id, rest)
        if self._limits.ordered and done:
            first_open = min((c.message.sequence for c in rest), default=None)
            last = max(c.message.sequence for c in claimed)
            self._ready.advance(job_id, first_open if first_open is not None else last + 1)
        if waiting:
            self._write_back(job_id, waiting)
        self._fail_if_given_up(slot, job_id, claimed)
        return len(done)

    def _fail_if_given_up(self, slot: Lease, job_id: str, claimed: tuple[Claimed, ...]) -> None:
        """A job given up is failed by the last poster to let go of its claims: every entry the
        ERP booked meanwhile is recorded first, so it is reported before the final event."""
        gave_up = self._ready.given_up(job_id)
        if gave_up is None:
            return
        company = claimed[0].message.company_id if claimed else None
        if self._ready.claims_of(company, job_id) == 0:
            self._calls.fail(company, job_id, *gave_up)

    # -- calling the ERP ----------------------------------------------------------------------

    def _post(
        self,
        company_id: str | None,
        job_id: str,
        claimed: tuple[Claimed, ...],
        outcomes: dict[str, dict[str, Any]],
    ) -> None:
        """Fill ``outcomes`` for the claimed entries; raises Leave when the poster must stop."""
        to_post: list[Entry] = []
        # Since the message was written (schema 2): its queue time and its time staged.
        now = self._clock()
        self._waited = {c.message.accounting_entry_id: c.message.waited(now) for c in claimed}
        self._fetched = {
            entry_id: None if waited is None else now - waited
            for entry_id, waited in self._waited.items()
        }
        for c in claimed:
            entry = Entry.from_message(c.message)
            entry_id = entry.accounting_entry_id
            if entry.export_item is None:
                entry = dataclasses.replace(entry, export_item=self._payloads.get(job_id, entry_id))
                self._fetched[entry_id] = None  # from Redis: when Pleo served it is unknown
            try:
                validate_entry(entry)
            except EntryRejected as rejected:
                outcomes[entry_id] = failure_update(entry_id, rejected.reason_type, rejected.reason)
                continue
            if self._may_be_booked(c):
                ref = self._find(company_id, job_id, entry_id)
                if ref is not None:
                    log.info("item_found_before_repost job_id=%s entry=%s", job_id, entry_id)
                    self._booked(company_id, job_id, entry, ref, outcomes)
                    continue
            to_post.append(entry)
        if len(to_post) > 1 and self._limits.batch_size > 1:
            self._post_batch(company_id, job_id, to_post, outcomes)
            return
        for entry in to_post:
            self._post_one(company_id, job_id, entry, outcomes)

    def _find(self, company_id: str | None, job_id: str, entry_id: str) -> ExternalRef | None:
        return self._calls.call(company_id, job_id, lambda: self._erp.find(entry_id))  # type: ignore[no-any-return]

    def _post_one(
        self, company_id: str | None, job_id: str, entry: Entry, outcomes: dict[str, Any]
    ) -> None:
        entry_id = entry.accounting_entry_id
        try:
            ref = self._calls.call(company_id, job_id, lambda: self._erp.post(entry), sends=[entry])
        except EntryRejected as rejected:
            metrics.erp_errors.labels("rejected").inc()
            outcomes[entry_id] = failure_update(entry_id, rejected.reason_type, rejected.reason)
            return
        self._reporter.erp_reachable(job_id)
        self._booked(company_id, job_id, entry, ref, outcomes)

    def _post_batch(
        self, company_id: str | None, job_id: str, entries: list[Entry], outcomes: dict[str, Any]
    ) -> None:
        post_batch = getattr(self._erp, "post_batch", None)
        if not callable(post_batch):
            for entry in entries:
                self._post_one(company_id, job_id, entry, outcomes)
            return
        answers = self._calls.call(company_id, job_id, lambda: post_batch(entries), sends=entries)
        if len(answers) != len(entries):
            raise Leave(f"the adapter's post_batch gave {len(answers)} outcomes for {len(entries)}")
        self._reporter.erp_reachable(job_id)
        for entry, answer in zip(entries, answers, strict=True):
            entry_id = entry.accounting_entry_id
            if isinstance(answer, EntryRejected):
                metrics.erp_errors.labels("rejected").inc()
                outcomes[entry_id] = failure_update(entry_id, answer.reason_type, answer.reason)
            else:
                self._booked(company_id, job_id, entry, answer, outcomes)
        log.info("batch_booked job_id=%s entries=%d", job_id, len(entries))

    def _booked(
        self,
        company_id: str | None,
        job_id: str,
        entry: Entry,
        ref: ExternalRef,
        outcomes: dict[str, Any],
    ) -> None:
        waited = self._waited.get(entry.accounting_entry_id)
        log.info(
            "item_booked job_id=%s entry=%s external_id=%s sequence=%d waited=%s",
            job_id,
            entry.accounting_entry_id,
            ref.external_id,
            entry.sequence,
            "-" if waited is None else f"{waited:.3f}",
        )
        entry_id = entry.accounting_entry_id
        if self._receipts is not None:
            try:
                refused = self._receipts.transfer(
                    self._erp,
                    entry,
                    ref,
                    fetched_at=self._fetched.get(entry_id),
                    call=lambda fn: self._calls.call(company_id, job_id, fn),
                )
            except Leave:
                given_up = self._ready.given_up(job_id)
                if given_up is None:
                    raise
                # The job ends (the ERP refused our credentials at an upload, say) and takes no
                # more calls, but the ERP booked this entry: its outcome is recorded, so the
                # job's end reports it (as every other booked entry of the batch).
                why = f"The receipts of entry {entry_id} were not transferred: {given_up[0]}"
                refused = EntryRejected("receipt_upload_failure", why)
            if refused is not None:
                outcomes[entry_id] = failure_update(entry_id, refused.reason_type, refused.reason)
                return
        outcomes[entry_id] = _booked(entry_id, ref)

    def _may_be_booked(self, claimed: Claimed) -> bool:
        """Whether an earlier try may have booked the entry beyond its key's memory."""
        if claimed.tries == 0:
            return False
        if not self._limits.idempotency_key:
            return True
        return self._clock() - claimed.first_try >= self._settings.key_window

    def _mind_gap(self, company_id: str | None, job_id: str, sequence: int) -> None:
        """Ordered: stage the entry at ``sequence`` from the plan once its message is late."""
        key, now = order_gap_key(job_id), self._clock()
        raw = self._redis(lambda: self._r.get(key))
        seen = raw.decode().split(":") if raw else None
        if seen is None or int(seen[0]) != sequence:
            ttl = self._settings.dedup_ttl * 1000
            self._redis(lambda: self._r.set(key, f"{sequence}:{now!r}", px=ttl))
            return
        if now - float(seen[1]) < self._settings.order_wait:
            return
        found = self._placed_at(job_id, sequence)
        if found is None:
            return  # not published yet: its message is still to come
        entry_id, placed = found
        if self._reporter.outcome(job_id, entry_id) is not None:
            self._ready.advance(job_id, sequence + 1)
            return
        payload = self._payloads.get(job_id, entry_id)
        message = ItemMessage.rebuilt(job_id, company_id, entry_id, placed, payload)
        staged = self._ready.stage(message)
        log.warning(
            "ordered_gap_filled job_id=%s sequence=%d entry=%s staged=%d waited=%.0fs",
            job_id,
            sequence,
            entry_id,
            staged.status,
            now - float(seen[1]),
        )

    def _placed_at(self, job_id: str, sequence: int) -> tuple[str, str] | None:
        """The published entry at ``sequence`` and its placement, from the job's plan record."""
        for entry, placed in self._redis(lambda: list(self._r.hscan_iter(placed_key(job_id)))):
            if json.loads(placed)[0] == sequence:
                return entry.decode(), placed.decode()
        return None

    @staticmethod
    def _redis(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the ERP poster")


def _booked(entry_id: str, ref: ExternalRef) -> dict[str, Any]:
    return success_update(entry_id, ref.external_id, ref.external_url, ref.exported_at)
