"""The one lock: a fenced lease in Redis, renewed by a heartbeat, taken over only from the dead.

A lease is one Redis key whose value names its holder (``{fence}:{run id}|{holder JSON}``); the
holder renews it every third of its TTL, and every write made under it (``ledger.py``'s scripts)
first checks that the value is still the holder's, so a holder that lost it can write nothing.
Each acquisition INCRs a fencing counter: tokens only grow while it lives. The counter expires
(``fence_ttl`` after the last acquisition or renewal, never sooner than the lease), so a live
lease never outlives its counter; one that expired starts again at 1. Correctness never rests on
the number: every write compares the whole token, whose run id is a fresh uuid4 per acquisition,
so a restarted counter cannot make an old holder's token match. The number is for logs and
``status`` (how many runs a job had).

How a second run decides, given a lease it finds held:

- the holder is a process on this machine that no longer exists (same boot and PID namespace, the
  PID gone or reused): it is dead, and its lease is taken over at once with a new fence;
- ``patient`` (the producer's runs): the lease is watched until it either lapses (its holder
  stopped renewing: dead or cut off; the lease is then free) or is seen renewed (the holder is
  alive). Only a holder seen alive makes a run step aside (``LeaseHeld``, naming the holder),
  after waiting ``wait`` seconds for it to finish. A run therefore never steps aside from a dead
  holder, and waits at most about one TTL for a lapsing lease;
- not patient (the write-back flusher, the supervisors): a held lease means step aside now.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import redis

from contract.errors import BrokerUnavailable, LeaseHeld, cause

log = logging.getLogger(__name__)

# KEYS[1] lease, KEYS[2] fence; ARGV[1] run id and holder, ARGV[2] ttl ms, ARGV[3] the value a
# caller found dead and takes over ("" for none), ARGV[4] the fence's ttl ms.
# Returns {fence} when the lease is now ours, else {0, value held, the moment it lapses in ms of
# Redis's own clock}: a later moment on a later look means the holder renewed it. (Redis's clock,
# not ours: our reading of "now + remaining" would move with every reply's latency.)
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[3] then
  local now = redis.call('TIME')
  local lapses = now[1] * 1000 + math.floor(now[2] / 1000) + redis.call('PTTL', KEYS[1])
  return {0, held, lapses}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
return {fence}
"""

# KEYS[1] lease, KEYS[2] fence; ARGV[1] token, ARGV[2] ttl ms, ARGV[3] the fence's ttl ms.
# Returns 1 if still ours (and extended, its fence with it), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] key; ARGV[1] value. Deletes the key only if it still holds the value (still ours).
DELETE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A renewal shows as a lapse moment later than the one seen before (Redis's clock: exact to 1 ms).
_RENEWAL_SLACK = 0.005
_POLL = 0.1
# How long a fencing counter outlives its lease's last acquisition or renewal, by default.
FENCE_TTL = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: a sentence for people, and enough to tell on this host if it died."""

    who: str
    host: str
    pid: int
    # Boot id and PID namespace: a PID means the same process only inside the same pair.
    node: str | None
    started: str | None

    @classmethod
    def here(cls, who: str) -> Holder:
        """This process, described as ``who`` (e.g. ``task 5e1f…`` or ``pleo-export run``)."""
        pid = os.getpid()
        return cls(who, socket.gethostname(), pid, _node(), _process_start(pid))

    def describe(self) -> str:
        """One phrase naming the holder, for logs and the ``locked`` answer."""
        return f"{self.who} (pid {self.pid} on {self.host})"

    def is_dead(self) -> bool:
        """True only when this holder was a process on this machine that is gone now."""
        if self.node is None or self.node != _node():
            return False
        if self.pid == os.getpid():
            # This very process is alive; whether a lease of its own is still used, only the
            # heartbeat tells.
            return False
        started = _process_start(self.pid)
        return started is None or started != self.started

    def encode(self) -> str:
        """The holder as stored after the run id in the lease value."""
        return json.dumps(
            {
                "who": self.who,
                "host": self.host,
                "pid": self.pid,
                "node": self.node,
                "started": self.started,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, value: str) -> Holder | None:
        """The holder stored in a lease value, or None for a value without one."""
        _, _, raw = value.partition("|")
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(
                str(data["who"]),
                str(data["host"]),
                int(data["pid"]),
                data.get("node"),
                data.get("started"),
            )
        except (ValueError, KeyError, TypeError):
            return None


def is_live(value: bytes | str | None) -> bool:
    """Whether a lease value read from Redis may still belong to a live holder.

    False for no lease, and for one whose holder is known dead (a gone process on this machine);
    a holder elsewhere counts as live until its lease lapses.
    """
    if value is None:
        return False
    holder = Holder.decode(_text(value))
    return holder is None or not holder.is_dead()


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: ``token`` is the value stored under ``key``, checked by every write."""

    key: str
    fence_key: str
    token: str
    fence: int
    job_id: str = ""

    @property
    def holder(self) -> Holder | None:
        """Who holds it (this process)."""
        return Holder.decode(self.token)


class Leases:
    """Acquires, renews and releases leases on one Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl: float,
        fence_ttl: float = FENCE_TTL,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = client
        self._ttl_ms = int(ttl * 1000)
        self._fence_ttl_ms = max(self._ttl_ms, int(fence_ttl * 1000))
        self._sleep = sleep
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(DELETE_IF_OURS)

    @property
    def ttl(self) -> float:
        """Seconds a lease lives without a heartbeat."""
        return self._ttl_ms / 1000

    def acquire(
        self,
        key: str,
        fence_key: str,
        *,
        who: str,
        wait: float,
        patient: bool,
        job_id: str = "",
    ) -> Lease:
        """Take the lease at ``key``, or raise LeaseHeld naming the live holder."""
        holder = Holder.here(who)
        run_id = f"{uuid.uuid4().hex}|{holder.encode()}"
        started = self._clock()
        seen: tuple[str, float] | None = None  # (value, the moment it was due to lapse)
        alive = False
        takeover = ""
        while True:
            args: list[str | int] = [run_id, self._ttl_ms, takeover, self._fence_ttl_ms]
            reply = self._call(partial(self._acquire, keys=[key, fence_key], args=args))
            if int(reply[0]):
                fence = int(reply[0])
                if takeover:
                    log.warning("lease_taken_over key=%s fence=%d from=%s", key, fence, takeover)
                log.info("lease_acquired key=%s fence=%d", key, fence)
                return Lease(key, fence_key, f"{fence}:{run_id}", fence, job_id)
            value, due = _text(reply[1]), int(reply[2]) / 1000
            now = self._clock()
            other = Holder.decode(value)
            if other is not None and other.is_dead():
                takeover = value
                continue
            takeover = ""
            if seen is None or seen[0] != value:
                seen, alive = (value, due), False
            elif due > seen[1] + _RENEWAL_SLACK:
                # The holder moved its expiry on since we last looked: it is heartbeating.
                seen, alive = (value, due), True
            if (alive or not patient) and now - started >= wait:
                described = other.describe() if other is not None else "another run"
                state = "and is alive" if alive else "now"
                raise LeaseHeld(
                    f"{described} holds {_what(key, job_id)} {state}; this run steps aside.",
                    job_id=job_id or None,
                )
            self._sleep(_POLL)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False means it lapsed and may belong to another run now."""
        keys = [lease.key, lease.fence_key]
        args: list[str | int] = [lease.token, self._ttl_ms, self._fence_ttl_ms]
        return bool(self._call(lambda: self._renew(keys=keys, args=args)))

    def release(self, lease: Lease) -> None:
        """Give the lease back, if it is still ours."""
        self._call(lambda: self._release(keys=[lease.key], args=[lease.token]))

    @contextmanager
    def held(
        self, key: str, fence_key: str, *, who: str, wait: float, patient: bool, job_id: str = ""
    ) -> Iterator[Lease]:
        """Hold a lease for a block, renewed by a heartbeat thread, released at the end."""
        lease = self.acquire(key, fence_key, who=who, wait=wait, patient=patient, job_id=job_id)
        with self.kept(lease):
            yield lease

    def try_acquire(self, key: str, fence_key: str, *, who: str) -> Lease | None:
        """The lease at ``key`` if it is free (or its holder died here), else None at once."""
        try:
            return self.acquire(key, fence_key, who=who, wait=0, patient=False)
        except LeaseHeld:
            return None

    @contextmanager
    def kept(self, lease: Lease) -> Iterator[Lease]:
        """Renew a lease already acquired by a heartbeat thread for a block, then release it."""
        key = lease.key
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(lease, stop), name=f"lease-{key}", daemon=True
        )
        beat.start()
        try:
            yield lease
        finally:
            stop.set()
            beat.join()
            try:
                self.release(lease)
            except BrokerUnavailable:
                log.warning("lease_release_failed key=%s (it lapses by itself)", key)

    def _heartbeat(self, lease: Lease, stop: threading.Event) -> None:
        # Renew at a third of the TTL: two missed beats still leave the lease alive.
        interval = self._ttl_ms / 3000
        while not stop.wait(interval):
            try:
                if not self.renew(lease):
                    log.error("lease_lost key=%s fence=%d", lease.key, lease.fence)
                    return
            except BrokerUnavailable:
                log.warning("lease_renew_failed key=%s", lease.key)

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis could not be reached for a lease: {cause(exc)}."
            ) from exc


def _what(key: str, job_id: str) -> str:
    return f"export job {job_id}" if job_id else f"the lease {key}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@cache
def _node() -> str | None:
    """This machine's boot id and PID namespace, or None where they cannot be read (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{pidns}"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rsplit(")", 1)[1].split()[19]
