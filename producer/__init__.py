"""pleo-export-producer: Pleo export jobs into your ERP, every entry once, in order.

``celery -A producer worker -Q pleo-export-producer`` finds the Celery app here; it is built on
first use, so importing a submodule (the CLI, the plan) never needs a broker or valid settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "enqueue"]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from producer.tasks import app

        return app
    if name == "enqueue":
        # ``producer.enqueue(job_id, company_id=None)``: the documented API for other services.
        from producer.triggers import enqueue

        return enqueue
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
