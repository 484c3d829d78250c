"""Redis ledger: the per-job lease (``lease.py``), the per-(job, entry) marks, and job progress.

Key names and lifetimes are listed in ``contract/keys.py``. The Redis-broker publish path writes
marks, messages and counters in one Lua script (see ``publish.py``); every script checks the
caller's lease token first, so a run whose lease expired and was taken over cannot publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import redis
from redis.typing import EncodableT, FieldT

from contract.errors import BrokerUnavailable, LeaseLost, cause
from contract.keys import ACTIVE_JOBS_KEY, lease_keys, marks_key, placed_key, progress_key
from contract.lease import Lease, Leases
from contract.states import JobState
from contract.store import now_iso, redis_call

log = logging.getLogger(__name__)

T = TypeVar("T")

PUBLISHED = "p"
RESERVED = "r"


# KEYS[1] lease, KEYS[2] marks; ARGV[1] token, ARGV[2] marks ttl ms, ARGV[3..] entry ids.
# Reserves each entry not yet published; returns the ids to publish now (new or reserved
# earlier but never confirmed), or -1 when the lease is no longer ours.
_RESERVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local todo = {}
for i = 3, #ARGV do
  local mark = redis.call('HGET', KEYS[2], ARGV[i])
  if mark ~= 'p' then
    if not mark then redis.call('HSET', KEYS[2], ARGV[i], 'r') end
    todo[#todo + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return todo
"""

# KEYS[1] lease, KEYS[2] marks, KEYS[3] broker queue list, KEYS[4] progress, KEYS[5] placed;
# ARGV[1] token, ARGV[2] ttl ms, then triples (entry id, encoded message, placement) in plan
# order. Marks each new entry published, records its placement and LPUSHes its message,
# atomically; returns the number added, or -1 when the lease is no longer ours (nothing written).
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local fresh = {}
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], 'p') == 1 then
    fresh[#fresh + 1] = ARGV[i + 1]
    redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 2])
  end
end
local added = #fresh
-- One LPUSH per 1000 messages keeps plan order and stays far below Lua's unpack limit.
for first = 1, added, 1000 do
  redis.call('LPUSH', KEYS[3], unpack(fresh, first, math.min(first + 999, added)))
end
local offered = (#ARGV - 2) / 3
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if added > 0 then redis.call('PEXPIRE', KEYS[5], ARGV[2]) end
redis.call('HINCRBY', KEYS[4], 'enqueued', added)
redis.call('HINCRBY', KEYS[4], 'already_enqueued', offered - added)
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return added
"""


class Ledger:
    """The job's state in Redis: who runs it, what was published, how far it got."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        lease_ttl: float,
        dedup_ttl: int,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = client
        self._ttl_ms = dedup_ttl * 1000
        self._leases = Leases(client, ttl=lease_ttl, fence_ttl=dedup_ttl, sleep=sleep, clock=clock)
        self._reserve = client.register_script(_RESERVE)
        self._publish = client.register_script(_PUBLISH)

    @property
    def client(self) -> redis.Redis:
        """The Redis this ledger writes to."""
        return self._r

    @property
    def ttl_ms(self) -> int:
        """How long the job's records live, in milliseconds (``PLEO_DEDUP_TTL``)."""
        return self._ttl_ms

    # -- lease -------------------------------------------------------------------------------

    @property
    def leases(self) -> Leases:
        """The lease manager on this ledger's Redis (the one lock, see ``contract/lease.py``)."""
        return self._leases

    def acquire(
        self, job_id: str, *, wait: float, name: str = "lease", who: str | None = None
    ) -> Lease:
        """Take the job's lease ``name``, or raise LeaseHeld while a live holder keeps it.

        ``lease`` is the producer's (patient: it waits out a lapsing lease, so a run never steps
        aside from a dead one); the ERP workers hold ``flush`` while writing results back and
        step aside at once when it is held.
        """
        key, fence = lease_keys(job_id, name)
        return self._leases.acquire(
            key, fence, who=who or name, wait=wait, patient=name == "lease", job_id=job_id
        )

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False means it expired and may belong to another run now."""
        return self._leases.renew(lease)

    def release(self, lease: Lease) -> None:
        """Give the lease back, if it is still ours."""
        self._leases.release(lease)

    def held(
        self, job_id: str, *, wait: float, name: str = "lease", who: str | None = None
    ) -> AbstractContextManager[Lease]:
        """Hold the job's lease ``name`` for a block, renewing it from a heartbeat thread."""
        key, fence = lease_keys(job_id, name)
        return self._leases.held(
            key, fence, who=who or name, wait=wait, patient=name == "lease", job_id=job_id
        )

    # -- marks -------------------------------------------------------------------------------

    def publish_batch(
        self, lease: Lease, queue_key: str, triples: Sequence[tuple[str, bytes, str]]
    ) -> int:
        """Atomically mark, place and LPUSH each new (entry id, message, placement).

        Returns how many were new.
        """
        args: list[str | bytes | int] = [lease.token, self._ttl_ms]
        for entry_id, message, placed in triples:
            args += [entry_id, message, placed]
        keys = [
            lease.key,
            marks_key(lease.job_id),
            queue_key,
            progress_key(lease.job_id),
            placed_key(lease.job_id),
        ]
        added: int = self._call(self._publish, keys, args)
        if added < 0:
            raise LeaseLost(
                f"The lease on export job {lease.job_id} was lost before publishing.",
                job_id=lease.job_id,
            )
        return added

    def reserve(self, lease: Lease, entry_ids: Sequence[str]) -> list[str]:
        """Reserve entries for a confirm-based publish; return those not yet confirmed."""
        result = self._call(
            self._reserve,
            [lease.key, marks_key(lease.job_id)],
            [lease.token, self._ttl_ms, *entry_ids],
        )
        if result == -1:
            raise LeaseLost(
                f"The lease on export job {lease.job_id} was lost before publishing.",
                job_id=lease.job_id,
            )
        return [e.decode() if isinstance(e, bytes) else str(e) for e in result]

    def confirm(self, job_id: str, placed: Mapping[str, str], *, already: int) -> None:
        """Mark entries published once the broker confirmed them, and count them.

        ``placed`` maps each confirmed entry to its placement (``contract.message.placement``).
        """
        if not placed and not already:
            return
        with self._pipeline() as pipe:
            if placed:
                pipe.hset(marks_key(job_id), mapping=dict.fromkeys(placed, PUBLISHED))
                pipe.hset(placed_key(job_id), mapping=_fields(placed))
                pipe.pexpire(placed_key(job_id), self._ttl_ms)
            pipe.hincrby(progress_key(job_id), "enqueued", len(placed))
            pipe.hincrby(progress_key(job_id), "already_enqueued", already)
            pipe.pexpire(marks_key(job_id), self._ttl_ms)
            pipe.execute()

    def marks(self, job_id: str) -> dict[str, str]:
        """Every entry's mark for the job (for status and tests)."""
        raw = self._call_plain(lambda: self._r.hgetall(marks_key(job_id)))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- progress ----------------------------------------------------------------------------

    def start_run(self, job_id: str, fence: int, *, holder: str = "") -> None:
        """Open a run's progress record (counters of this run at zero); the job is active now."""
        fields: dict[FieldT, EncodableT] = {
            "state": JobState.CLAIMING.value,
            "holder": holder,
            "interrupted_at": "",
            "fence": fence,
            "started_at": now_iso(),
            "updated_at": now_iso(),
            "pages": 0,
            "items_seen": 0,
            "planned": 0,
            "enqueued": 0,
            "already_enqueued": 0,
            "error": "",
            "finished_at": "",
            # A failed run's note that Pleo could not be told (producer/runner.py): this run may.
            "final_event_unsent": "",
        }
        with self._pipeline() as pipe:
            pipe.hset(progress_key(job_id), mapping=fields)
            pipe.hincrby(progress_key(job_id), "runs", 1)
            pipe.pexpire(progress_key(job_id), self._ttl_ms)
            # A raw send_task trigger never passed through triggers.enqueue: index it here too.
            pipe.zadd(ACTIVE_JOBS_KEY, {job_id: time.time()}, nx=True)
            pipe.pexpire(ACTIVE_JOBS_KEY, self._ttl_ms)
            pipe.execute()

    def record(self, job_id: str, **fields: str | int | float) -> None:
        """Set progress fields (state, counters, job status...) and stamp the update time."""
        mapping: dict[FieldT, EncodableT] = {"updated_at": now_iso()}
        mapping.update(fields.items())
        with self._pipeline() as pipe:
            pipe.hset(progress_key(job_id), mapping=mapping)
            pipe.pexpire(progress_key(job_id), self._ttl_ms)
            pipe.execute()

    def progress(self, job_id: str) -> dict[str, str]:
        """The job's progress record, empty when no run was ever recorded."""
        raw = self._call_plain(lambda: self._r.hgetall(progress_key(job_id)))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _pipeline(self) -> Iterator[redis.client.Pipeline]:
        try:
            with self._r.pipeline(transaction=True) as pipe:
                yield pipe
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis refused a ledger write: {cause(exc)}.") from exc

    def _call(
        self,
        script: redis.commands.core.Script,
        keys: Sequence[str],
        args: Sequence[str | bytes | int],
    ) -> Any:
        # Script replies are untyped by nature (integers, arrays, bulk strings).
        return self._call_plain(lambda: script(keys=list(keys), args=list(args)))

    @staticmethod
    def _call_plain(fn: Callable[[], T]) -> T:
        return redis_call(fn, "the ledger")


def _fields(mapping: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """``mapping`` as redis-py's hash writers type it."""
    return dict(mapping.items())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
