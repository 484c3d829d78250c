"""Export-item payloads for messages that carry none.

With ``PLEO_ORDERING=entry_id`` the producer skips the data layer, and an entry the data layer
lacked arrives with ``export_item: null``. Pleo has no per-entry lookup, so the first worker that
needs a payload pages through ``/v3/export-items?job_id=`` once, under the job's
``:payloads-lock`` lease (the one lock, ``contract/lease.py``: a reader that dies frees it at once
on its own machine, else within the lease TTL), and stores
every payload in Redis (``:payloads``); the others wait for it and read from there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from contract.errors import LeaseHeld, TransientUpstreamError
from contract.keys import lease_keys, payloads_key
from contract.lease import Leases
from contract.store import redis_call
from pleo.client import PleoClient

log = logging.getLogger(__name__)

_COMPLETE = "__complete__"  # field written last: the hash holds the whole data layer


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
        key = payloads_key(job_id)
        count = 0
        for page in self._pleo.iter_export_items(job_id):
            mapping = {i.accounting_entry_id: json.dumps(i.payload) for i in page.items}
            if mapping:
                self._call(lambda m=mapping: self._store(key, m))  # type: ignore[misc]
            count += len(page.items)
        self._call(lambda: self._store(key, {_COMPLETE: "1"}))
        log.info("payloads_cached job_id=%s items=%d", job_id, count)

    def _store(self, key: str, mapping: Mapping[str, str]) -> None:
        """Write payloads with the key's expiry: a reader that dies mid-way leaves none forever."""
        with self._r.pipeline(transaction=True) as pipe:
            fields: dict[FieldT, EncodableT] = dict(mapping.items())
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, self._ttl_ms)
            pipe.execute()

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "payloads")
