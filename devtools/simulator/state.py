"""The simulator's state: jobs, items, recorded calls and fault rules, behind one lock.

The server thread changes it while tests read it, so every access takes the lock and every read
hands back immutable records or fresh lists, never the live containers.

Jobs expire as Pleo's ``expiresIn`` describes: a job not yet terminal whose last action (its
creation, an accepted job event, a PUT that applied an item) is more than ``expires_in`` seconds
old is ``failed`` with ``job_expired``, and its unfinished items are ``abandoned``. There is no
timer: every access settles the job first, under the lock, against the injected ``clock``, so a
test moves time by moving its clock and sees exactly what an API call at that moment would.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Literal

from devtools.oauth_server import OAuthServer
from devtools.simulator.data import JobSpec, generate
from devtools.simulator.enums import ITEM_STATUSES, TERMINAL_JOB_STATUSES, UNFINISHED_ITEM_STATUSES
from devtools.simulator.faults import FaultBook, FaultRule, Firing
from devtools.simulator.files import ReceiptFiles
from devtools.simulator.payloads import seeded_uuid
from devtools.simulator.records import (
    Call,
    ItemUpdate,
    Job,
    JobEvent,
    JobItem,
    JsonObject,
    timestamp,
)

logger = logging.getLogger(__name__)

EventOutcome = Literal["accepted", "unknown_job", "invalid_transition"]

# The job state machine (Pleo publishes only "no completed -> started"; the rest is our reading).
_TRANSITIONS: Final = {
    ("pending", "started"): "in_progress",
    ("pending", "failed"): "failed",
    ("in_progress", "completed"): "completed",
    ("in_progress", "completed_with_errors"): "completed_with_errors",
    ("in_progress", "failed"): "failed",
}


class UnknownJob(LookupError):
    """No job has this id."""


class JobFinished(RuntimeError):
    """The job is terminal; its items can no longer be read or written."""


class SimState:
    """Everything the simulator serves and records; safe to inspect while the server runs.

    ``token`` / ``api_key`` pick the credentials the API accepts (neither: any Bearer or Basic);
    ``max_page_size`` caps every page; ``latency`` seconds are added to every ``/v3`` request;
    ``seed`` drives job ids and the ``rate`` of fault rules; ``clock`` (epoch seconds) stamps
    every change and decides when jobs expire.
    """

    def __init__(
        self,
        token: str | None = None,
        api_key: str | None = None,
        max_page_size: int = 1000,
        latency: float = 0.0,
        seed: int = 0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_page_size < 1:
            raise ValueError("max_page_size must be >= 1")
        self.token = token
        # OAuth (devtools/oauth_server.py): set it to serve /oauth/* and accept its access tokens.
        self.oauth: OAuthServer | None = None
        self.api_key = api_key
        self.max_page_size = max_page_size
        self.latency = latency
        self.seed = seed
        self._clock = clock
        self.company_id = seeded_uuid(random.Random(f"pleo-simulator-company:{seed}"))
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._items: dict[str, dict[str, JobItem]] = {}
        self._export_items: dict[str, tuple[JsonObject, ...]] = {}
        # Each job's last action to the fraction of a second: lastUpdatedAt keeps whole seconds
        # only, and expiry must not come up to a second early.
        self._acted_at: dict[str, float] = {}
        # How many applied PUT updates each entry got, to prove "reported once".
        self._update_counts: dict[str, Counter[str]] = {}
        # Sorted orders of listings (``sorting.sorted_positions``): a job's entries never change
        # position in the fixed order, so a sort computed once holds for the job's life.
        self._orders: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._calls: list[Call] = []
        self._faults = FaultBook(random.Random(f"pleo-simulator-faults:{seed}"))
        # Receipt files: the URLs export items carry, their expiry and bytes (files.py).
        self.receipts = ReceiptFiles(clock=clock)

    def __repr__(self) -> str:
        # Credentials stay out of reprs (and so out of test failure output and logs).
        auth = "set" if self.token or self.api_key else "open"
        return (
            f"SimState(jobs={len(self._jobs)}, max_page_size={self.max_page_size}, "
            f"latency={self.latency}, seed={self.seed}, auth={auth})"
        )

    # --- jobs and their data -------------------------------------------------------------------

    def add_job(self, spec: JobSpec) -> str:
        """Create a job from ``spec``; its id is deterministic from the seeds and the job count."""
        with self._lock:
            job_id = spec.job_id or seeded_uuid(
                random.Random(f"pleo-simulator-job:{self.seed}:{spec.seed}:{len(self._jobs)}")
            )
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} already exists")
            company_id = spec.company_id or self.company_id
            data = generate(spec, job_id, company_id)
            moment = self._clock()
            now = _stamp(moment)
            self._jobs[job_id] = Job(
                id=job_id,
                company_id=company_id,
                status=spec.status,
                created_at=now,
                number_of_items=spec.items,
                expires_in=spec.expires_in,
                vendor_based_bookkeeping=spec.vendor_based_bookkeeping,
                started_at=now if spec.status != "pending" else None,
                last_updated_at=now,
                completed_at=now if spec.status in TERMINAL_JOB_STATUSES else None,
            )
            self._items[job_id] = {item.accounting_entry_id: item for item in data.items}
            self._export_items[job_id] = data.export_items
            self._update_counts[job_id] = Counter()
            self._acted_at[job_id] = moment
        logger.info("sim_job_added job_id=%s items=%d status=%s", job_id, spec.items, spec.status)
        return job_id

    @property
    def jobs(self) -> dict[str, Job]:
        """A snapshot of every job by id, in creation order."""
        with self._lock:
            for job_id in self._jobs:
                self._expire_if_due(job_id)
            return dict(self._jobs)

    def job(self, job_id: str) -> Job:
        """The job ``job_id``; ``UnknownJob`` if there is none."""
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownJob(job_id)
            self._expire_if_due(job_id)
            return self._jobs[job_id]

    def items(self, job_id: str) -> list[JobItem]:
        """The job's control items as they stand now, in page order."""
        with self._lock:
            self.job(job_id)
            return list(self._items[job_id].values())

    def export_items(self, job_id: str) -> list[JsonObject]:
        """The job's export items in page order (shared dicts: read them, do not change them)."""
        with self._lock:
            self.job(job_id)
            return list(self._export_items[job_id])

    def export_listing(self, job_id: str) -> tuple[JsonObject, ...]:
        """The job's export items in page order, as stored: no copy, for the data layer's pages.

        A job's export items never change, so a page is cut from them directly: copying 100,000
        references touches every item (~5 ms a request, most of a page's cost in the simulator).
        """
        with self._lock:
            self.job(job_id)
            return self._export_items[job_id]

    def sorted_positions(
        self, listing: tuple[str, ...], compute: Callable[[], tuple[int, ...]]
    ) -> tuple[int, ...]:
        """The positions ``compute`` gives for ``listing`` (layer, job, sorting), computed once."""
        with self._lock:
            known = self._orders.get(listing)
            if known is None:
                known = self._orders[listing] = compute()
            return known

    def events(self, job_id: str) -> list[JobEvent]:
        """Every event posted to the job, accepted or refused, in arrival order."""
        return list(self.job(job_id).events)

    def item_counts(self, job_id: str) -> dict[str, int]:
        """How many of the job's items are in each status."""
        counts: dict[str, int] = {}
        for item in self.items(job_id):
            counts[item.status] = counts.get(item.status, 0) + 1
        return counts

    # --- changes the API makes -----------------------------------------------------------------

    def post_event(
        self,
        job_id: str,
        event: str,
        failure_reason: str | None = None,
        failure_reason_type: str | None = None,
    ) -> EventOutcome:
        """Apply a job event through the state machine and record it, accepted or not."""
        with self._lock:
            if job_id not in self._jobs:
                return "unknown_job"
            job = self.job(job_id)
            target = _TRANSITIONS.get((job.status, event))
            moment = self._clock()
            now = _stamp(moment)
            record = JobEvent(event, target is not None, now, failure_reason, failure_reason_type)
            job = dataclasses.replace(job, events=(*job.events, record))
            if target is not None:
                job = dataclasses.replace(job, status=target, last_updated_at=now)
                self._acted_at[job_id] = moment
                if target == "in_progress":
                    job = dataclasses.replace(job, started_at=now)
                if target in TERMINAL_JOB_STATUSES:
                    job = dataclasses.replace(job, completed_at=now)
                if target == "failed":
                    job = dataclasses.replace(
                        job, failure_reason=failure_reason, failure_reason_type=failure_reason_type
                    )
                    self._abandon_unfinished(job_id)
            self._jobs[job_id] = job
        logger.info("sim_job_event job_id=%s event=%s accepted=%s", job_id, event, record.accepted)
        return "accepted" if record.accepted else "invalid_transition"

    def update_items(
        self, job_id: str, updates: Sequence[ItemUpdate]
    ) -> tuple[list[JobItem], list[JsonObject]]:
        """Apply a PUT batch: the updated items, and an error for each unknown entry."""
        with self._lock:
            job = self.job(job_id)
            if job.status in TERMINAL_JOB_STATUSES:
                raise JobFinished(job_id)
            items = self._items[job_id]
            updated: list[JobItem] = []
            errors: list[JsonObject] = []
            for update in updates:
                if update.accounting_entry_id not in items:
                    errors.append(
                        {
                            "accountingEntryId": update.accounting_entry_id,
                            "message": "Accounting entry does not exist.",
                            "type": "ACCOUNTING_ENTRY_DOES_NOT_EXIST",
                        }
                    )
                    continue
                # PUT replaces the item's attributes: fields left out become null.
                item = JobItem(export_job_id=job_id, **dataclasses.asdict(update))
                items[update.accounting_entry_id] = item
                self._update_counts[job_id][update.accounting_entry_id] += 1
                updated.append(item)
            if updated:
                # Only a PUT that changed something is an action on the job (resets its expiry).
                moment = self._clock()
                self._jobs[job_id] = dataclasses.replace(job, last_updated_at=_stamp(moment))
                self._acted_at[job_id] = moment
        return updated, errors

    def set_item_status(self, job_id: str, entry_id: str, status: str) -> JobItem:
        """Move one item to ``status`` as Pleo might behind our back (a user, another integration).

        Unlike a PUT this is not counted as an update; the item keeps its place in the listing.
        """
        if status not in ITEM_STATUSES:
            raise ValueError(f"status must be one of {sorted(ITEM_STATUSES)}")
        with self._lock:
            items = self._items[self.job(job_id).id]
            if entry_id not in items:
                raise KeyError(entry_id)
            item = dataclasses.replace(items[entry_id], status=status)
            items[entry_id] = item
        logger.info("sim_item_moved job_id=%s entry=%s status=%s", job_id, entry_id, status)
        return item

    def update_counts(self, job_id: str) -> dict[str, int]:
        """How many applied updates each entry of the job received over all PUTs."""
        with self._lock:
            self.job(job_id)
            return dict(self._update_counts[job_id])

    def _expire_if_due(self, job_id: str) -> None:
        """Fail the job with ``job_expired`` once ``expires_in`` seconds passed with no action.

        Called with the lock held. ``expiredAt`` and ``completedAt`` are the moment the job
        expired (its last action plus ``expiresIn``), not the moment someone looked;
        ``lastUpdatedAt`` stays the last action, so the two show the gap that expired it.
        """
        job = self._jobs[job_id]
        if job.status in TERMINAL_JOB_STATUSES:
            return
        deadline = self._acted_at[job_id] + job.expires_in
        if self._clock() <= deadline:
            return
        at = _stamp(deadline)
        self._jobs[job_id] = dataclasses.replace(
            job,
            status="failed",
            expired_at=at,
            completed_at=at,
            failure_reason=f"The export job was not updated within {job.expires_in} seconds.",
            failure_reason_type="job_expired",
        )
        self._abandon_unfinished(job_id)
        logger.info("sim_job_expired job_id=%s expires_in=%d", job_id, job.expires_in)

    def _abandon_unfinished(self, job_id: str) -> None:
        """A failed job leaves its unfinished items ``abandoned``."""
        items = self._items[job_id]
        for entry_id, item in items.items():
            if item.status in UNFINISHED_ITEM_STATUSES:
                items[entry_id] = dataclasses.replace(item, status="abandoned")

    # --- calls and faults ----------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every ``/v3`` request answered so far, in the order the answers were decided."""
        with self._lock:
            return list(self._calls)

    def record(self, call: Call) -> None:
        """Remember one answered request."""
        with self._lock:
            self._calls.append(call)

    def clear_calls(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._calls.clear()

    def add_fault(self, rule: FaultRule) -> None:
        """Activate ``rule`` after the rules already active."""
        with self._lock:
            self._faults.add(rule)

    def clear_faults(self) -> None:
        """Deactivate every fault rule."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[tuple[FaultRule, int]]:
        """The active rules, each with how many times it has fired."""
        with self._lock:
            return list(zip(self._faults.rules, self._faults.fired(), strict=True))

    def evaluate_faults(self, endpoint: str) -> tuple[Firing, ...]:
        """Count one authorised request to ``endpoint``; the fault rules that fire on it."""
        with self._lock:
            return self._faults.evaluate(endpoint)


def _stamp(moment: float) -> str:
    """``moment`` (epoch seconds) the way Pleo writes date-times."""
    return timestamp(datetime.fromtimestamp(moment, UTC))
