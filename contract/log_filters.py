"""No payload field in any log line, at any level: the one filter Celery's own logging needs.

Our log lines carry ids, counts and states, never an export item's fields (names, notes, tax
ids, receipt URLs, amounts). Celery's carry what its messages' ``argsrepr``/``kwargsrepr``
headers say, which are short for every item message we send (``contract.wire.short_repr``, also
on retries: ``consumers.tasks.retry_item``), with one exception: at DEBUG the pool logs each
task's raw arguments, the message body with its export item included (``TaskPool: Apply``;
Celery happens to cut the line after 1 KB of headers today, which is luck, not a rule).
``HideTaskArguments`` replaces those arguments with a placeholder; ``install`` puts it on that
logger, and both worker apps call it when a worker starts (``worker_init``).
"""

from __future__ import annotations

import logging
from typing import Any

# The logger of Celery's pools (celery/concurrency/base.py) and the message it logs arguments in.
POOL_LOGGER = "celery.pool"
_APPLY = "TaskPool: Apply"
HIDDEN = "(hidden: task arguments are never logged)"


class HideTaskArguments(logging.Filter):
    """Keeps the pool's ``TaskPool: Apply`` lines (the task's function) without its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's arguments in place; every record passes."""
        if isinstance(record.msg, str) and record.msg.startswith(_APPLY):
            target = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.args = (target, HIDDEN, HIDDEN)
        return True


def install(**_: Any) -> None:
    """Put ``HideTaskArguments`` on Celery's pool logger once (a ``worker_init`` receiver)."""
    logger = logging.getLogger(POOL_LOGGER)
    if not any(isinstance(f, HideTaskArguments) for f in logger.filters):
        logger.addFilter(HideTaskArguments())
