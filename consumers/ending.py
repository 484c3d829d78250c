"""A plain connection's job ended for the ERP's sake, with no booking left to land after it.

On the direct path (an ungoverned connection, ``consumers/worker.py``) every worker posts on its
own. A worker that ends the job (the ERP refused its credential for good, or stayed unreachable
past ``ERP_UNREACHABLE_LIMIT``) is not the only one calling the ERP: another worker's post may
already be past the ERP's checks and book a moment later. Were the final event sent first, that
booking would never be reported (Pleo takes no item update of a finished job). So the ending
worker, in ``end_job``:

1. marks the job ending (``keys.erp_ending_key``): from then on the read before each post
   (``consumers/item_records.py`` ``BEFORE``) refuses to start one;
2. takes its own entry out of flight: its post booked nothing (refused), or never answered;
3. waits until no entry of the job is in flight (``keys.erp_in_flight_key``: noted by ``BEFORE``
   with a deadline, cleared by ``AFTER`` with the outcome), or until each one's deadline has
   passed: a worker killed mid-post leaves its note behind, and it holds the job at most
   ``post_allowance`` after the mark (``file_allowance`` more per receipt of a booked entry);
4. writes back every recorded outcome, then sends the final event.

The deadlines are epoch seconds written by the posting worker's clock: hosts' clocks must agree
to within the margin, as they must for the job's other stamps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis

from consumers.erp_calls import FLUSH_BEFORE_FAILING
from consumers.item_records import START_WITHIN
from consumers.reporting import Reporter
from contract.credentials import refresh_wait
from contract.keys import erp_ending_key, erp_in_flight_key
from contract.settings import Settings
from contract.store import redis_call

log = logging.getLogger(__name__)

# Slack on every allowance: the worker's own steps between its calls, a slow scheduler.
MARGIN: Final = 5.0
# How often an ending worker looks at the posts in flight (seconds).
POLL: Final = 0.1


def post_allowance(settings: Settings) -> float:
    """How long after its note in flight a post can still book, at most (seconds).

    It starts within ``START_WITHIN`` of the note; before each of its (at most two) requests, the
    second after a 401, it may wait for a credential refresh (``refresh_wait``), and each request
    is answered or given up within ``ERP_HTTP_TIMEOUT``. At the defaults: 1 + 2 * (30 + 10) + 5
    = 86 s.
    """
    one_request = refresh_wait(settings) + settings.erp_http_timeout
    return START_WITHIN + 2 * one_request + MARGIN


def file_allowance(settings: Settings) -> float:
    """How long one receipt of a booked entry may take, at most (seconds): its download (each
    try within ``ERP_RECEIPT_TIMEOUT``, retried within ``PLEO_RETRY_BUDGET``), then its upload
    (as a post: two requests, each perhaps after a refresh). At the defaults 60 + 30 + 80 s."""
    upload = 2 * (refresh_wait(settings) + settings.erp_http_timeout)
    return settings.retry_budget + settings.erp_receipt_timeout + upload


@dataclass(frozen=True, slots=True)
class Waited:
    """What an ending worker waited for: posts in flight when it began, seconds waited, and how
    many were still noted (their workers gone, or over their allowance) when it stopped."""

    posts: int
    seconds: float
    abandoned: int


class JobEnding:
    """The ending mark and the wait for the posts in flight (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        dedup_ttl: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._r = client
        self._ttl_ms = dedup_ttl * 1000
        self._clock = clock
        self._sleep = sleep

    def mark(self, job_id: str, entry_id: str) -> None:
        """No post of the job starts from now on; ``entry_id``'s own post is no longer in flight."""
        now = repr(self._clock())

        def write() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.set(erp_ending_key(job_id), now, nx=True, px=self._ttl_ms)
                pipe.hdel(erp_in_flight_key(job_id), entry_id)
                pipe.execute()

        redis_call(write, "reporting")

    def release(self, job_id: str, entry_id: str) -> None:
        """``entry_id``'s post is over without an outcome (the ERP unreachable): not in flight.

        A post that timed out may still be booked by the ERP later; no wait on our side could
        cover that (its worker has stopped waiting), so its note would only hold a job's end.
        """
        redis_call(lambda: self._r.hdel(erp_in_flight_key(job_id), entry_id), "reporting")

    def in_flight(self, job_id: str) -> list[float]:
        """The deadlines of the job's posts in flight (epoch seconds), passed or not."""
        raw = redis_call(lambda: self._r.hvals(erp_in_flight_key(job_id)), "reporting")
        return [float(value) for value in raw]

    def wait(self, job_id: str) -> Waited:
        """Wait until no post of the job is in flight, or every one's deadline has passed."""
        started = self._clock()
        posts = None
        while True:
            deadlines = self.in_flight(job_id)
            now = self._clock()
            live = [d for d in deadlines if d > now]
            posts = len(live) if posts is None else posts
            if not live:
                return Waited(posts, now - started, len(deadlines))
            self._sleep(min(POLL, max(live) - now))


def end_job(
    reporter: Reporter,
    ending: JobEnding,
    job_id: str,
    entry_id: str,
    *,
    reason: str,
    reason_type: str,
) -> str | None:
    """End the job ``failed`` for the ERP once no booking can land after it (module docstring).

    Every recorded outcome goes to Pleo first, waiting out a flush under way elsewhere (its
    lease) for ``FLUSH_BEFORE_FAILING`` at most. Returns the final event if this call sent it.
    """
    ending.mark(job_id, entry_id)
    waited = ending.wait(job_id)
    log.info(
        "erp_ending_waited job_id=%s posts=%d seconds=%.2f abandoned=%d",
        job_id,
        waited.posts,
        waited.seconds,
        waited.abandoned,
    )
    deadline = time.monotonic() + FLUSH_BEFORE_FAILING
    while reporter.pending(job_id) and time.monotonic() < deadline:
        if reporter.flush(job_id).locked:
            time.sleep(POLL)
    return reporter.send_final(
        job_id, "failed", failure_reason=reason, failure_reason_type=reason_type
    )
