"""ERP calls within the shared budget: the token first, and what each kind of trouble costs.

``BudgetedCalls.call`` makes one call for a poster (``consumers/poster.py``):
- it waits for the call's token (``Budget.wait_for_call``), sleeping up to ``MAX_WAIT``; a longer
  wait makes the poster leave (``Leave``) with its claim given back;
- the entries a post carries are counted as tried *before* the call: one that times out may still
  have booked, and its next try looks it up first if the ERP's key may be forgotten;
- a 429 pauses the connection for every worker (its ``Retry-After``, else ``ERP_RETRY_DELAY``) and
  the call is made again once the pause is over, if it is short;
- the ERP unreachable, or an error the adapter does not know, pauses the connection too, backing
  off by the connection's failures in a row, and the poster leaves; an ERP unreachable for a job
  longer than ``ERP_UNREACHABLE_LIMIT`` fails it with ``accounting_system_unreachable``;
- a wait that would outlast the job's ``expiresIn`` fails it with ``accounting_system_rate_limit``
  once what was posted is written back (``mind_deadline``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consumers.budget import Budget
from consumers.erp import (
    Entry,
    EntryRejected,
    ERPAuthenticationFailed,
    ERPRateLimited,
    ERPUnavailable,
)
from consumers.ready import ReadyEntries
from consumers.reporting import Reporter
from contract import metrics
from contract.retrying import task_countdown

log = logging.getLogger(__name__)

# The longest a slot holder sleeps for the next call before giving its claim back and leaving.
MAX_WAIT = 5.0
# A job is failed for the ERP's rate limit only when the wait would outlast its expiresIn by
# this much less than what is left: the final event must reach Pleo before the job expires.
EXPIRY_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class PosterSettings:
    """The settings a poster reads (``contract/settings.py``)."""

    key_window: float
    order_wait: float
    unreachable_limit: float
    retry_delay: float
    dedup_ttl: int
    # The longest one drain lasts (a third of the Redis broker's visibility timeout, at most 60 s).
    max_drain: float = 60.0


def drain_limit(visibility_timeout: float) -> float:
    """How long one drain may last: a third of the Redis broker's visibility timeout, at most a
    minute, so the task running it is acked long before its message could be delivered again."""
    return min(60.0, visibility_timeout / 3)


# How long a job given up waits for its recorded outcomes to be written back before it is failed.
FLUSH_BEFORE_FAILING = 30.0


class Leave(Exception):
    """The slot holder stops posting now (a long wait, the ERP down, a lost slot).

    ``pause``: the connection's pause it left for, when short enough (at most ``MAX_WAIT``) for
    the poster to sleep it out and go on with the next claim, its slot kept.
    """

    def __init__(self, why: str, *, pause: float | None = None) -> None:
        super().__init__(why)
        self.pause = pause if pause is not None and pause <= MAX_WAIT else None


class BudgetedCalls:
    """One poster's ERP calls within its connection's budget (see the module docstring)."""

    def __init__(
        self,
        budget: Budget,
        ready: ReadyEntries,
        reporter: Reporter,
        settings: PosterSettings,
        *,
        on_sent: Callable[[Iterable[str]], None],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._budget = budget
        self._ready = ready
        self._reporter = reporter
        self._settings = settings
        self._on_sent = on_sent
        self._clock = clock
        self._sleep = sleep
        # Whether a call failed since the last answer (an answer then resets the connection's
        # failures in a row); True at first: another poster's failures may be counted.
        self._failing = True

    def call(
        self,
        company_id: str | None,
        job_id: str,
        call: Callable[[], Any],
        *,
        sends: list[Entry] | None = None,
    ) -> Any:
        """One ERP call within the budget; ERP trouble pauses the connection (and may leave).

        A 429 pauses every worker's calls; a pause short enough is slept through here (the claim
        kept) and the call made again, with the same idempotency key.
        """
        ids = [entry.accounting_entry_id for entry in sends or ()]
        while True:
            if self._ready.given_up(job_id) is not None:
                raise Leave("the job is given up: it is failed once the calls in flight return")
            self._await_token(company_id, job_id)
            if ids:
                # Counted before the call: a post that times out may still have booked.
                self._ready.tried(job_id, ids)
                self._on_sent(ids)
            metrics.erp_calls.inc()
            try:
                answer = call()
            except EntryRejected:
                self._answered(company_id)
                raise
            except ERPAuthenticationFailed as refused:
                metrics.erp_errors.labels("unavailable").inc()
                log.error("erp_credentials_refused job_id=%s", job_id)  # noqa: TRY400 - no traceback
                self._ready.give_up(
                    job_id, str(refused), "accounting_system_authentication_failure"
                )
                raise Leave("the ERP refused its credentials for good") from None
            except ERPRateLimited as limited:
                metrics.erp_rate_limited.inc()
                metrics.erp_errors.labels("unavailable").inc()
                wait = limited.retry_after
                paused = self._budget.pause(
                    company_id, wait if wait is not None else self._settings.retry_delay
                )
                if paused > MAX_WAIT:
                    self.mind_deadline(company_id, job_id, paused)
                    raise Leave(f"the ERP answered 429 (retry after {paused:.1f} s)") from None
            except ERPUnavailable as down:
                metrics.erp_errors.labels("unavailable").inc()
                self._failing = True
                pause = self._erp_down(company_id, job_id, down, len(ids))
                raise Leave(f"the ERP is unreachable: {down}", pause=pause) from down
            except Exception:
                metrics.erp_errors.labels("unexpected").inc()
                # A bug, a driver or a grant gone wrong is the worker's failure, not the
                # entries': they go back, and the connection waits before anyone tries again.
                log.exception("erp_call_failed job_id=%s", job_id)
                self._failing = True
                in_a_row = self._budget.failed(company_id)
                paused = self._budget.pause(
                    company_id, task_countdown(in_a_row - 1, self._settings.retry_delay)
                )
                raise Leave("the ERP call failed unexpectedly", pause=paused) from None
            self._answered(company_id)
            return answer

    def _answered(self, company_id: str | None) -> None:
        if self._failing:
            self._budget.succeeded(company_id)
            self._failing = False

    def _await_token(self, company_id: str | None, job_id: str) -> None:
        while True:
            wait = self._budget.wait_for_call(company_id)
            if wait <= 0:
                return
            if wait > MAX_WAIT:
                self.mind_deadline(company_id, job_id, wait)
                raise Leave(f"the next call is due in {wait:.1f} s")
            metrics.erp_quota_wait.inc(wait)
            self._sleep(wait)

    def _erp_down(
        self, company_id: str | None, job_id: str, down: ERPUnavailable, entries: int
    ) -> float | None:
        """Pause the connection (backing off), or fail the job after the outage limit; returns
        the pause, None when the job was failed."""
        outage = self._reporter.erp_down_for(job_id)
        if outage >= self._settings.unreachable_limit:
            reason = f"The accounting system could not be reached for {outage:.0f} seconds."
            log.error("erp_unreachable_giving_up job_id=%s for=%.0fs", job_id, outage)
            self._ready.give_up(job_id, reason, "accounting_system_unreachable")
            return None
        in_a_row = self._budget.failed(company_id)
        paused = self._budget.pause(
            company_id, task_countdown(in_a_row - 1, self._settings.retry_delay)
        )
        log.warning(
            "erp_unreachable job_id=%s for=%.0fs entries=%d error=%s", job_id, outage, entries, down
        )
        return paused

    def mind_deadline(self, company_id: str | None, job_id: str, wait: float) -> None:
        """Fail the job for the ERP's rate limit when waiting would outlast its expiresIn."""
        expiry = self._reporter.expiry(job_id)
        if expiry is None:
            return
        left = expiry.acted_at + expiry.expires_in - self._clock()
        if wait < left - EXPIRY_MARGIN:
            return
        reason = (
            f"The accounting system's rate limit holds its calls for {wait:.0f} seconds, longer "
            f"than the {max(0.0, left):.0f} seconds left before Pleo would expire this job; the "
            "entries not yet posted can be exported again once its limit allows."
        )
        log.error("erp_rate_limit_outlasts_job job_id=%s wait=%.0f left=%.0f", job_id, wait, left)
        self._ready.give_up(job_id, reason, "accounting_system_rate_limit")

    def fail(self, company_id: str | None, job_id: str, reason: str, reason_type: str) -> None:
        """Write back what was posted, then fail the job; its staged entries are dropped.

        Called once the job is given up (``ReadyEntries.give_up``) and no slot holds a claim of
        it any more: every entry the ERP booked is recorded by then, so it is reported first.
        """
        # Every recorded outcome written back first, waiting out a flush under way elsewhere
        # (its lease); what Pleo keeps refusing stays counted as not reported.
        deadline = self._clock() + FLUSH_BEFORE_FAILING
        while self._reporter.pending(job_id) and self._clock() < deadline:
            if self._reporter.flush(job_id).locked:
                self._sleep(0.1)
        self._reporter.send_final(
            job_id, "failed", failure_reason=reason, failure_reason_type=reason_type
        )
        self._ready.drop_job(company_id, job_id)
