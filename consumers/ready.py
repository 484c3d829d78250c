"""The entries of a governed ERP connection that wait for a posting slot: staged, claimed, done.

On a connection with limits (``consumers/budget.py``) an item message is a wake-up: the worker
stages its entry here and acks it at once, so waiting for the ERP's quota never holds a message
out of its queue (no redelivery after a visibility timeout, no prefetched messages stuck behind a
wait). A slot holder then claims entries, posts them, records their outcomes, and marks them done.

Per job (``contract/keys.py``):
    :ready         sorted set entry -> sequence: staged and not claimed
    :ready-items   hash entry -> the item message's kwargs (JSON), from staging until the outcome
                   is recorded: the mark that the entry is staged or claimed (a redelivered
                   message stages nothing twice)
    :erp-tries     hash entry -> how often it was claimed (the audit's erpAttempts)
    :erp-first-try hash entry -> when it was first claimed (epoch seconds)
    :next-seq      ordered mode: every entry below this sequence has its outcome
Per connection and company: ``jobs`` (sorted set job -> first staged, the jobs with staged
entries) and, per slot, ``slot:{i}:claimed`` (hash ``{job}|{entry}`` -> sequence: what the slot's
holder took). A slot whose lease lapsed gives its claims back (``recover``) to whoever looks next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from consumers.budget import Budget
from contract.keys import (
    erp_claims_key,
    erp_companies_key,
    erp_first_try_key,
    erp_gave_up_key,
    erp_tries_key,
    final_key,
    job_keys_prefix,
    next_sequence_key,
    ready_items_key,
    ready_key,
    results_key,
)
from contract.lease import Lease
from contract.message import ItemMessage
from contract.store import redis_call

# KEYS[1] ready, KEYS[2] ready-items, KEYS[3] results, KEYS[4] final, KEYS[5] jobs, KEYS[6] the
# connection's companies; ARGV[1] entry, ARGV[2] sequence, ARGV[3] kwargs JSON, ARGV[4] job,
# ARGV[5] now, ARGV[6] ttl ms, ARGV[7] company ("-": none).
# {status, entries staged and not claimed, entries staged or claimed, outcomes recorded}; status
# 1: staged; 0: already staged, claimed or recorded; -1: the job has its final event.
_STAGE = """
if redis.call('EXISTS', KEYS[4]) == 1 then return {-1, 0, 0, 0} end
local status = 0
local recorded = redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1
if not recorded and redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[5], 'NX', ARGV[5], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
  redis.call('SADD', KEYS[6], ARGV[7])
  redis.call('PEXPIRE', KEYS[6], ARGV[6])
  status = 1
end
local unclaimed, staged = redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[2])
return {status, unclaimed, staged, redis.call('HLEN', KEYS[3])}
"""


@dataclass(frozen=True, slots=True)
class Staged:
    """What staging one message found: ``status`` (1 staged, 0 already, -1 job finished), and
    the job's entries ``unclaimed``, ``staged`` (claimed ones too) and ``recorded``."""

    status: int
    unclaimed: int = 0
    staged: int = 0
    recorded: int = 0

    def worth_posting(self, batch_size: int, total: int) -> bool:
        """Whether a poster should start now: a full batch waits, or the job's last messages
        are in (fewer would follow); else the next message, or the kick thread, starts one."""
        return self.unclaimed >= batch_size or self.staged + self.recorded >= total


# KEYS[1] slot lease, KEYS[2] slot claims, KEYS[3] ready, KEYS[4] ready-items, KEYS[5] results,
# KEYS[6] erp-tries, KEYS[7] erp-first-try, KEYS[8] jobs, KEYS[9] next-seq;
# ARGV[1] lease token, ARGV[2] job, ARGV[3] most entries, ARGV[4] ordered (1/0), ARGV[5] now,
# ARGV[6] ttl ms.
# Claims staged entries, lowest sequence first (ordered: only the run that starts at next-seq),
# skipping those with an outcome. Returns {status, next sequence, entry, seq, tries so far, first
# try (0: none), ...}:
# status 1 claimed, 0 nothing staged, 2 ordered and waiting for ``next sequence``, -1 not our slot.
_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
local ordered = ARGV[4] == '1'
local expected = tonumber(redis.call('GET', KEYS[9]) or '0')
local out = {}
local status = 0
while #out < tonumber(ARGV[3]) * 4 do
  local top = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #top == 0 then break end
  local entry, seq = top[1], tonumber(top[2])
  if ordered and seq > expected then status = 2 break end
  redis.call('ZREM', KEYS[3], entry)
  if redis.call('HEXISTS', KEYS[5], entry) == 1 then
    redis.call('HDEL', KEYS[4], entry)
    if ordered and seq == expected then
      expected = seq + 1
      redis.call('SET', KEYS[9], expected, 'PX', ARGV[6])
    end
  else
    redis.call('HSET', KEYS[2], ARGV[2] .. '|' .. entry, seq)
    table.insert(out, entry)
    table.insert(out, seq)
    table.insert(out, redis.call('HGET', KEYS[6], entry) or '0')
    table.insert(out, redis.call('HGET', KEYS[7], entry) or '0')
    status = 1
    if ordered then expected = seq + 1 end
    if #out >= tonumber(ARGV[3]) * 4 then break end
  end
end
if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('ZREM', KEYS[8], ARGV[2]) end
for i = 2, 7 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
local reply = {status, expected}
for _, v in ipairs(out) do table.insert(reply, v) end
return reply
"""

# KEYS[1] slot claims, KEYS[2] jobs; ARGV[1] the job keys' prefix, ARGV[2] now, ARGV[3] job, then
# entry, sequence pairs. Gives claimed entries back: staged again (unless recorded meanwhile).
_UNCLAIM = """
local prefix = ARGV[1] .. ARGV[3]
for i = 4, #ARGV, 2 do
  redis.call('HDEL', KEYS[1], ARGV[3] .. '|' .. ARGV[i])
  if redis.call('HEXISTS', prefix .. ':ready-items', ARGV[i]) == 1 then
    redis.call('ZADD', prefix .. ':ready', ARGV[i + 1], ARGV[i])
    redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
  end
end
return 1
"""

# KEYS[1] jobs, then slot lease, slot claims pairs; ARGV[1] the job keys' prefix, ARGV[2] now,
# ARGV[3] a new holder's token ("": none). A slot nobody holds, or one just taken (over) by
# ARGV[3], gives back everything it had claimed; returns how many entries.
_RECOVER = """
local back = 0
for k = 2, #KEYS, 2 do
  local held = redis.call('GET', KEYS[k])
  if not held or held == ARGV[3] then
    local claims = redis.call('HGETALL', KEYS[k + 1])
    for i = 1, #claims, 2 do
      local job, entry = string.match(claims[i], '^(.-)|(.*)$')
      local prefix = ARGV[1] .. job
      if redis.call('HEXISTS', prefix .. ':ready-items', entry) == 1 then
        redis.call('ZADD', prefix .. ':ready', claims[i + 1], entry)
        redis.call('ZADD', KEYS[1], 'NX', ARGV[2], job)
        back = back + 1
      end
    end
    redis.call('DEL', KEYS[k + 1])
  end
end
return back
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """One entry a slot holder took: its staged message, and how often it was sent to the ERP
    before (``tries``; ``first_try``: when it first was, 0 if never)."""

    message: ItemMessage
    tries: int
    first_try: float


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim took: ``entries`` (sequence order) and, ordered, the next sequence due."""

    entries: tuple[Claimed, ...]
    next_sequence: int
    waiting_for_gap: bool = False
    lost_slot: bool = False


class ReadyEntries:
    """The staged entries of one connection's jobs (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        budget: Budget,
        *,
        dedup_ttl: int,
        reads: frozenset[int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._budget = budget
        self._ttl_ms = dedup_ttl * 1000
        self._reads = reads
        self._clock = clock
        self._stage = client.register_script(_STAGE)
        self._claim = client.register_script(_CLAIM)
        self._unclaim = client.register_script(_UNCLAIM)
        self._recover = client.register_script(_RECOVER)
        self._prefix = job_keys_prefix()

    def stage(self, message: ItemMessage) -> Staged:
        """Stage the message's entry (see ``Staged``)."""
        job, entry = message.job_id, message.accounting_entry_id
        keys = [
            ready_key(job),
            ready_items_key(job),
            results_key(job),
            final_key(job),
            self._budget.key(message.company_id, "jobs"),
            erp_companies_key(self._budget.connection),
        ]
        args: list[Any] = [
            entry,
            message.sequence,
            json.dumps(message.to_kwargs(), separators=(",", ":")),
            job,
            repr(self._clock()),
            self._ttl_ms,
            message.company_id or "-",
        ]
        reply = self._call(lambda: self._stage(keys=keys, args=args))
        return Staged(*(int(v) for v in reply))

    def unclaimed(self, job_id: str) -> int:
        """How many of the job's entries are staged and not claimed."""
        return int(self._call(lambda: self._r.zcard(ready_key(job_id))))

    def jobs(self, company_id: str | None) -> list[str]:
        """The company's jobs with staged entries, the longest waiting first."""
        raw = self._call(lambda: self._r.zrange(self._budget.key(company_id, "jobs"), 0, -1))
        return [j.decode() for j in raw]

    def claim(
        self, slot: Lease, company_id: str | None, job_id: str, most: int, *, ordered: bool
    ) -> Claim:
        """Claim up to ``most`` staged entries of ``job_id`` for the slot ``slot``."""
        keys = [
            slot.key,
            erp_claims_key(slot.key),
            ready_key(job_id),
            ready_items_key(job_id),
            results_key(job_id),
            erp_tries_key(job_id),
            erp_first_try_key(job_id),
            self._budget.key(company_id, "jobs"),
            next_sequence_key(job_id),
        ]
        args: list[Any] = [
            slot.token,
            job_id,
            most,
            1 if ordered else 0,
            repr(self._clock()),
            self._ttl_ms,
        ]
        reply = self._call(lambda: self._claim(keys=keys, args=args))
        status, expected = int(reply[0]), int(reply[1])
        if status == -1:
            return Claim((), expected, lost_slot=True)
        rows = [reply[i : i + 4] for i in range(2, len(reply), 4)]
        entries = [r[0].decode() for r in rows]
        stored = self._call(lambda: self._r.hmget(ready_items_key(job_id), entries)) if rows else []
        claimed = []
        for (_entry, _seq, tries, first), raw in zip(rows, stored, strict=True):
            if raw is None:
                continue  # recorded between the claim and this read: nothing to post
            message = ItemMessage.parse(json.loads(raw), reads=self._reads)
            claimed.append(Claimed(message, int(tries), float(first)))
        return Claim(tuple(claimed), expected, waiting_for_gap=status == 2)

    def tried(self, job_id: str, entry_ids: list[str]) -> None:
        """The entries are about to be sent to the ERP: count the try, note the first one's time."""
        now = repr(self._clock())
        with self._r.pipeline(transaction=True) as pipe:
            for entry_id in entry_ids:
                pipe.hincrby(erp_tries_key(job_id), entry_id, 1)
                pipe.hsetnx(erp_first_try_key(job_id), entry_id, now)
            pipe.pexpire(erp_tries_key(job_id), self._ttl_ms)
            pipe.pexpire(erp_first_try_key(job_id), self._ttl_ms)
            self._call(pipe.execute)

    def unclaim(self, slot: Lease, job_id: str, entries: tuple[Claimed, ...]) -> None:
        """Give claimed entries back (their post did not happen): staged again."""
        if not entries:
            return
        company = entries[0].message.company_id
        keys = [erp_claims_key(slot.key), self._budget.key(company, "jobs")]
        args: list[Any] = [self._prefix, repr(self._clock()), job_id]
        for claimed in entries:
            args += [claimed.message.accounting_entry_id, claimed.message.sequence]
        self._call(lambda: self._unclaim(keys=keys, args=args))

    def done(self, slot: Lease, job_id: str, entry_ids: list[str]) -> None:
        """Forget entries whose outcome is recorded: no longer staged nor claimed."""
        if not entry_ids:
            return
        with self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(erp_claims_key(slot.key), *[f"{job_id}|{e}" for e in entry_ids])
            pipe.hdel(ready_items_key(job_id), *entry_ids)
            self._call(pipe.execute)

    def advance(self, job_id: str, sequence: int) -> None:
        """Ordered: every entry below ``sequence`` has its outcome."""
        self._call(lambda: self._r.set(next_sequence_key(job_id), sequence, px=self._ttl_ms))

    def drop_job(self, company_id: str | None, job_id: str) -> None:
        """A finished job's staged entries are dropped: nothing more is posted for it."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(ready_key(job_id), ready_items_key(job_id))
            pipe.zrem(self._budget.key(company_id, "jobs"), job_id)
            self._call(pipe.execute)

    def recover(self, company_id: str | None) -> int:
        """Give back what slots nobody holds any more had claimed; returns how many entries."""
        return self._give_back(company_id, self._budget.slot_keys(company_id), "")

    def take_over(self, slot: Lease, company_id: str | None) -> int:
        """A slot just taken gives back what its last holder (dead, or gone) had claimed."""
        return self._give_back(company_id, [slot.key], slot.token)

    def _give_back(self, company_id: str | None, slots: list[str], token: str) -> int:
        keys = [self._budget.key(company_id, "jobs")]
        for slot in slots:
            keys += [slot, erp_claims_key(slot)]
        args = [self._prefix, repr(self._clock()), token]
        return int(self._call(lambda: self._recover(keys=keys, args=args)))

    def give_up(self, job_id: str, reason: str, reason_type: str) -> None:
        """Mark the job given up: no poster calls the ERP for it any more (first reason kept)."""
        value = json.dumps({"reason": reason, "type": reason_type})
        key = erp_gave_up_key(job_id)
        self._call(lambda: self._r.set(key, value, nx=True, px=self._ttl_ms))

    def given_up(self, job_id: str) -> tuple[str, str] | None:
        """Why the job was given up (reason, Pleo's reason type), if it was."""
        raw = self._call(lambda: self._r.get(erp_gave_up_key(job_id)))
        if raw is None:
            return None
        found = json.loads(raw)
        return found["reason"], found["type"]

    def claims_of(self, company_id: str | None, job_id: str) -> int:
        """How many of the job's entries posting slots hold claimed now (calls in flight)."""
        mine = f"{job_id}|".encode()

        def count() -> int:
            with self._r.pipeline(transaction=False) as pipe:
                for slot in self._budget.slot_keys(company_id):
                    pipe.hkeys(erp_claims_key(slot))
                return sum(1 for fields in pipe.execute() for f in fields if f.startswith(mine))

        return int(self._call(count))

    def companies(self) -> list[str | None]:
        """The companies this connection has staged entries for (the kick thread's round)."""
        found = self._call(lambda: self._r.smembers(erp_companies_key(self._budget.connection)))
        return [None if c == b"-" else c.decode() for c in sorted(found)]

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the ERP's ready entries")
