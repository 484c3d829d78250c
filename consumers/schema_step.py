"""Announces, from every ERP worker's main process, the item message schemas it reads.

A bootstep of the worker's consumer (it starts once the worker takes tasks and stops first when it
stops taking them) puts the announcement on the worker's own timer, in its main process: at start,
then every ``ANNOUNCE_EVERY`` seconds, each one living ``ANNOUNCED_FOR`` (``contract/schemas.py``).
A warm shutdown withdraws it as its first step, before the pool winds down (which can take 30 s);
a killed worker's lapses. What it reads is ``ERP_MESSAGE_SCHEMAS`` (default every schema this code
reads: N and N-1).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import bootsteps

from contract.celery_app import app_settings
from contract.errors import PleoExportError
from contract.schemas import ANNOUNCE_EVERY, announce, withdraw
from contract.store import ledger_client

log = logging.getLogger(__name__)


class SchemaAnnouncer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: the schema announcement on the worker's timer, while it takes tasks."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._client: Any = None
        self._worker = ""

    def start(self, parent: Any) -> None:
        """Announce now, then every ``ANNOUNCE_EVERY`` seconds."""
        settings = app_settings(parent.app)
        self._client = client = ledger_client(settings)
        self._worker = worker = parent.hostname or socket.gethostname()
        reads = settings.reads_schemas

        def tick() -> None:
            try:
                announce(client, worker, reads)
            except PleoExportError as exc:
                # Redis unreachable now: the next tick tries again (the choice meanwhile falls
                # back to what the remaining announcements and unannounced workers allow).
                log.warning("schema_announce_failed error=%s", exc.message)

        tick()
        self._timer_entry = parent.timer.call_repeatedly(ANNOUNCE_EVERY, tick)
        log.info(
            "schemas_announced worker=%s reads=%s",
            worker,
            ",".join(str(n) for n in sorted(reads)),
        )

    def stop(self, parent: Any) -> None:
        """Stop announcing and withdraw, so producers stop counting this worker at once."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        if self._client is not None:
            try:
                withdraw(self._client, self._worker)
            except PleoExportError:
                log.warning("schema_withdraw_failed (the announcement lapses by itself)")
            self._client.close()
