"""The Redis we keep our state in is checked once per process, before the process takes work.

Redis is this system's record: leases, dedup marks, outboxes and the queued messages live only
there. A Redis that may drop them breaks the guarantees without a sound, so the ERP worker, the
producer worker (both at Celery's ``worker_init``) and the commands that write to Redis (``run``,
``enqueue``, ``poll``, ``webhook``, ``api``) refuse to start, with one sentence and exit status 2,
when the ledger's Redis (the broker's, when the broker is Redis: they are one) is:

- a **Redis Cluster**: a publish is one Lua script over kombu's queue key and the job's own keys,
  which hash to different slots, and kombu's Redis transport has no cluster mode;
- **evicting** keys (``maxmemory-policy`` other than ``noeviction``, read from ``INFO memory``);
- **keeping nothing on disk** (``aof_enabled:0`` and an empty ``CONFIG GET save``), unless
  ``PLEO_REDIS_EPHEMERAL`` says it may (tests and demos, never production).

What cannot be judged is said, not refused: a Redis that refuses ``CONFIG`` (managed services
rename it) with AOF off may still snapshot, so the process starts with one warning; the same for
an ``INFO`` without the field. A Redis that does not answer at all is today's outage, not bad
configuration: the check says nothing and the process waits and retries as it always has.

``judge`` decides from what Redis said (pure); ``inspect`` asks it, ``check_redis`` does both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_init

from contract.errors import BadInput
from contract.settings import Settings, redact_url
from contract.store import ledger_client

log = logging.getLogger(__name__)

EPHEMERAL_SETTING = "PLEO_REDIS_EPHEMERAL"
# The end of the refusal's sentence, also used for a cluster URL (contract/settings.py).
CLUSTER_UNSUPPORTED = (
    "which this system cannot use: each publish is one Lua script over kombu's queue key and "
    "the job's own keys, which hash to different cluster slots, and kombu's Redis transport has "
    "no cluster mode; use one Redis primary (with replicas and Sentinel for failover)"
)


class RedisUnfit(BadInput):
    """The Redis the settings name would lose what the guarantees rest on: do not start."""


@dataclass(frozen=True, slots=True)
class Findings:
    """What one Redis said about itself; None where it would not say."""

    cluster_enabled: bool
    maxmemory_policy: str | None
    aof_enabled: bool | None
    # The RDB schedule (``CONFIG GET save``): "" for none, None when CONFIG was refused.
    save: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Refuse (one sentence) or start, with a warning when something could not be judged."""

    refusal: str | None = None
    warning: str | None = None


def judge(findings: Findings, *, where: str, ephemeral_ok: bool) -> Verdict:
    """Whether a process may start on the Redis ``where`` names, from what it said."""
    if findings.cluster_enabled:
        return Verdict(refusal=f"{where} is a Redis Cluster, {CLUSTER_UNSUPPORTED}.")
    policy = findings.maxmemory_policy
    if policy is not None and policy != "noeviction":
        return Verdict(
            refusal=f"{where} evicts keys (maxmemory-policy {policy}), which would silently drop "
            "leases, dedup marks and queued messages; set maxmemory-policy noeviction."
        )
    warnings = []
    if policy is None:
        warnings.append(f"{where} does not show its maxmemory-policy; make sure it is noeviction.")
    if not ephemeral_ok and not findings.aof_enabled:
        if findings.save == "" and findings.aof_enabled is False:
            return Verdict(
                refusal=f"{where} keeps nothing on disk (no AOF, no RDB save schedule), so a "
                "restart would lose every queued message, dedup mark and lease; turn on "
                f"appendonly (or a save schedule), or set {EPHEMERAL_SETTING}=1 if this Redis "
                "is for tests or a demo."
            )
        if findings.save is None or findings.aof_enabled is None:
            warnings.append(
                f"{where} does not let us read whether it keeps its data on disk (CONFIG "
                "refused or INFO without aof_enabled); make sure it has AOF or snapshots (on a "
                "managed service: persistence or backups on)."
            )
    return Verdict(warning=" ".join(warnings) or None)


def inspect(client: redis.Redis) -> Findings | None:
    """Ask ``client``'s Redis about itself (two round trips); None when it does not answer."""
    try:
        info: Mapping[str, Any] = (
            client.info()
        )  # the default sections: memory, persistence, cluster
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    except redis.ResponseError:
        info = {}  # INFO refused (an ACL): nothing to judge by, said as a warning
    try:
        save: str | None = str(client.config_get("save").get("save", ""))
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    except redis.ResponseError:
        save = None  # CONFIG renamed or refused, as managed services do
    aof = info.get("aof_enabled")
    policy = info.get("maxmemory_policy")
    return Findings(
        cluster_enabled=str(info.get("cluster_enabled", 0)) == "1",
        maxmemory_policy=None if policy is None else str(policy),
        aof_enabled=None if aof is None else str(aof) == "1",
        save=save,
    )


def check_redis(settings: Settings, *, warn: Callable[[str], None]) -> None:
    """Raise RedisUnfit if the ledger's Redis would lose our records; ``warn`` what is unclear."""
    where = f"The Redis at {redact_url(settings.ledger_url)}"
    client = ledger_client(settings)
    try:
        findings = inspect(client)
    finally:
        client.close()
    if findings is None:
        log.warning(
            "redis_check_skipped reason=unreachable url=%s", redact_url(settings.ledger_url)
        )
        return
    verdict = judge(findings, where=where, ephemeral_ok=settings.redis_ephemeral)
    if verdict.refusal is not None:
        raise RedisUnfit(verdict.refusal)
    if verdict.warning is not None:
        warn(verdict.warning)


def guard_worker_start(app: Celery, settings: Callable[[], Settings]) -> None:
    """Make every worker of ``app`` check its Redis before it consumes, or refuse to start."""
    name = app.main or "celery"

    def say(text: str) -> None:
        # Logging is not set up yet at worker_init: stderr is where the sentence is seen.
        sys.stderr.write(f"{name} worker: warning: {text}\n")
        sys.stderr.flush()

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return  # a worker of another app that happens to live in this process
        try:
            check_redis(settings(), warn=say)
        except BadInput as refused:
            sys.stderr.write(f"{name} worker not started: {refused.message}\n")
            sys.stderr.flush()
            raise SystemExit(refused.exit_code) from None

    # Held strongly: the receiver is a closure nothing else keeps alive.
    worker_init.connect(on_worker_init, weak=False)
