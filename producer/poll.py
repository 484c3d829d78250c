"""The polling fallback: find export jobs waiting for us and trigger each, oldest first.

Pleo's detect-and-start guide asks integrations that poll to "request pending Export Jobs … if
recovering from an interruption, also include in_progress" and to "always select the oldest
eligible job". Detection must not modify state, so this only reads the job list and hands every
job to ``triggers.enqueue``, whose window makes a poll that repeats a webhook (or another poll) a
no-op; starting the job stays the producer run's first state-changing action.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from contract.errors import ContractViolation
from contract.settings import Settings
from pleo.client import PleoClient
from pleo.models import ExportJob
from producer import triggers

log = logging.getLogger(__name__)


class EnqueueFn(Protocol):
    """The shape of ``triggers.enqueue`` that a poll relies on."""

    def __call__(
        self, job_id: str, /, *, company_id: str | None, settings: Settings, source: str
    ) -> triggers.EnqueueResult: ...


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll saw and did: ``job_ids`` in the order they were triggered."""

    found: int
    enqueued: int
    deduplicated: int
    job_ids: tuple[str, ...]


def oldest_first(jobs: Iterable[ExportJob]) -> list[ExportJob]:
    """Distinct jobs ordered by ``createdAt``, then id, so every poll picks the same order."""
    distinct: dict[str, ExportJob] = {}
    for job in jobs:  # a job met twice (pages shifting under the walk) is triggered once
        distinct.setdefault(job.id.lower(), job)
    return sorted(distinct.values(), key=lambda job: (_created_at(job), job.id.lower()))


def _created_at(job: ExportJob) -> datetime:
    # models checks only that createdAt is a string; ordering needs an instant on one timeline.
    raw = job.raw.get("createdAt")
    try:
        moment = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ContractViolation(
            f"Pleo's export job {job.id} has createdAt {raw!r}, not an ISO-8601 date-time "
            "with a timezone.",
            job_id=job.id,
        )
    return moment


def poll(
    settings: Settings,
    *,
    client: PleoClient,
    include_in_progress: bool = True,
    company_id: str | None = None,
    enqueue_fn: EnqueueFn = triggers.enqueue,
) -> PollResult:
    """Trigger every pending (and, for recovery, in-progress) job, oldest first.

    Every page is read before anything is sent, so a client error (raised as is) sends nothing.
    """
    statuses = ("pending", "in_progress") if include_in_progress else ("pending",)
    listed = client.list_jobs(statuses, company_id=company_id)
    jobs = oldest_first(job for job in listed if job.status in statuses)
    log.info(
        "poll_found count=%d statuses=%s company_id=%s", len(jobs), ",".join(statuses), company_id
    )
    deduplicated = 0
    for job in jobs:
        result = enqueue_fn(job.id, company_id=job.company_id, settings=settings, source="poll")
        deduplicated += result.deduplicated
        log.info(
            "poll_enqueued job_id=%s task_id=%s deduplicated=%s",
            job.id,
            result.task_id,
            result.deduplicated,
        )
    ids = tuple(job.id for job in jobs)
    return PollResult(len(jobs), len(jobs) - deduplicated, deduplicated, ids)
