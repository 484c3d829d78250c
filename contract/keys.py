"""Every Redis key of the system, as a function, in one place: ours under one prefix, and kombu's.

No other module spells a key: each one calls the function here, so a key read by one side and
written by the other cannot drift apart.

All keys are per job, so an operator finds a job's state with ``SCAN MATCH pleo-export:job:<id>:*``.
Lifetimes: every key of ours has one; none lives forever. A lease lives ``lease_ttl`` (seconds,
renewed by a heartbeat) and its fencing counter ``dedup_ttl`` from its last acquisition or renewal
(never less than the lease); everything else lives ``dedup_ttl`` (30 days by default, longer than
any export job), refreshed on every write, until the job is closed (``consumers/closing.py``):
its final event deletes ``:payloads`` at once, and closing then deletes ``DROPPED_AT_CLOSE`` and
gives ``RETAINED`` (and the fencing counters) ``PLEO_RETENTION`` (7 days by default; 0 deletes
them too). Global keys are refreshed by every write; kombu's keys are kombu's (see below).

    Producer (``contract/ledger.py``)
    :lease      "{fence}:{run_id}": who runs the job now
    :fence      integer, INCR on every lease acquisition; fencing tokens only grow
    :marks      hash entry -> "p" (published) | "r" (reserved, publish not yet confirmed)
    :placed     hash entry -> its message's place as first published, JSON
                ``[sequence, total, status_at_fetch, booked_at]`` (``contract/message.py``): what
                the repair sweep rebuilds a lost message from, with no re-plan
    :progress   hash: state, counters (pages, items_seen, planned, enqueued, ...), timestamps,
                job_status, company_id, expires_in (the job's expiresIn, seconds, from the claim);
                ``holder`` (who runs it), ``requested_at``/``task_id`` (the latest trigger),
                ``retry_at`` (a task retry's due time), ``resumed``/``resumed_at`` (supervisor),
                ``final_event_unsent`` (why a failed run could not tell Pleo)

    ERP workers (``consumers/reporting.py``)
    :results    hash entry -> JSON outcome (successful + external ref, or failed + reason),
                with, beside the update's fields, for the audit manifest (``consumers/audit.py``):
                ``recordedAt`` (epoch seconds), ``erpAttempts`` (the worker's tries of its
                message, when more than one) and, once Pleo accepted the update, ``reportedAt``;
                HSETNX, so the first outcome of an entry is the only one
    :outbox     hash entry -> JSON update waiting for ``PUT /v3/export-jobs/{id}/items``
    :sending    set of entries in the PUT under way (cleared with its answer; left by a killed
                flusher, settled from Pleo's item statuses by the next, once its PUT can no
                longer land)
    :sending-at when that PUT's note was written (epoch seconds)
    :attempts   hash entry -> times Pleo answered the entry's update with an error
    :reported   set of entries whose update Pleo accepted
    :items      hash: successful, failed, reported, report_errors, report_dropped, final_event,
                final_event_at; when Pleo finished the job itself (final_event=already_finished):
                finished_by_pleo (its status in Pleo), pleo_failure_reason_type (e.g.
                job_expired) and pleo_failure_reason, as one read of the job showed them;
                while Pleo refuses our credentials for the write-back: credentials_refused (the
                sentence) and credentials_refused_at (epoch s), deleted by the next accepted PUT
    :flush      the write-back lease (like :lease, with :flush-fence): one flusher per job
    :flush-due  set while a delayed flush task is pending (cleared when it runs; PX 10 min)
    :flushed-at when the job's results were last written back (epoch seconds)
    :final      the final job event: "sending" (PX, while the call is under way), then its name
    :erp-down   when the ERP was first found unreachable for this job (epoch seconds)
    :erp-in-flight  hash entry -> until when (epoch seconds) its post may still book: set by the
                direct path's read before the ERP call, cleared with the outcome
                (``consumers/item_records.py``)
    :erp-ending when a worker began to end the job for the ERP (its credential refused, or
                unreachable too long; epoch seconds): no post starts after it, and the job's
                final event waits for the posts in flight (``consumers/ending.py``)
    :payloads   hash entry -> export item JSON, filled once per job when messages carry none
    :payloads-lock  the lease of the one worker filling ``:payloads`` (``contract/lease.py``),
                with ``:payloads-lock-fence``
    :repaired-at when the repair sweep last examined this stalled job (epoch seconds)

    Governed ERP connections (``consumers/ready.py``, ``consumers/poster.py``)
    :ready      sorted set entry -> sequence: staged, waiting for a poster
    :ready-items  hash entry -> the item message's kwargs, from staging until its outcome
    :erp-tries  hash entry -> calls that carried it; :erp-first-try when the first did
    :next-seq   ordered mode: every entry below it has its outcome
    :order-gap  ordered mode: "{sequence}:{since}", the entry the chain waits for
    :erp-gave-up  JSON {reason, type}: no more calls; failed once the calls in flight return
    :poster     ordered mode: the lease of the job's one poster (with :poster-fence)
    pleo-export:erp:{connection}:{company}:bucket, :paused, :failures, :jobs (sorted set of jobs
                with staged entries), :slot:{i} (a posting slot's lease, with :slot:{i}-fence)
                and :slot:{i}:claimed (hash "{job}|{entry}" -> sequence): the connection's
                budget, all with expiries (``consumers/budget.py``); and
    pleo-export:erp:{connection}:companies  set of the companies it has staged entries for

    Producer and ERP workers (``pleo/activity.py``)
    :pleo-action-at  when we last acted on the job in Pleo (epoch seconds, taken before the
                request): the producer's accepted ``started``, each accepted item PUT and the
                final event; Pleo's expiresIn counts from its last action, so from about here

    Supervision (``contract/supervisor.py``, ``consumers/repair.py``)
    pleo-export:active-jobs    sorted set job id -> when it was first requested (epoch seconds):
                               every acknowledged trigger adds it, the final event removes it
    pleo-export:supervisor     the supervisor's lease (``contract/lease.py``), with
                               pleo-export:supervisor-fence: one worker of the fleet supervises
    pleo-export:repair-sweep   the repair sweep's lease, with pleo-export:repair-sweep-fence
    pleo-export:repair-swept-at  set (PX = the sweep interval) by each sweep: the next is due
                               when it is gone
    (``active-jobs`` and ``closing`` live ``dedup_ttl`` from their last write, the fleet's fencing
    counters 30 days (``dedup_ttl`` or ``lease.FENCE_TTL``) from their last acquisition or
    renewal: an idle fleet's keys go by themselves)

    Retention (``pleo/final_event.py``, ``consumers/closing.py``)
    pleo-export:closing        sorted set job id -> when its final event was recorded: jobs whose
                               records still wait for ``before_retention`` and their expiry
    pleo-export:closer         the closing step's lease, with pleo-export:closer-fence

    Message schemas (``contract/schemas.py``, ``contract/dead_letters.py``)
    pleo-export:schema-reader:{worker}  JSON ``{"reads": [1, 2], "at": epoch seconds}``: the
                               schemas ERP worker ``{worker}`` (its Celery node name) reads, set
                               by its main process every 5 s with PX 15 s, deleted at its warm
                               shutdown; the producer writes a schema every live reader reads
    pleo-export:dead-letter    hash ``{job_id}:{task_id}`` -> JSON of an item message a worker
                               could not read (``kwargs`` as received, ``reason``, ``task_id``,
                               ``job_id``, ``parked_at``, ``worker``), HSETNX so a redelivery
                               parks it once; expiry ``dedup_ttl``, refreshed on every park;
                               ``pleo-export requeue-parked`` moves each back onto the queue

    OAuth credentials (``contract/credentials.py``)
    pleo-export:credentials:{kind}:{name}  hash: ``secret`` (Fernet token of the access and
                               refresh tokens, PLEO_CREDENTIALS_KEY), ``expires_at`` (epoch s),
                               ``has_refresh``, ``scope``, ``updated_at``, ``generation``; kind
                               ``pleo`` (name: the company) or ``erp`` (name: the connection);
                               lives CREDENTIALS_TTL from its last write
    pleo-export:credentials:{kind}:{name}:refresh  the one refresher's lease, with its -fence
    pleo-export:credentials    set of "{kind}:{name}" stored (``pleo-export auth status``)

    Triggers (``producer/triggers.py``, ``producer/webhook.py``)
    :trigger    the producer task id of the latest trigger (PX = trigger window, 60 s)
    pleo-export:webhook:{webhook-id}   a delivery already taken (24 h): Pleo's retries are no-ops

    kombu's Redis transport (``KombuKeys``; the broker's own, read by the repair sweep and the
    supervisor, never written but through kombu, except a re-sent message's LPUSH and
    ``pleo-export purge --force`` removing a purged job's messages)
    {prefix}{queue}     the queue: a list, LPUSHed, BRPOPed from the right
    {prefix}unacked     hash delivery tag -> [message, exchange, routing key] of each delivered,
                        unacked message (prefetched, running, or waiting out a retry countdown)
    {prefix}unacked_index  sorted set delivery tag -> when it was delivered (epoch seconds)
    _kombu.binding.{exchange}, _kombu.binding_permanent.{exchange}  sets of the exchange's
                        bindings (kombu's routing table, a few bytes each)
    ({prefix} is the ``global_keyprefix`` transport option, empty by default)
    None of them has an expiry and we set none: the queue and ``unacked`` hold only messages
    not yet acked (Redis deletes a list, hash or sorted set once it is empty), and a binding set
    expiring would make kombu drop messages sent through its exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "pleo-export"
REPAIR_SWEEP_KEY = f"{PREFIX}:repair-sweep"
REPAIR_SWEPT_KEY = f"{PREFIX}:repair-swept-at"
ACTIVE_JOBS_KEY = f"{PREFIX}:active-jobs"
SUPERVISOR_KEY = f"{PREFIX}:supervisor"
CLOSING_KEY = f"{PREFIX}:closing"
CLOSER_KEY = f"{PREFIX}:closer"
DEAD_LETTER_KEY = f"{PREFIX}:dead-letter"
_SCHEMA_READER_PREFIX = f"{PREFIX}:schema-reader:"
_WEBHOOK_PREFIX = f"{PREFIX}:webhook:"
_ERP_PREFIX = f"{PREFIX}:erp:"
CREDENTIALS_INDEX_KEY = f"{PREFIX}:credentials"
# A stored credential outlives any refresh token's own lifetime (Xero's is 60 days, QuickBooks'
# 100): one unused for longer could not be refreshed anyway.
CREDENTIALS_TTL = 400 * 24 * 3600


def credentials_key(kind: str, name: str) -> str:
    """One credential's hash (``kind`` ``pleo`` or ``erp``; ``name``: company or connection)."""
    return f"{CREDENTIALS_INDEX_KEY}:{kind}:{name}"


def credentials_refresh_keys(kind: str, name: str) -> tuple[str, str]:
    """The lease (and its fence) of the one process refreshing that credential."""
    lease = f"{credentials_key(kind, name)}:refresh"
    return lease, fence_of(lease)


def fence_of(lease_key: str) -> str:
    """The fencing counter beside a lease key that has no job (the supervisor's, a sweep's)."""
    return f"{lease_key}-fence"


def erp_key(connection: str, company_id: str | None, name: str) -> str:
    """The key ``name`` of an ERP connection's budget for one company (``-``: none given).

    ``name``: ``bucket``, ``paused``, ``failures``, ``jobs``, ``slot:{i}`` (a lease, with
    ``slot:{i}-fence``) or ``slot:{i}:claimed``; ``*`` as company: a pattern.
    """
    return f"{_ERP_PREFIX}{connection}:{company_id or '-'}:{name}"


def erp_claims_key(slot_key: str) -> str:
    """The key of what the holder of the posting slot ``slot_key`` claimed."""
    return f"{slot_key}:claimed"


def job_keys_prefix() -> str:
    """What every job key starts with (``job_key(job_id, name)`` is it + ``{job_id}:{name}``);
    for scripts that name the keys of jobs they find in a list."""
    return job_key("", "")[:-1]


def erp_companies_key(connection: str) -> str:
    """The set of companies (``-``: none given) an ERP connection has staged entries for."""
    return f"{_ERP_PREFIX}{connection}:companies"


def job_key(job_id: str, name: str) -> str:
    """The key ``name`` (one of the suffixes above) of ``job_id``; ``*`` as job id: a pattern."""
    return f"{PREFIX}:job:{job_id}:{name}"


def job_id_of(key: str | bytes) -> str:
    """The job id inside a per-job key (the inverse of ``job_key``)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.split(":")[2]


def webhook_delivery_key(webhook_id: str) -> str:
    """Key of an accepted webhook delivery, by its ``webhook-id`` header."""
    return f"{_WEBHOOK_PREFIX}{webhook_id}"


def schema_reader_key(worker: str) -> str:
    """Key of the schemas ERP worker ``worker`` announced it reads; ``*``: a pattern."""
    return f"{_SCHEMA_READER_PREFIX}{worker}"


def schema_reader_of(key: str | bytes) -> str:
    """The worker named in a ``schema_reader_key`` (its inverse)."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.removeprefix(_SCHEMA_READER_PREFIX)


def dead_letter_field(job_id: str, task_id: str) -> str:
    """The field of a parked message in ``DEAD_LETTER_KEY``; ``*`` as task id: a job's pattern."""
    return f"{job_id}:{task_id}"


def lease_keys(job_id: str, name: str) -> tuple[str, str]:
    """The (lease, fencing counter) keys of the job's lease: lease, flush, payloads-lock, poster."""
    if name == "lease":
        return lease_key(job_id), fence_key(job_id)
    if name not in {"flush", "payloads-lock", "poster"}:
        raise ValueError(f"unknown lease {name!r}")
    return job_key(job_id, name), job_key(job_id, f"{name}-fence")


def _per_job(name: str, doc: str) -> Callable[[str], str]:
    """The function giving a job's key ``name``."""

    def key(job_id: str) -> str:
        return job_key(job_id, name)

    key.__name__ = key.__qualname__ = f"{name.replace('-', '_')}_key"
    key.__doc__ = doc
    return key


# The producer's (contract/ledger.py, producer/triggers.py).
lease_key = _per_job("lease", "Key of the job's lease.")
fence_key = _per_job("fence", "Key of the job's fencing counter.")
marks_key = _per_job("marks", "Key of the job's publish marks.")
placed_key = _per_job("placed", "Key of where each published entry's message was placed.")
progress_key = _per_job("progress", "Key of the job's producer progress record.")
trigger_key = _per_job("trigger", "Key of the producer task id of the job's latest trigger.")
# The ERP workers' (consumers/).
results_key = _per_job("results", "Key of each entry's first outcome.")
outbox_key = _per_job("outbox", "Key of the updates waiting for Pleo.")
sending_key = _per_job("sending", "Key of the entries in the item update under way.")
sending_at_key = _per_job("sending-at", "Key of when the item update under way was noted.")
attempts_key = _per_job("attempts", "Key of how often Pleo refused each entry's update.")
reported_key = _per_job("reported", "Key of the entries whose update Pleo accepted.")
items_key = _per_job("items", "Key of the workers' tallies and final-event record.")
flush_due_key = _per_job("flush-due", "Key set while a delayed flush task is pending.")
flushed_key = _per_job("flushed-at", "Key of when the job's results were last written back.")
final_key = _per_job("final", "Key of the job's final event.")
erp_down_key = _per_job("erp-down", "Key of when the ERP was first found unreachable.")
erp_in_flight_key = _per_job("erp-in-flight", "Key of each post in flight and until when.")
erp_ending_key = _per_job("erp-ending", "Key of when a worker began to end the job for the ERP.")
payloads_key = _per_job("payloads", "Key of the job's export items read by a worker.")
repaired_key = _per_job("repaired-at", "Key of when the repair sweep last examined the job.")
# The ERP workers' posting of governed connections (consumers/ready.py, consumers/poster.py).
ready_key = _per_job("ready", "Key of the entries whose message arrived, waiting to be posted.")
ready_items_key = _per_job("ready-items", "Key of those entries' messages, until recorded.")
erp_tries_key = _per_job("erp-tries", "Key of how often each entry was taken for posting.")
erp_first_try_key = _per_job("erp-first-try", "Key of when each entry was first posted.")
next_sequence_key = _per_job("next-seq", "Key of the ordered job's next sequence to post.")
order_gap_key = _per_job("order-gap", "Key of the sequence an ordered job waits for, and since.")
erp_gave_up_key = _per_job("erp-gave-up", "Key of why the posters gave the job up (JSON).")
# Both sides' (pleo/activity.py).
pleo_action_key = _per_job("pleo-action-at", "Key of when we last acted on the job in Pleo.")

# Retention (consumers/closing.py). What a closed job keeps for PLEO_RETENTION: ids, outcomes,
# counts and its final event (which makes a late redelivery of its messages a no-op).
RETAINED = ("progress", "marks", "results", "items", "final")
# What closing deletes: export items (``payloads``, already gone with the final event), where
# each message was placed, the write-back's working state and the stamps only a live job needs.
DROPPED_AT_CLOSE = (
    "payloads",
    "placed",
    "outbox",
    "sending",
    "sending-at",
    "attempts",
    "reported",
    "flush-due",
    "flushed-at",
    "erp-down",
    "erp-in-flight",
    "erp-ending",
    "repaired-at",
    "trigger",
    "pleo-action-at",
    "ready",
    "ready-items",
    "erp-tries",
    "erp-first-try",
    "next-seq",
    "order-gap",
    "erp-gave-up",
)
# The job's leases: each keeps its own PX; its fencing counter is kept while the lease lives.
LEASES = ("lease", "flush", "payloads-lock", "poster")


def retained_keys(job_id: str) -> list[str]:
    """The keys a closed job keeps for the retention period (``RETAINED``)."""
    return [job_key(job_id, name) for name in RETAINED]


def dropped_keys(job_id: str) -> list[str]:
    """The keys closing deletes (``DROPPED_AT_CLOSE``)."""
    return [job_key(job_id, name) for name in DROPPED_AT_CLOSE]


def lease_pairs(job_id: str) -> list[str]:
    """The job's (lease, fencing counter) keys, flattened: lease, fence, lease, fence, ..."""
    return [key for lease in LEASES for key in lease_keys(job_id, lease)]


def job_keys(job_id: str) -> list[str]:
    """Every key the job can have (kombu's messages aside): what ``pleo-export purge`` deletes."""
    return retained_keys(job_id) + dropped_keys(job_id) + lease_pairs(job_id)


@dataclass(frozen=True, slots=True)
class KombuKeys:
    """The keys kombu's Redis transport keeps its messages under, for given transport options."""

    prefix: str = ""
    unacked: str = "unacked"
    unacked_index: str = "unacked_index"

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> KombuKeys:
        """The keys for a Celery app's ``broker_transport_options``."""
        options = options or {}
        prefix = options.get("global_keyprefix", "")
        return cls(
            prefix=prefix,
            unacked=prefix + options.get("unacked_key", "unacked"),
            unacked_index=prefix + options.get("unacked_index_key", "unacked_index"),
        )

    def queue(self, name: str) -> str:
        """The list holding queue ``name``'s waiting messages (priority 0, the only one we use)."""
        return self.prefix + name
