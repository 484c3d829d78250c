"""Which item message schema to write: one that every live ERP worker reads.

Each ERP worker's main process announces the schemas it reads (``announce``, every
``ANNOUNCE_EVERY`` seconds, for ``ANNOUNCED_FOR``; ``consumers/schema_step.py``). Before a job's
messages are written (a producer run, a repair sweep's re-send), ``SchemaChoice.choose`` reads the
announcements and picks:

- ``PLEO_MESSAGE_SCHEMA=auto`` (the default): the oldest schema every live worker reads. Workers
  read N and N-1, so during a rollout (and after it, until told otherwise) that is the previous
  schema, which old and new workers both read; it moves on by itself only once no live worker
  reads the older one any more. With no announcement at all, the oldest schema this code writes.
- ``PLEO_MESSAGE_SCHEMA=N``: schema N (the operator's word that the rollout is done), unless a live
  worker cannot read it; then the newest one every live worker reads, with a warning
  (``message_schema_lowered``). Writing what everyone reads is the safe side: nothing is parked,
  no job waits for an operator, and a worker from before schema 2 (which acks away what it cannot
  read) never meets schema 2.

Workers from before announcements existed never announce: "no announcement" means "reads schema 1
only". Such a worker is seen only through Celery's remote control (``inspect().active_queues()``,
one broadcast of ``INSPECT_TIMEOUT`` seconds): a consumer of the items queue that has not announced
counts as reading schema 1 only. The broadcast is made only when the announcements alone would
give a schema such a worker cannot read, so ``auto`` in this release never pays for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis
from celery import Celery

from contract.keys import schema_reader_key, schema_reader_of
from contract.message import READS
from contract.names import ITEMS_QUEUE
from contract.store import redis_call

log = logging.getLogger(__name__)

ANNOUNCE_EVERY: Final = 5.0
ANNOUNCED_FOR: Final = 3 * ANNOUNCE_EVERY
INSPECT_TIMEOUT: Final = 1.0
# What a worker that never announced reads: the schema of every release before announcements.
UNANNOUNCED: Final = frozenset({1})

# The node names of the workers consuming the items queue, as remote control finds them; None
# when it could not be asked.
Consumers = Callable[[], Collection[str] | None]
# Stands for the workers nobody could count (remote control unanswered): assumed old.
UNCOUNTED: Final = "(workers remote control could not list)"


def announce(client: redis.Redis, worker: str, reads: Collection[int]) -> None:
    """Record that ERP worker ``worker`` (its node name) reads ``reads``, for ``ANNOUNCED_FOR``."""
    record = json.dumps({"reads": sorted(reads), "at": round(time.time(), 3)})
    redis_call(
        lambda: client.set(schema_reader_key(worker), record, px=int(ANNOUNCED_FOR * 1000)),
        "the schema announcement",
    )


def withdraw(client: redis.Redis, worker: str) -> None:
    """Forget ``worker``'s announcement (its warm shutdown), so the choice moves on at once."""
    redis_call(lambda: client.delete(schema_reader_key(worker)), "the schema announcement")


def readers(client: redis.Redis) -> dict[str, frozenset[int]]:
    """Every live announcement: worker node name -> the schemas it reads."""

    def read() -> dict[str, frozenset[int]]:
        keys = list(client.scan_iter(schema_reader_key("*"), count=1000))
        found = {}
        for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
            if raw is not None:
                found[schema_reader_of(key)] = frozenset(json.loads(raw)["reads"])
        return found

    return dict(redis_call(read, "the schema announcements"))


def pick(wanted: int | None, reads: Mapping[str, Collection[int]]) -> int:
    """The schema to write when the live workers read ``reads`` (``wanted`` None: auto)."""
    common = set(READS).intersection(*reads.values()) if reads else set(READS)
    if not common:
        # No schema every worker reads (a fleet split across two upgrades): each message is
        # parked by the workers that cannot read it and read by the others; none is lost.
        return wanted or min(READS)
    if wanted is None:
        return min(common)
    return max((n for n in common if n <= wanted), default=min(common))


@dataclass
class SchemaChoice:
    """Chooses the schema of the messages about to be written (see the module docstring)."""

    client: redis.Redis
    app: Celery
    wanted: int | None = None
    consumers: Consumers | None = None

    def choose(self) -> int:
        """The schema to write now: ``pick`` over the announcements and unannounced consumers."""
        reads: dict[str, Collection[int]] = dict(readers(self.client))
        if pick(self.wanted, reads) not in UNANNOUNCED:
            # Only a newer schema is at risk from workers that never announce: look for them.
            found = self._consumers()
            for worker in [UNCOUNTED] if found is None else found:
                reads.setdefault(worker, UNANNOUNCED)
        schema = pick(self.wanted, reads)
        if self.wanted is not None and schema != self.wanted:
            behind = sorted(w for w, r in reads.items() if self.wanted not in r)
            log.warning(
                "message_schema_lowered wanted=%d writing=%d workers=%s",
                self.wanted,
                schema,
                ",".join(behind),
            )
        return schema

    def _consumers(self) -> Collection[str] | None:
        if self.consumers is not None:
            return self.consumers()
        return item_consumers(self.app)


def item_consumers(app: Celery, timeout: float = INSPECT_TIMEOUT) -> set[str] | None:
    """Node names of the workers consuming the items queue that answer remote control now.

    None when the broker cannot be asked: then an old worker may be there unseen, and the choice
    stays at schema 1.
    """
    try:
        replies: dict[str, Any] = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - any broker failure: ask again at the next choice
        log.warning("schema_census_inspect_failed error=%s", type(exc).__name__)
        return None
    return {
        worker
        for worker, queues in replies.items()
        if any(queue.get("name") == ITEMS_QUEUE for queue in queues or ())
    }
