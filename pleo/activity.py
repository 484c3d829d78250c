"""When we last acted on each export job in Pleo: the moment its ``expiresIn`` counts from.

Pleo fails a job with ``job_expired`` once ``expiresIn`` seconds pass with no action on it (its
``lastUpdatedAt``). The actions that move that clock are ours: the producer's accepted ``started``,
the ERP workers' accepted item PUTs and the final event. Each is stamped in ``:pleo-action-at``
(epoch seconds) with the time read just before its request, so a stamp is never later than the
``lastUpdatedAt`` it caused; of stamps that race, the latest stays. With the ``expires_in`` the
producer keeps in the job's progress record, that tells a worker whether Pleo may have expired
the job without asking Pleo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from contract.keys import pleo_action_key, progress_key
from contract.store import redis_call

# KEYS[1] the stamp; ARGV[1] epoch seconds, ARGV[2] ttl ms. Keeps the later of the stored
# stamp and ARGV[1] (a slow request must not move the stamp back) and refreshes the TTL.
_TOUCH = """
local stored = tonumber(redis.call('GET', KEYS[1]))
if stored == nil or stored < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Expiry:
    """A job's ``expiresIn`` and the time of our last action on it (epoch seconds)."""

    expires_in: int
    acted_at: float

    def overdue(self, now: float) -> bool:
        """Whether more than ``expires_in`` seconds have passed since our last action."""
        return now - self.acted_at > self.expires_in


class PleoActivity:
    """Stamps and reads the time of our last action on each job in Pleo."""

    def __init__(self, client: redis.Redis, *, dedup_ttl: int) -> None:
        self._r = client
        self._ttl_ms = dedup_ttl * 1000
        self._touch = client.register_script(_TOUCH)

    def touch(self, job_id: str, at: float) -> None:
        """Record an action Pleo accepted, requested at ``at`` (epoch seconds)."""
        args: list[str | int] = [repr(at), self._ttl_ms]
        self._call(lambda: self._touch(keys=[pleo_action_key(job_id)], args=args))

    def expiry(self, job_id: str) -> Expiry | None:
        """The job's expiresIn and our last action on it; None while either is unknown."""

        def read() -> list[Any]:
            with self._r.pipeline(transaction=False) as pipe:
                pipe.hget(progress_key(job_id), "expires_in")
                pipe.get(pleo_action_key(job_id))
                return list(pipe.execute())

        expires_in, acted_at = self._call(read)
        if expires_in is None or acted_at is None:
            return None
        return Expiry(int(expires_in), float(acted_at))

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the job's Pleo activity")
