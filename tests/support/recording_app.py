"""A stock Celery worker app for tests: its ``consumers.export_item`` records each delivery.

Started as ``celery -A tests.support.recording_app worker -Q pleo-export-items`` by the tests, it
proves that what the producer writes is consumed by an unmodified Celery worker, argument for
argument. It records into the Redis list ``RECEIVED_KEY`` of the test database.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, Task

from contract.celery_app import celery_config
from contract.names import ITEM_TASK
from contract.settings import Settings

RECEIVED_KEY = "test:received"

settings = Settings.from_env()
app = Celery("recording")
app.conf.update(celery_config(settings))
_redis = redis.Redis.from_url(os.environ.get("REDIS_URL", settings.redis_url))


@app.task(name=ITEM_TASK, bind=True, acks_late=True)
def export_item(self: Task, **kwargs: Any) -> None:
    """Record the delivery: task id and every keyword argument."""
    _redis.rpush(RECEIVED_KEY, json.dumps({"task_id": self.request.id, "kwargs": kwargs}))
