"""The producer's Celery app, configured from Settings: JSON only, late acks, task events on."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from producer.config import ITEMS_QUEUE, PRODUCER_QUEUE, PRODUCER_TASK, Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer and the ERP worker apps."""
    return {
        "broker_url": settings.broker_url,
        # The producer keeps its own records in Redis; task results are not needed downstream.
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One job at a time per worker process: a producer run is long and holds a lease.
        "worker_prefetch_multiplier": 1,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_queues": (Queue(PRODUCER_QUEUE), Queue(ITEMS_QUEUE)),
        "task_routes": {PRODUCER_TASK: {"queue": PRODUCER_QUEUE}},
        "task_default_queue": PRODUCER_QUEUE,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }


def make_app(settings: Settings, *, main: str = "producer") -> Celery:
    """A Celery app configured from ``settings``."""
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app
