"""One ERP worker process's parts, each built once, when first used, from the app's settings.

The Redis client, the Pleo client, the ERP adapter and what a governed connection posts with
(its limits, budget, staged entries and poster threads), the reporter, the payload cache, the
receipt transfer and the failure breaker. A prefork pool process builds its own after the fork:
nothing here is built at import. ``consumers/tasks.py`` holds one ``Components`` per process.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

import httpx
import redis

from consumers.adapters import build_adapter
from consumers.breaker import Breaker
from consumers.budget import Budget, limits_for
from consumers.ending import JobEnding, file_allowance, post_allowance
from consumers.erp import ERPAdapter, ERPLimits
from consumers.erp_calls import PosterSettings, drain_limit
from consumers.payloads import PayloadCache
from consumers.poster import Poster
from consumers.ready import ReadyEntries
from consumers.receipts import Receipts, ReceiptSettings
from consumers.reporting import Reporter
from contract.ledger import Ledger
from contract.retrying import RetryPolicy
from contract.settings import Settings
from contract.store import ledger_client
from pleo.client import PleoClient, make_http_client


class Components:
    """This process's parts (see the module docstring); ``write_back(job_id, waiting)`` is what
    a poster calls once it recorded outcomes that wait to be reported."""

    def __init__(
        self, settings: Callable[[], Settings], write_back: Callable[[str, int], None]
    ) -> None:
        self._settings = settings
        self._write_back = write_back

    def new_erp(self) -> ERPAdapter:
        """A new ERP adapter (``ERP_ADAPTER``), not this process's own."""
        return build_adapter(self._settings())

    @functools.cached_property
    def redis(self) -> redis.Redis:
        return ledger_client(self._settings())

    @functools.cached_property
    def pleo(self) -> PleoClient:
        http: httpx.Client = make_http_client(self._settings())
        return PleoClient(http, self._settings())

    @functools.cached_property
    def erp(self) -> ERPAdapter:
        return self.new_erp()

    @functools.cached_property
    def limits(self) -> ERPLimits:
        return limits_for(self.erp, self._settings())

    @functools.cached_property
    def budget(self) -> Budget:
        s = self._settings()
        return Budget(self.redis, self.limits, connection=s.erp_connection, lease_ttl=s.lease_ttl)

    @functools.cached_property
    def ready(self) -> ReadyEntries:
        s = self._settings()
        return ReadyEntries(self.redis, self.budget, dedup_ttl=s.dedup_ttl, reads=s.reads_schemas)

    @functools.cached_property
    def posters(self) -> tuple[tuple[Poster, threading.Lock], ...]:
        """``ERP_POSTER_THREADS`` posters, each with the lock it holds while it drains (each
        holds one slot at a time)."""
        count = self._settings().erp_poster_threads
        return tuple((self._new_poster(n), threading.Lock()) for n in range(count))

    def _new_poster(self, n: int) -> Poster:
        s = self._settings()
        return Poster(
            self.redis,
            erp=self.erp,
            budget=self.budget,
            ready=self.ready,
            reporter=self.reporter,
            payloads=self.payloads,
            receipts=self.receipts,
            settings=PosterSettings(
                key_window=s.erp_key_window,
                order_wait=s.erp_order_wait,
                unreachable_limit=s.erp_unreachable_limit,
                retry_delay=s.erp_retry_delay,
                dedup_ttl=s.dedup_ttl,
                max_drain=drain_limit(s.visibility_timeout),
            ),
            write_back=self._write_back,
            who=f"pid {os.getpid()} poster {n}",
        )

    @functools.cached_property
    def breaker(self) -> Breaker:
        return Breaker()

    @functools.cached_property
    def reporter(self) -> Reporter:
        s = self._settings()
        ledger = Ledger(self.redis, lease_ttl=s.lease_ttl, dedup_ttl=s.dedup_ttl)
        return Reporter(
            self.redis,
            self.pleo,
            ledger,
            dedup_ttl=s.dedup_ttl,
            max_attempts=s.report_max_attempts,
            request_timeout=s.http_timeout,
            retry_budget=s.retry_budget,
            post_allowance=post_allowance(s),
            file_allowance=file_allowance(s),
        )

    @functools.cached_property
    def ending(self) -> JobEnding:
        """A plain connection's job ending for the ERP (consumers/ending.py)."""
        return JobEnding(self.redis, dedup_ttl=self._settings().dedup_ttl)

    @functools.cached_property
    def payloads(self) -> PayloadCache:
        s = self._settings()
        return PayloadCache(self.redis, self.pleo, dedup_ttl=s.dedup_ttl, lease_ttl=s.lease_ttl)

    @functools.cached_property
    def receipts(self) -> Receipts:
        """The receipt transfer (``ERP_RECEIPTS``; consumers/receipts.py)."""
        s = self._settings()
        return Receipts(
            ReceiptSettings.from_settings(s), self.pleo, retry=RetryPolicy.from_settings(s)
        )
