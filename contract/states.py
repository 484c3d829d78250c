"""The producer's job states, as its progress record (``:progress`` ``state``) holds them.

One definition for every reader: the ERP workers' completion and repair sweep, the supervisor and
``status`` all decide by these sets, never by spelling a state out. A run's summary ``status``
(``enqueued``, ``nothing_to_do``, ``skipped``) is the state it ends in.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where the producer's work on a job stands."""

    REQUESTED = "requested"  # a trigger was answered; no run has started yet
    CLAIMING = "claiming"
    FETCHING = "fetching"
    PUBLISHING = "publishing"
    ENQUEUED = "enqueued"  # every planned message is on the queue
    NOTHING_TO_DO = "nothing_to_do"  # no pending or in_progress items
    SKIPPED = "skipped"  # Pleo has the job terminal already
    FAILED = "failed"  # failed for good (Pleo was sent the failed event where it could be)
    INTERRUPTED = "interrupted"  # stopped by a signal or a transient failure: to be resumed
    RETRYING = "retrying"  # a Celery retry of the run is due at ``retry_at``


# A run in one of these holds the job's lease while it lives.
RUNNING = frozenset({JobState.CLAIMING, JobState.FETCHING, JobState.PUBLISHING})
# Every message of the job is out: the ERP workers may complete it.
PUBLISHED = frozenset({JobState.ENQUEUED, JobState.NOTHING_TO_DO})
# The producer will do nothing more for the job.
ENDED = frozenset({JobState.SKIPPED, JobState.FAILED})
