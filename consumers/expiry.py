"""Before an entry goes to the ERP: did Pleo finish its job, most likely by expiring it?

Pleo fails a job with ``job_expired`` once ``expiresIn`` seconds pass without an action on it, and
from then on refuses every write-back: an entry posted to the ERP now could never be reported, and
its item, left ``abandoned``, may well be exported again in a later job. So when our last action
on the job (``PleoActivity``) is older than its ``expiresIn``, a worker reads the job once before
posting, and skips the entry if Pleo calls it finished. A job with a recent action costs one Redis
round trip and no request (none at all while its figures are kept, below); a quiet one at
most one ``GET`` per ``recheck`` seconds per process.

Only Pleo's answer skips an entry, never our own arithmetic: clocks differ between hosts, and a
stamp a little off costs at most one extra read. When the last action or ``expires_in`` is not
recorded (a job claimed before this check existed), the entry is posted as before.

The job's ``expires_in`` and our last action are read once per job per process and kept for up to
``recheck`` seconds, so a job with a recent action costs no round trip at all. Kept safely: the
stamp only ever moves later (``pleo/activity.py`` keeps the later of two), so a kept stamp is never
later than the real one, and a job that is not overdue by it is not overdue by the real one
either. Once the kept figures say overdue they are read again before Pleo is asked (a later
action may have moved the stamp), and ``recheck`` bounds how long a changed ``expires_in`` (a
rerun's claim) goes unseen. The final event is not kept here: it is read with each entry
(``consumers/item_records.py``), so a job that ends is noticed at its next entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from contract.errors import PermanentUpstreamError
from pleo.activity import Expiry, PleoActivity
from pleo.client import PleoClient
from pleo.models import TERMINAL_JOB_STATUSES, ExportJob

log = logging.getLogger(__name__)


class ExpiryCheck:
    """Asks Pleo whether a job quiet for longer than its expiresIn is finished; remembers a while.

    The memory is this process's only (each worker process reads on its own) and holds Pleo's
    answer for ``recheck`` seconds: a finished job found once stays found, even if recording it
    failed and the message runs again.
    """

    def __init__(
        self,
        activity: PleoActivity,
        pleo: PleoClient,
        *,
        recheck: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._activity = activity
        self._pleo = pleo
        self._recheck = recheck
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, ExportJob | None]] = {}
        self._expiries: dict[str, tuple[float, Expiry | None]] = {}

    def _expiry(self, job_id: str, now: float) -> Expiry | None:
        """The job's expiry figures: the kept ones while they say "not overdue" (see the module
        docstring) and are younger than ``recheck``, else read again and kept."""
        with self._lock:
            kept = self._expiries.get(job_id)
        if kept is not None and now - kept[0] < self._recheck:
            expiry = kept[1]
            if expiry is None or not expiry.overdue(now):
                return expiry
        expiry = self._activity.expiry(job_id)
        with self._lock:
            recent = {j: k for j, k in self._expiries.items() if now - k[0] < self._recheck}
            self._expiries = recent
            self._expiries[job_id] = (now, expiry)
        return expiry

    def finished_job(self, job_id: str) -> ExportJob | None:
        """Pleo's job if our last action on it is older than its expiresIn and Pleo says finished.

        A transient failure to read the job propagates (the item is retried later); a permanent
        one (the job unreadable for good) is logged and the entry goes ahead, as it did before
        this check: the write-back then meets whatever Pleo says.
        """
        now = self._clock()
        expiry = self._expiry(job_id, now)
        if expiry is None or not expiry.overdue(now):
            return None
        with self._lock:
            answer = self._answers.get(job_id)
        if answer is not None and now - answer[0] < self._recheck:
            return answer[1]
        try:
            job = self._pleo.get_job(job_id)
        except PermanentUpstreamError as exc:
            log.warning("expiry_check_failed job_id=%s error=%s", job_id, exc.message)
            finished = None
        else:
            finished = job if job.status in TERMINAL_JOB_STATUSES else None
            log.info(
                "expiry_checked job_id=%s status=%s quiet_for=%.0f expires_in=%d",
                job_id,
                job.status,
                now - expiry.acted_at,
                expiry.expires_in,
            )
        with self._lock:
            # Answers older than ``recheck`` would be asked again anyway: forget them.
            recent = {j: a for j, a in self._answers.items() if now - a[0] < self._recheck}
            self._answers = recent
            self._answers[job_id] = (now, finished)
        return finished
