"""Builds a run's parts from Settings (HTTP client, ledger, publisher) and closes them after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from celery import Celery

from contract.errors import PleoExportError
from contract.ledger import Ledger
from contract.schemas import SchemaChoice
from contract.settings import Settings
from contract.states import JobState
from contract.store import ledger_client, now_iso
from pleo.activity import PleoActivity
from pleo.client import PleoClient, make_http_client
from producer.publish import KombuPublisher, Publisher, RedisPublisher
from producer.runner import Observer, RunSummary, fail_job, run_job


@dataclass(frozen=True, slots=True)
class Components:
    """What ``run_job`` needs, wired to real services."""

    client: PleoClient
    ledger: Ledger
    publisher: Publisher
    activity: PleoActivity


def make_ledger(settings: Settings, client: redis.Redis | None = None) -> Ledger:
    """The ledger on ``client``, by default a new client of the Redis the settings name."""
    return Ledger(
        ledger_client(settings) if client is None else client,
        lease_ttl=settings.lease_ttl,
        dedup_ttl=settings.dedup_ttl,
    )


@contextmanager
def open_components(settings: Settings, app: Celery) -> Iterator[Components]:
    """Open the HTTP client and Redis connections for one run; close them when it ends."""
    client = ledger_client(settings)
    ledger = make_ledger(settings, client)
    activity = PleoActivity(client, dedup_ttl=settings.dedup_ttl)
    kind = RedisPublisher if settings.uses_redis_broker else KombuPublisher
    publisher: Publisher = kind(
        app,
        ledger,
        settings.broker_url,
        batch_size=settings.publish_batch,
        choose_schema=SchemaChoice(client, app, settings.message_schema).choose,
    )
    with make_http_client(settings) as http:
        yield Components(
            client=PleoClient(http, settings),
            ledger=ledger,
            publisher=publisher,
            activity=activity,
        )


def produce(
    job_id: str,
    *,
    settings: Settings,
    app: Celery,
    observer: Observer | None = None,
    who: str = "pleo-export run",
) -> RunSummary:
    """Run one job end to end with real services; ``who`` names the run in its lease."""
    with open_components(settings, app) as parts:
        return run_job(
            job_id,
            settings=settings,
            client=parts.client,
            ledger=parts.ledger,
            publisher=parts.publisher,
            activity=parts.activity,
            observer=observer,
            who=who,
        )


def give_up(job_id: str, exc: PleoExportError, *, settings: Settings, app: Celery) -> None:
    """End a job whose runs failed past every retry: recorded ``failed``, and Pleo told once."""
    with open_components(settings, app) as parts:
        parts.ledger.record(job_id, state=JobState.FAILED, error=exc.message, finished_at=now_iso())
        fail_job(parts.ledger, parts.client, job_id, exc, activity=parts.activity)
