"""The supervisor: every claimed or requested job gets a live producer run until it is published.

Every acknowledged trigger (webhook 202, ``enqueue``, ``poll``) and every run start puts the job in
``pleo-export:active-jobs``; its final event takes it out. One worker of the fleet (any producer
or ERP worker: the supervisor's lease elects it) looks at each active job every
``PLEO_SUPERVISE_INTERVAL`` seconds and decides, purely (``assess``):

- ``finished``  final event recorded, or the run ended for good (``skipped``, ``failed``): drop it;
- ``published`` every message is out; the ERP workers and their repair sweep take it from here;
- ``running``   a live lease: a run heartbeats;
- ``waiting``   its producer task is still on the queue, freshly delivered, or due to retry;
- ``dead``      none of those for ``PLEO_DEAD_RUN_AFTER`` seconds since the job's last sign of
                life (a trigger, a progress update, a retry's due time, a resume): the run died
                (SIGKILL, OOM, a whole worker lost, a task message lost before it started) and a
                new producer task is sent, past the trigger window.

Bound with the defaults (dead after 15 s, interval 5 s, supervisor lease 3 x 5 s): a run killed
at t (its last progress update) counts as dead from t + 15 and is resent at the next look, by
t + 20. If the dead worker was the leader too, its lease lapses by t + 15 and another worker leads
from its next tick, so the resend still comes by about t + 20 to t + 25. A 20,000-entry job is
then published again in a few seconds; the 60 s promise leaves room for a slow worker start
(measured: 19.8 s for a whole worker SIGKILLed, tests/chaos/test_liveness.py).

Jobs close to Pleo's ``expiresIn`` (less than a fifth of it left since our last action) are
logged (``job_near_expiry``) and marked in ``status``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from celery import Celery

from contract.keys import (
    ACTIVE_JOBS_KEY,
    KombuKeys,
    final_key,
    lease_key,
    pleo_action_key,
    progress_key,
)
from contract.lease import is_live
from contract.names import PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Settings
from contract.states import ENDED, PUBLISHED
from contract.store import redis_call

log = logging.getLogger(__name__)

Verdict = Literal["finished", "published", "running", "waiting", "dead"]

NEAR_EXPIRY_SHARE = 0.2
_EXPIRY_WARN_EVERY = 60.0
_PRODUCER_HEADER = f'"task": "{PRODUCER_TASK}"'.encode()


@dataclass(frozen=True, slots=True)
class JobView:
    """What the supervisor knows of one active job (times in epoch seconds, 0 when unknown)."""

    job_id: str
    requested_at: float
    state: str = ""
    updated_at: float = 0.0
    retry_at: float = 0.0
    resumed_at: float = 0.0
    leased: bool = False
    final: bool = False
    task_seen: bool = False  # on the producer queue, or delivered moments ago
    company_id: str | None = None
    expires_in: int = 0
    action_at: float = 0.0

    @property
    def last_sign_of_life(self) -> float:
        """The latest moment anything showed the job being worked on or about to be."""
        return max(self.requested_at, self.updated_at, self.retry_at, self.resumed_at)


def assess(view: JobView, now: float, *, dead_after: float) -> Verdict:
    """What the job needs now; see the module docstring."""
    if view.final or view.state in ENDED:
        return "finished"
    if view.state in PUBLISHED:
        return "published"
    if view.leased:
        return "running"
    if view.task_seen or now - view.last_sign_of_life < dead_after:
        return "waiting"
    return "dead"


def seconds_to_expiry(view: JobView, now: float) -> float | None:
    """Seconds until Pleo expires the job, counted from our last action on it, if known."""
    if not view.expires_in or not view.action_at:
        return None
    return view.action_at + view.expires_in - now


@dataclass(slots=True)
class Report:
    """What one look at the active jobs found and did."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    near_expiry: list[str] = field(default_factory=list)


class Supervisor:
    """Looks at every active job and resumes the dead runs (the caller holds the leadership)."""

    def __init__(
        self,
        client: redis.Redis,
        app: Celery,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._app = app
        self._dead_after = settings.dead_run_after
        self._inspect_queue = settings.uses_redis_broker
        self._ttl_ms = settings.dedup_ttl * 1000
        self._clock = clock
        kombu = KombuKeys.of(app.conf.broker_transport_options)
        self._queue = kombu.queue(PRODUCER_QUEUE)
        self._unacked = kombu.unacked
        self._unacked_index = kombu.unacked_index
        self._warned: dict[str, float] = {}

    def look(self) -> Report:
        """One pass over the active jobs."""
        now = self._clock()
        report = Report()
        active = active_jobs(self._r)
        if not active:
            return report
        tasks = self._producer_messages(now) if self._inspect_queue else []
        for view in job_views(self._r, active, tasks):
            verdict = assess(view, now, dead_after=self._dead_after)
            report.verdicts[view.job_id] = verdict
            if verdict == "finished":
                self._call(lambda v=view: self._r.zrem(ACTIVE_JOBS_KEY, v.job_id))  # type: ignore[misc]
                continue
            if verdict == "dead":
                self._resume(view, now)
                report.resumed.append(view.job_id)
            left = seconds_to_expiry(view, now)
            if left is not None and left < NEAR_EXPIRY_SHARE * view.expires_in:
                self._near_expiry(view, left, verdict, now)
                report.near_expiry.append(view.job_id)
        return report

    # -- reading -----------------------------------------------------------------------------

    def _producer_messages(self, now: float) -> list[bytes]:
        """Producer task messages on the queue, and deliveries younger than ``dead_after``.

        A delivery older than that with no lease beside it belongs to a worker that died holding
        it (kombu would give it back only after the visibility timeout, an hour by default).
        Each envelope names its job in the ``argsrepr`` header, in plain text.
        """
        queued = self._call(lambda: self._r.lrange(self._queue, 0, -1))
        fresh = self._call(
            lambda: self._r.zrangebyscore(self._unacked_index, now - self._dead_after, "+inf")
        )
        held = self._call(lambda: self._r.hmget(self._unacked, fresh)) if fresh else []
        # Item messages name their job too (in ``kwargsrepr``): only producer tasks count.
        return [raw for raw in (*queued, *held) if raw is not None and _PRODUCER_HEADER in raw]

    # -- acting ------------------------------------------------------------------------------

    def _resume(self, view: JobView, now: float) -> None:
        """Send a new producer task for a job whose run died."""
        task_id = str(uuid.uuid4())
        self._app.send_task(
            PRODUCER_TASK,
            args=[view.job_id],
            kwargs={"company_id": view.company_id},
            queue=PRODUCER_QUEUE,
            task_id=task_id,
        )
        progress = progress_key(view.job_id)

        def record() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(progress, mapping={"resumed_at": repr(now), "task_id": task_id})
                pipe.hincrby(progress, "resumed", 1)
                pipe.pexpire(progress, self._ttl_ms)
                pipe.execute()

        self._call(record)
        log.warning(
            "run_resumed job_id=%s task_id=%s state=%s quiet_for=%.1fs",
            view.job_id,
            task_id,
            view.state or "requested",
            now - view.last_sign_of_life,
        )

    def _near_expiry(self, view: JobView, left: float, verdict: Verdict, now: float) -> None:
        expires_at = datetime.fromtimestamp(now + left, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        progress = progress_key(view.job_id)

        def mark() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(progress, mapping={"near_expiry": 1, "expires_at": expires_at})
                pipe.pexpire(progress, self._ttl_ms)
                pipe.execute()

        self._call(mark)
        if now - self._warned.get(view.job_id, 0.0) >= _EXPIRY_WARN_EVERY:
            self._warned[view.job_id] = now
            log.warning(
                "job_near_expiry job_id=%s seconds_left=%.0f expires_at=%s verdict=%s",
                view.job_id,
                left,
                expires_at,
                verdict,
            )

    @staticmethod
    def _call(fn: Callable[[], Any]) -> Any:
        return redis_call(fn, "the supervisor")


def active_jobs(client: redis.Redis) -> list[tuple[bytes, float]]:
    """The index of active jobs: (job id, first requested at, epoch seconds), oldest first."""
    active: Any = redis_call(
        lambda: client.zrange(ACTIVE_JOBS_KEY, 0, -1, withscores=True), "the active jobs"
    )
    return list(active)


def job_views(
    client: redis.Redis, active: list[tuple[bytes, float]], tasks: Sequence[bytes] = ()
) -> Iterator[JobView]:
    """The views of ``active`` (the index's members and scores) in one pipelined round trip.

    ``tasks`` are producer task messages seen on the queue (a job named in one is ``task_seen``).
    Also what the metrics' scrape reads (``contract/job_gauges.py``).
    """
    ids = [_text(member) for member, _ in active]
    fields = ["state", "updated_at", "retry_at", "resumed_at", "company_id", "expires_in"]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(progress_key(job_id), fields)
            pipe.get(lease_key(job_id))
            pipe.exists(final_key(job_id))
            pipe.get(pleo_action_key(job_id))
        replies = redis_call(pipe.execute, "the active jobs")
    for index, (job_id, (_, requested_at)) in enumerate(zip(ids, active, strict=True)):
        progress, leased, final, action_at = replies[4 * index : 4 * index + 4]
        state, updated, retry_at, resumed_at, company_id, expires_in = progress
        marker = job_id.encode()
        yield JobView(
            job_id=job_id,
            requested_at=float(requested_at),
            state=_text(state or b""),
            updated_at=_epoch(updated),
            retry_at=_number(retry_at),
            resumed_at=_number(resumed_at),
            leased=is_live(leased),
            final=bool(final),
            task_seen=any(marker in raw for raw in tasks),
            company_id=_text(company_id) if company_id else None,
            expires_in=int(_number(expires_in)),
            action_at=_number(action_at),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _number(raw: bytes | str | None) -> float:
    try:
        return float(_text(raw)) if raw else 0.0
    except ValueError:
        return 0.0


def _epoch(raw: bytes | str | None) -> float:
    """A progress timestamp (ISO, UTC) as epoch seconds; 0 when absent or unreadable."""
    if not raw:
        return 0.0
    try:
        return datetime.fromisoformat(_text(raw)).timestamp()
    except ValueError:
        return 0.0
