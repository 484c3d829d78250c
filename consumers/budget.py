"""One budget per ERP connection and company, shared by every worker process and host.

Everything lives in Redis (``contract.keys.erp_key``), so four processes on two hosts send what
one would, not four times the ERP's limit (Celery's own ``rate_limit`` is per process):

- **calls**: a token bucket of ``burst`` tokens refilled at ``calls`` per ``period`` seconds,
  measured on Redis's own clock (hosts whose clocks differ share one rate); each ERP call takes a
  token, and a caller that finds none is told how long until one is due;
- **concurrency**: ``concurrency`` posting slots, each a lease (``contract/lease.py``, the one
  lock): only a slot holder calls the ERP, so no more than that many calls are ever in flight; a
  killed worker's slot lapses within the lease TTL (at once on its own host), and the entries it
  had claimed go back to the ready entries (``consumers/ready.py``);
- **a pause**: a 429 with ``Retry-After`` (or the ERP unreachable) pauses the whole connection
  for every worker until the moment it names; the bucket then waits as well.

The budget is keyed by connection *and* company, so one deployment can serve several companies
without a redesign; the limits are the adapter's declaration (``consumers.erp.ERPLimits``) with
the ``ERP_*`` settings' overrides.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis

from consumers.erp import UNLIMITED, ERPLimits
from contract.keys import erp_key
from contract.lease import Lease, Leases
from contract.settings import Settings
from contract.store import redis_call

log = logging.getLogger(__name__)

# Posting slots of a connection that declares no concurrency limit: enough to keep a local
# database busy, few enough that a fleet never opens hundreds of ERP connections at once.
DEFAULT_SLOTS = 8
# Slots whose claims are looked after even when the concurrency is lower now (it was lowered
# with claims in hand, say).
LOOKED_AFTER = 32

# KEYS[1] bucket, KEYS[2] pause; ARGV[1] tokens per ms (0: no rate limit), ARGV[2] burst.
# Takes a token and returns 0, or returns the ms until one is due (or the pause ends).
_TAKE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return paused - now end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate <= 0 then return 0 end
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 60000)
return wait
"""

# KEYS[1] pause; ARGV[1] ms from now. Moves the pause's end later, never earlier; returns its ms.
_PAUSE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ends = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= ends then return current - now end
redis.call('SET', KEYS[1], ends, 'PX', ARGV[1])
return tonumber(ARGV[1])
"""


def limits_for(adapter: object, settings: Settings) -> ERPLimits:
    """What the adapter declares (``limits``; none: unlimited), with the settings' overrides."""
    declared = getattr(adapter, "limits", None)
    limits = declared if isinstance(declared, ERPLimits) else UNLIMITED
    overrides: dict[str, Any] = {
        "calls": settings.erp_calls,
        "period": settings.erp_period,
        "burst": settings.erp_burst,
        "concurrency": settings.erp_concurrency,
        "batch_size": settings.erp_batch_size,
        "ordered": settings.erp_ordered,
    }
    return dataclasses.replace(limits, **{k: v for k, v in overrides.items() if v is not None})


def governed(limits: ERPLimits) -> bool:
    """Whether posting goes through the shared budget (anything declared beyond "unlimited")."""
    return limits != dataclasses.replace(UNLIMITED, idempotency_key=limits.idempotency_key)


class Budget:
    """The shared budget of one ERP connection, per company (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        limits: ERPLimits,
        *,
        connection: str,
        lease_ttl: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._r = client
        self.limits = limits
        self.connection = connection
        self.slots = limits.concurrency or DEFAULT_SLOTS
        self._leases = Leases(client, ttl=lease_ttl)
        self._sleep = sleep
        self._take = client.register_script(_TAKE)
        self._pause = client.register_script(_PAUSE)
        if limits.calls is None:
            self._rate, self._burst = 0.0, 1
        else:
            # Any ``period`` of the bucket's life holds at most burst + rate * period calls: the
            # rate is what is left of ``calls`` after the burst, so no window of ``period``
            # seconds (the ERP's own count, a sliding window at worst) ever sees more than
            # ``calls``. The default burst of 1 keeps all but one call of each period.
            self._burst = limits.burst or 1
            spare = limits.calls - self._burst if limits.calls > self._burst else limits.calls
            self._rate = spare / (limits.period * 1000)

    @property
    def leases(self) -> Leases:
        """The leases the slots are (for holding one while posting)."""
        return self._leases

    def key(self, company_id: str | None, name: str) -> str:
        """This connection's key ``name`` for ``company_id``."""
        return erp_key(self.connection, company_id, name)

    def take_slot(self, company_id: str | None, who: str) -> Lease | None:
        """A free posting slot's lease (tried in random order), or None when all are held."""
        order = list(range(self.slots))
        random.shuffle(order)
        for index in order:
            key = self.key(company_id, f"slot:{index}")
            lease = self._leases.try_acquire(key, f"{key}-fence", who=who)
            if lease is not None:
                return lease
        return None

    def slot_keys(self, company_id: str | None) -> list[str]:
        """The company's slot lease keys, and as many more as a larger concurrency set earlier
        could have used (``LOOKED_AFTER``): claims left in those are given back too."""
        return [self.key(company_id, f"slot:{i}") for i in range(max(self.slots, LOOKED_AFTER))]

    def held_slots(self, company_id: str | None) -> int:
        """How many of the company's posting slots are held now."""
        keys = [self.key(company_id, f"slot:{i}") for i in range(self.slots)]
        return int(self._call(lambda: self._r.exists(*keys)))

    def wait_for_call(self, company_id: str | None) -> float:
        """Take a call's token and return 0, or return the seconds until one is due."""
        keys = [self.key(company_id, "bucket"), self.key(company_id, "paused")]
        args: list[Any] = [repr(self._rate), self._burst]
        return int(self._call(lambda: self._take(keys=keys, args=args))) / 1000

    def paused_for(self, company_id: str | None) -> float:
        """Seconds left of the connection's pause (0: not paused)."""
        ms = self._call(lambda: self._r.pttl(self.key(company_id, "paused")))
        return max(0, int(ms)) / 1000

    def pause(self, company_id: str | None, seconds: float) -> float:
        """Pause every worker's calls for ``seconds`` (never shortening a longer pause)."""
        ms = max(1, int(seconds * 1000))
        left = int(
            self._call(lambda: self._pause(keys=[self.key(company_id, "paused")], args=[ms]))
        )
        log.warning(
            "erp_paused connection=%s company=%s for=%.1fs",
            self.connection,
            company_id or "-",
            left / 1000,
        )
        return left / 1000

    def failed(self, company_id: str | None) -> int:
        """Count a failed ERP call in a row (for the pause's backoff); returns how many now."""
        key = self.key(company_id, "failures")

        def bump() -> int:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, 3_600_000)
                return int(pipe.execute()[0])

        return int(self._call(bump))

    def succeeded(self, company_id: str | None) -> None:
        """An ERP call answered: the failures in a row start again from none."""
        self._call(lambda: self._r.delete(self.key(company_id, "failures")))

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the ERP budget")
