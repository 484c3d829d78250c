"""One item's Redis work on the direct path: one script before the ERP call, one after it.

An item message on an ungoverned connection (``consumers/worker.py``) used to cost seven round
trips (final event, outcome, expiry, outage cleared, record, flush requested, flush stamps read).
Now it costs two, and no fewer can keep what they guard:

- ``BEFORE`` (before the ERP is called): the job's final event, whether the entry already has
  an outcome and whether a worker is ending the job (``consumers/ending.py``), in one read; when
  none holds, the entry is noted in flight (``:erp-in-flight``) until the post's ``allowance``
  has run out. It must come before the call (an entry already recorded, or of a job that ended
  or is ending, is never posted again), so it cannot ride with the record after the call;
- ``AFTER`` (once the ERP answered): the entry no longer in flight, the ERP outage forgotten,
  the first outcome kept and queued
  (``consumers/results.py`` ``RECORD``, the same script text), and who writes back decided
  (``Reporter.request_flush``'s rule: ``now`` for a full batch or an overdue write-back,
  ``schedule`` for the first result with no delayed flush pending, else ``none``).

The job-level state an item needs beyond these (its ``expiresIn`` and our last action, for the
expiry check) is read once per job per process and kept (``consumers/expiry.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis

from consumers.results import RECORD, record_args
from contract.keys import (
    erp_down_key,
    erp_ending_key,
    erp_in_flight_key,
    final_key,
    flush_due_key,
    flushed_key,
    items_key,
    outbox_key,
    results_key,
)
from contract.store import redis_call
from pleo.client import MAX_UPDATE_ITEMS

# How long a pending delayed flush is remembered (``:flush-due``), as Reporter.request_flush.
FLUSH_DUE_MS: Final = 600_000

# KEYS[1] final, KEYS[2] results, KEYS[3] erp-in-flight, KEYS[4] erp-ending; ARGV[1] entry,
# ARGV[2] until when its post may book (epoch seconds), ARGV[3] ttl ms.
# {final event ("" if none), 1 if recorded, 1 if ending}; the entry noted in flight if all three
# are empty (its post goes ahead).
BEFORE = """
local final = redis.call('GET', KEYS[1]) or ''
local recorded = redis.call('HEXISTS', KEYS[2], ARGV[1])
local ending = redis.call('EXISTS', KEYS[4])
if final == '' and recorded == 0 and ending == 0 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return {final, recorded, ending}
"""

# KEYS[1] erp-in-flight; ARGV[1] entry, ARGV[2] until when (epoch seconds), ARGV[3] ttl ms.
# A booked entry whose receipts follow: in flight a while longer (its outcome is not recorded yet).
EXTEND = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] results, KEYS[2] outbox, KEYS[3] counters (RECORD's), KEYS[4] erp-down, KEYS[5]
# flush-due, KEYS[6] flushed-at, KEYS[7] erp-in-flight; ARGV[1..5] RECORD's (ARGV[1] the entry),
# ARGV[6] now (epoch seconds), ARGV[7] the write-back interval (seconds), ARGV[8] flush-due ttl ms,
# ARGV[9] a full write-back batch.
# {outbox size (0: the entry had an outcome already), decision: 0 none, 1 schedule, 2 now}.
AFTER = (
    "local function record()\n"
    + RECORD
    + """
end
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('DEL', KEYS[4])
local waiting = record()
if waiting == 0 then return {0, 0} end
if waiting >= tonumber(ARGV[9]) then return {waiting, 2} end
if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'PX', ARGV[8]) then return {waiting, 1} end
local due = tonumber(redis.call('GET', KEYS[5]) or '0')
local flushed = tonumber(redis.call('GET', KEYS[6]) or '0')
if tonumber(ARGV[6]) - math.max(due, flushed) >= tonumber(ARGV[7]) then return {waiting, 2} end
return {waiting, 0}
"""
)

_DECISIONS: Final = ("none", "schedule", "now")
# A post starts within this long (seconds) of its note in flight, or it is noted again first
# (a payload read from Pleo, an expiry check that asked Pleo): its allowance counts from there.
START_WITHIN: Final = 1.0


@dataclass(frozen=True, slots=True)
class Before:
    """What the job and the entry hold before the ERP call; ``ending``: a worker is ending the
    job (``consumers/ending.py``). When none of the three holds, the entry is in flight."""

    final_event: str | None
    recorded: bool
    ending: bool = False

    @property
    def goes_ahead(self) -> bool:
        """Whether the entry may be posted (it was noted in flight)."""
        return self.final_event is None and not self.recorded and not self.ending


@dataclass(frozen=True, slots=True)
class After:
    """What recording the outcome did: results now waiting (0: a duplicate), and ``flush``,
    who writes them back (``now``, ``schedule`` or ``none``)."""

    waiting: int
    flush: str


class ItemRecords:
    """The two scripts of the direct path, registered once per client.

    ``allowance``: how long (seconds) after ``before`` a post may still book in the ERP
    (``consumers/ending.py`` ``post_allowance``); a post that has not started within
    ``START_WITHIN`` of it calls ``before`` again (``consumers/worker.py``).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        dedup_ttl: int,
        allowance: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_ms = dedup_ttl * 1000
        self._allowance = allowance
        self._clock = clock
        self._before = client.register_script(BEFORE)
        self._after = client.register_script(AFTER)
        self._extend = client.register_script(EXTEND)

    def before(self, job_id: str, entry_id: str) -> Before:
        """The job's final event (if sent), whether ``entry_id`` has an outcome and whether the
        job is ending; if none, the entry is noted in flight: one trip."""
        keys = [final_key(job_id), results_key(job_id), erp_in_flight_key(job_id)]
        keys.append(erp_ending_key(job_id))
        args: list[str | int] = [entry_id, repr(self._clock() + self._allowance), self._ttl_ms]
        final, recorded, ending = self._call(lambda: self._before(keys=keys, args=args))
        return Before(final.decode() or None, bool(recorded), bool(ending))

    def extend(self, job_id: str, entry_id: str, seconds: float) -> None:
        """Keep the booked ``entry_id`` in flight ``seconds`` more (its receipts follow)."""
        keys = [erp_in_flight_key(job_id)]
        args: list[str | int] = [entry_id, repr(self._clock() + seconds), self._ttl_ms]
        self._call(lambda: self._extend(keys=keys, args=args))

    def after(
        self, job_id: str, update: Mapping[str, Any], *, attempt: int, interval: float
    ) -> After:
        """Forget an ERP outage, keep the entry's first outcome, decide the write-back: one trip."""
        keys = [
            results_key(job_id),
            outbox_key(job_id),
            items_key(job_id),
            erp_down_key(job_id),
            flush_due_key(job_id),
            flushed_key(job_id),
            erp_in_flight_key(job_id),
        ]
        now = self._clock()
        args = [
            *record_args(update, attempt=attempt, now=now, ttl_ms=self._ttl_ms),
            repr(now),
            repr(interval),
            FLUSH_DUE_MS,
            MAX_UPDATE_ITEMS,
        ]
        waiting, decision = self._call(lambda: self._after(keys=keys, args=args))
        return After(int(waiting), _DECISIONS[int(decision)])

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "reporting")
