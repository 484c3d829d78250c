"""The gauges about active jobs, computed when Prometheus scrapes, from the index of active jobs.

One ZRANGE of ``pleo-export:active-jobs`` and one pipelined read of those jobs' records (the
supervisor's own reader, ``contract.supervisor.job_views``): never a scan of the keyspace, so a
scrape costs the same whatever Redis holds. Every endpoint serves these (they describe the fleet,
not the process), so dashboards take ``max`` over targets, never ``sum``.

    pleo_export_active_jobs{state}            jobs in the index by the producer's state
                                              (contract/states.py; a job with no state yet is
                                              ``requested``; ``unknown``: a word not in that set)
    pleo_export_oldest_active_job_age_seconds since the oldest active job was first requested
    pleo_export_active_job_idle_seconds       the longest any active job has shown no sign of
                                              work (a trigger, a producer update, a retry due,
                                              a resume, an action in Pleo)
    pleo_export_active_job_expiry_seconds     until Pleo's expiry of the active job closest to it
                                              (our last action + its expiresIn; absent when no
                                              job's clock is known yet, negative when overdue)
    pleo_export_ledger_up                     1 when the index could be read, else 0 (and the
                                              gauges above are left out of that scrape)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Final

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract.errors import BrokerUnavailable
from contract.states import ENDED, JobState
from contract.supervisor import JobView, active_jobs, job_views, seconds_to_expiry

log = logging.getLogger(__name__)

UNKNOWN_STATE: Final = "unknown"
STATES: Final = (*(state.value for state in JobState), UNKNOWN_STATE)


class ActiveJobsCollector(Collector):
    """A custom collector: reads the active jobs on every ``collect`` (one per scrape)."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._r = client
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families ``collect`` yields, without reading Redis (registration does not scrape)."""
        return iter(_families([], 0.0))

    def collect(self) -> Iterator[Metric]:
        """The gauges as of now."""
        try:
            active = active_jobs(self._r)
            views = [v for v in job_views(self._r, active) if not (v.final or v.state in ENDED)]
        except BrokerUnavailable as exc:
            log.warning("metrics_active_jobs_unreadable error=%s", exc.message)
            return iter(_families(None, self._clock()))
        return iter(_families(views, self._clock()))


def _families(views: list[JobView] | None, now: float) -> list[Metric]:
    """The gauge families for ``views`` at ``now``; None: Redis could not be read (ledger_up 0)."""
    ledger_up = GaugeMetricFamily(
        "pleo_export_ledger_up", "1 when the scrape could read the active jobs from Redis."
    )
    ledger_up.add_metric([], 0.0 if views is None else 1.0)
    if views is None:
        return [ledger_up]
    by_state = GaugeMetricFamily(
        "pleo_export_active_jobs", "Jobs in the index of active jobs, by state.", labels=["state"]
    )
    oldest = GaugeMetricFamily(
        "pleo_export_oldest_active_job_age_seconds",
        "Seconds since the oldest active job was first requested (0: none).",
    )
    idle = GaugeMetricFamily(
        "pleo_export_active_job_idle_seconds",
        "The longest time any active job has shown no sign of work, seconds (0: none).",
    )
    expiry = GaugeMetricFamily(
        "pleo_export_active_job_expiry_seconds",
        "Seconds until Pleo expires the active job closest to its expiry.",
    )
    counts = dict.fromkeys(STATES, 0)
    for view in views:
        # A trigger records the job without a state: it is requested until a run starts.
        state = view.state or JobState.REQUESTED
        counts[state if state in counts else UNKNOWN_STATE] += 1
    for state, count in counts.items():
        by_state.add_metric([state], count)
    oldest.add_metric([], max((now - v.requested_at for v in views), default=0.0))
    idle.add_metric(
        [], max((now - max(v.last_sign_of_life, v.action_at) for v in views), default=0.0)
    )
    left = [s for s in (seconds_to_expiry(v, now) for v in views) if s is not None]
    if left:
        expiry.add_metric([], min(left))
    return [ledger_up, by_state, oldest, idle, expiry]
