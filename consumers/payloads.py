"""Export-item payloads for messages that carry none.

With ``PLEO_ORDERING=entry_id`` the producer skips the data layer, and an entry the data layer
lacked arrives with ``export_item: null``. Pleo has no per-entry lookup, so the first worker that
needs a payload pages through ``/v3/export-items?job_id=`` once, under the job's
``:payloads-lock`` lease (the one lock, ``contract/lease.py``: a reader that dies frees it at once
on its own machine, else within the lease TTL), and stores
every payload in Redis (``:payloads``); the others wait for it and read from there.

The final event deletes ``:payloads`` (``pleo/final_event.py``); a reader still at work then
writes nothing more (each write first checks that the job has no final event), so no export item
outlives its job in Redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from contract.errors import LeaseHeld, TransientUpstreamError
from contract.keys import final_key, lease_keys, payloads_key
from contract.lease import Leases
from contract.store import redis_call
from pleo.client import PleoClient

log = logging.getLogger(__name__)

_COMPLETE = "__complete__"  # field written last: the hash holds the whole data layer
_CHUNK = 1000  # payloads per write, well below Lua's limit on unpacked arguments

# KEYS[1] payloads, KEYS[2] the job's final event; ARGV[1] ttl ms, then field, value pairs.
# Writes them with the key's expiry unless the job has (or is sending) its final event: 1, else 0.
_STORE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


class PayloadCache:
    """Reads a job's data layer once and serves each entry's payload from Redis."""

    def __init__(
        self,
        client: redis.Redis,
        pleo: PleoClient,
        *,
        dedup_ttl: int,
        lease_ttl: float = 10.0,
        wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = client
        self._pleo = pleo
        self._leases = Leases(client, ttl=lease_ttl, fence_ttl=dedup_ttl)
        self._ttl_ms = dedup_ttl * 1000
        self._wait = wait
        self._sleep = sleep
        self._clock = clock
        self._store_script = client.register_script(_STORE)

    def get(self, job_id: str, entry_id: str) -> Mapping[str, Any] | None:
        """The entry's export item, or None when the job's data layer has none for it."""
        key = payloads_key(job_id)
        deadline = self._clock() + self._wait
        while True:
            found, complete = self._call(lambda: self._r.hmget(key, [entry_id, _COMPLETE]))
            if found is not None:
                return dict(json.loads(found))
            if complete is not None:
                return None
            if self._try_fill(job_id):
                continue
            if self._clock() > deadline:
                raise TransientUpstreamError(
                    f"Another worker is still reading the data layer of job {job_id}.",
                    job_id=job_id,
                )
            self._sleep(0.2)

    def _try_fill(self, job_id: str) -> bool:
        """Read the data layer into Redis unless another worker is at it (the one lock)."""
        lock, fence = lease_keys(job_id, "payloads-lock")
        try:
            with self._leases.held(
                lock, fence, who="payload reader", wait=0, patient=False, job_id=job_id
            ):
                self._fill(job_id)
        except LeaseHeld:
            return False
        return True

    def _fill(self, job_id: str) -> None:
        count = 0
        for page in self._pleo.iter_export_items(job_id):
            mapping = {i.accounting_entry_id: json.dumps(i.payload) for i in page.items}
            rows = list(mapping.items())
            for start in range(0, len(rows), _CHUNK):
                self._store(job_id, dict(rows[start : start + _CHUNK]))
            count += len(page.items)
        self._store(job_id, {_COMPLETE: "1"})
        log.info("payloads_cached job_id=%s items=%d", job_id, count)

    def _store(self, job_id: str, mapping: Mapping[str, str]) -> None:
        """Write payloads with the key's expiry (a reader that dies mid-way leaves none forever),
        unless the job finished meanwhile: then nothing is written and the message is retried
        (its next delivery finds the final event and is skipped)."""
        keys = [payloads_key(job_id), final_key(job_id)]
        args: list[str | int] = [self._ttl_ms]
        for field, value in mapping.items():
            args += [field, value]
        if not self._call(lambda: self._store_script(keys=keys, args=args)):
            raise TransientUpstreamError(
                f"Export job {job_id} finished while its data layer was being read.",
                job_id=job_id,
            )

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "payloads")
