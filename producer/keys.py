"""Every Redis key the producer and the ERP workers use, in one place, under one prefix.

All keys are per job, so an operator finds a job's state with ``SCAN MATCH pleo-export:job:<id>:*``.
Lifetimes: the lease lives ``lease_ttl`` (seconds, renewed by a heartbeat); everything else lives
``dedup_ttl`` (30 days by default, longer than any export job), refreshed on every write.

    Producer (``producer/ledger.py``)
    :lease      "{fence}:{run_id}": who runs the job now
    :fence      integer, INCR on every lease acquisition; fencing tokens only grow
    :marks      hash entry -> "p" (published) | "r" (reserved, publish not yet confirmed)
    :progress   hash: state, counters (pages, items_seen, planned, enqueued, ...), timestamps,
                job_status, company_id, expires_in (the job's expiresIn, seconds, from the claim);
                ``holder`` (who runs it), ``requested_at``/``task_id`` (the latest trigger),
                ``retry_at`` (a task retry's due time), ``resumed``/``resumed_at`` (supervisor)

    ERP workers (``consumers/reporting.py``)
    :results    hash entry -> JSON outcome (successful + external ref, or failed + reason);
                HSETNX, so the first outcome of an entry is the only one
    :outbox     hash entry -> JSON update waiting for ``PUT /v3/export-jobs/{id}/items``
    :sending    set of entries in the PUT under way (cleared with its answer; left by a killed
                flusher, settled from Pleo's item statuses by the next)
    :attempts   hash entry -> times Pleo answered the entry's update with an error
    :reported   set of entries whose update Pleo accepted
    :items      hash: successful, failed, reported, report_errors, report_dropped, final_event,
                final_event_at; when Pleo finished the job itself (final_event=already_finished):
                finished_by_pleo (its status in Pleo), pleo_failure_reason_type (e.g.
                job_expired) and pleo_failure_reason, as one read of the job showed them
    :flush      the write-back lease (like :lease, with :flush-fence): one flusher per job
    :flush-due  set while a delayed flush task is pending (cleared when it runs; PX 10 min)
    :flushed-at when the job's results were last written back (epoch seconds)
    :final      the final job event: "sending" (PX, while the call is under way), then its name
    :erp-down   when the ERP was first found unreachable for this job (epoch seconds)
    :payloads   hash entry -> export item JSON, filled once per job when messages carry none
    :payloads-lock  the lease of the one worker filling ``:payloads`` (``producer/lease.py``),
                with ``:payloads-lock-fence``
    :repaired-at when the repair sweep last examined this stalled job (epoch seconds)

    Producer and ERP workers (``producer/activity.py``)
    :pleo-action-at  when we last acted on the job in Pleo (epoch seconds, taken before the
                request): the producer's accepted ``started``, each accepted item PUT and the
                final event; Pleo's expiresIn counts from its last action, so from about here

    Supervision (``producer/supervisor.py``, ``consumers/repair.py``)
    pleo-export:active-jobs    sorted set job id -> when it was first requested (epoch seconds):
                               every acknowledged trigger adds it, the final event removes it
    pleo-export:supervisor     the supervisor's lease (``producer/lease.py``), with
                               pleo-export:supervisor-fence: one worker of the fleet supervises
    pleo-export:repair-sweep   the repair sweep's lease, with pleo-export:repair-sweep-fence

    Triggers (``producer/triggers.py``, ``producer/webhook.py``)
    :trigger    the producer task id of the latest trigger (PX = trigger window, 60 s)
    pleo-export:webhook:{webhook-id}   a delivery already taken (24 h): Pleo's retries are no-ops
"""

from __future__ import annotations

PREFIX = "pleo-export"
REPAIR_SWEEP_KEY = f"{PREFIX}:repair-sweep"
ACTIVE_JOBS_KEY = f"{PREFIX}:active-jobs"
SUPERVISOR_KEY = f"{PREFIX}:supervisor"


def fence_of(lease_key: str) -> str:
    """The fencing counter beside a fleet-wide lease key (the supervisor's, the repair sweep's)."""
    return f"{lease_key}-fence"


def job_key(job_id: str, name: str) -> str:
    """The key ``name`` (one of the suffixes above) of ``job_id``."""
    return f"{PREFIX}:job:{job_id}:{name}"


def lease_key(job_id: str) -> str:
    """Key of the job's lease."""
    return job_key(job_id, "lease")


def fence_key(job_id: str) -> str:
    """Key of the job's fencing counter."""
    return job_key(job_id, "fence")


def marks_key(job_id: str) -> str:
    """Key of the job's publish marks."""
    return job_key(job_id, "marks")


def progress_key(job_id: str) -> str:
    """Key of the job's producer progress record."""
    return job_key(job_id, "progress")


def pleo_action_key(job_id: str) -> str:
    """Key of the time of our last action on the job in Pleo."""
    return job_key(job_id, "pleo-action-at")


def lease_keys(job_id: str, name: str) -> tuple[str, str]:
    """The (lease, fencing counter) keys of the job's lease called ``name``."""
    if name == "lease":
        return lease_key(job_id), fence_key(job_id)
    return job_key(job_id, name), job_key(job_id, f"{name}-fence")


def job_id_of(key: str | bytes) -> str:
    """The job id inside a per-job key (the inverse of ``job_key``)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.split(":")[2]
