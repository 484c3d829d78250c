"""Where ``Settings`` was imported from before the one contract (``contract/settings.py``).

Kept so that services written against the README's Python API (``from producer.config import
Settings``) go on working; nothing in this project imports it.
"""

from __future__ import annotations

from contract.names import ITEM_TASK, ITEMS_QUEUE, POLL_TASK, PRODUCER_QUEUE, PRODUCER_TASK
from contract.settings import Ordering, Settings

__all__ = [
    "ITEMS_QUEUE",
    "ITEM_TASK",
    "POLL_TASK",
    "PRODUCER_QUEUE",
    "PRODUCER_TASK",
    "Ordering",
    "Settings",
]
