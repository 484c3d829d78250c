"""The reference ERP workers: each entry posted once, results back to Pleo, the job completed.

``celery -A consumers worker -Q pleo-export-items`` finds the Celery app here; it is built on
first use, so importing a submodule (the adapter, the message parser) needs no broker.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from consumers.tasks import app

        return app
    raise AttributeError(f"module 'consumers' has no attribute {name!r}")
