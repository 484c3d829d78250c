"""The names other services address us by: Celery task names and queue names.

Part of the public contract (ARCHITECTURE.md): add to it, never rename.
"""

from __future__ import annotations

PRODUCER_QUEUE = "pleo-export-producer"
ITEMS_QUEUE = "pleo-export-items"
PRODUCER_TASK = "producer.enqueue_export_job"
POLL_TASK = "producer.poll_export_jobs"
ITEM_TASK = "consumers.export_item"
