"""Before an entry goes to the ERP: did Pleo finish its job, most likely by expiring it?

Pleo fails a job with ``job_expired`` once ``expiresIn`` seconds pass without an action on it, and
from then on refuses every write-back: an entry posted to the ERP now could never be reported, and
its item, left ``abandoned``, may well be exported again in a later job. So when our last action
on the job (``PleoActivity``) is older than its ``expiresIn``, a worker reads the job once before
posting, and skips the entry if Pleo calls it finished. A job with a recent action costs one Redis
round trip and no request; a quiet one at most one ``GET`` per ``recheck`` seconds per process.

Only Pleo's answer skips an entry, never our own arithmetic: clocks differ between hosts, and a
stamp a little off costs at most one extra read. When the last action or ``expires_in`` is not
recorded (a job claimed before this check existed), the entry is posted as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from contract.errors import PermanentUpstreamError
from pleo.activity import PleoActivity
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

    def finished_job(self, job_id: str) -> ExportJob | None:
        """Pleo's job if our last action on it is older than its expiresIn and Pleo says finished.

        A transient failure to read the job propagates (the item is retried later); a permanent
        one (the job unreadable for good) is logged and the entry goes ahead, as it did before
        this check: the write-back then meets whatever Pleo says.
        """
        expiry = self._activity.expiry(job_id)
        now = self._clock()
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
