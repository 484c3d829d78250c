"""One job's progress as the producer and the ERP workers recorded it, read in one round trip."""

from __future__ import annotations

import re
from typing import Any

import redis

from contract.dead_letters import parked_count
from contract.errors import BrokerUnavailable, cause
from contract.keys import items_key, lease_key, marks_key, outbox_key, progress_key
from contract.lease import is_live
from contract.ledger import PUBLISHED
from contract.states import RUNNING, JobState
from pleo.models import TERMINAL_JOB_STATUSES

# ``republished``: messages the repair sweep (consumers/repair.py) sent again after a loss.
_WORKER_COUNTERS = ("successful", "failed", "reported", "report_dropped", "republished")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?")
# Flags stored as 0/1, shown as ``run --json`` shows them: true/false.
_FLAGS = ("recovery", "near_expiry")
# How Pleo finished a job itself (consumers/finished.py), and a refusal of our credentials by
# the write-back (consumers/reporting.py): shown only when recorded.
_PLEO_FINISH = ("finished_by_pleo", "pleo_failure_reason_type", "pleo_failure_reason")
_REFUSED = ("credentials_refused", "credentials_refused_at")
_LOGIN = "run 'pleo-export auth login' (or set a valid PLEO_API_TOKEN)"


def job_status(client: redis.Redis, job_id: str) -> dict[str, Any]:
    """Producer progress, publish marks and worker counters, as one JSON-ready dict."""
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(progress_key(job_id))
            pipe.hvals(marks_key(job_id))
            pipe.hgetall(items_key(job_id))
            pipe.hlen(outbox_key(job_id))
            pipe.get(lease_key(job_id))
            progress, marks, items, waiting, leased = pipe.execute()
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"Redis could not be reached for the job's status: {cause(exc)}."
        ) from exc
    view: dict[str, Any] = {"job_id": job_id, "state": "unknown"}
    view.update({_text(k): _value(v) for k, v in progress.items()})
    view.update({flag: bool(view[flag]) for flag in _FLAGS if flag in view})
    view["run_alive"] = alive = is_live(leased)
    if view["state"] in RUNNING and not alive:
        # The run stopped without a word (SIGKILL, OOM, a lost worker): its lease lapsed, or its
        # holder is a process of this machine that is gone.
        view["state"] = JobState.INTERRUPTED.value
        view["interrupted_at"] = view.get("interrupted_at") or view.get("updated_at")
    published = sum(1 for mark in marks if _text(mark) == PUBLISHED)
    workers = {_text(k): _value(v) for k, v in items.items()}
    counts = {name: int(workers.get(name, 0)) for name in _WORKER_COUNTERS}
    view.update(counts)
    view["published_total"] = published
    # Published entries with no outcome yet: queued, being posted, or lost (the repair sweep's
    # business); not a count of running workers.
    view["awaiting_outcome"] = max(0, published - counts["successful"] - counts["failed"])
    view["waiting_report"] = int(waiting)
    # Messages of the job a worker could not read, kept for ``requeue-parked`` (an upgrade's).
    view["parked"] = parked_count(client, job_id)
    view["final_event"] = final = workers.get("final_event")
    view["final_event_at"] = workers.get("final_event_at")
    view.update({name: workers[name] for name in (*_PLEO_FINISH, *_REFUSED) if name in workers})
    # ``job_status`` is the job's status in Pleo as far as we know it: the claim's reading until
    # the job ended, then how it ended (our final event, or what Pleo said when it ended it).
    if "job_status" in view:
        view["job_status_at_claim"] = view["job_status"]
    ended = final if final in TERMINAL_JOB_STATUSES else view.get("finished_by_pleo")
    if ended:
        view["job_status"] = ended
    action = _action(view)
    if action:
        view["action"] = action
    return view


def _action(view: dict[str, Any]) -> str | None:
    """What an operator must do for the job, when Pleo refused our credentials (None: nothing)."""
    if view.get("final_event_unsent") and not view["final_event"]:
        return (
            f"Pleo was not told that the job failed (our credentials were refused too): {_LOGIN}, "
            "then 'pleo-export enqueue' the job; until then it stays in_progress in Pleo."
        )
    if view.get("credentials_refused") and not view["final_event"]:
        return (
            f"Pleo refuses our credentials: {view['waiting_report']} results wait to be written "
            f"back; {_LOGIN} and they go, nothing is lost meanwhile."
        )
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _value(raw: bytes | str) -> Any:
    """A stored field typed as ``run --json`` types it: numbers as numbers, the rest as text."""
    text = _text(raw)
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return text
