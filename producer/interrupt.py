"""SIGTERM and SIGINT stop a run cleanly: the lease is released and the job handed back at once.

Without this a SIGTERM (``docker stop``, a deploy, ``kill``) ended a run with its lease still held
for a TTL, and a worker's warm shutdown waited for the whole run. The caller that owns the process
(the ``run`` command, the producer task in a pool process) opts in around the run; the run itself
installs nothing.

The first signal raises ``RunInterrupted`` in the main thread wherever it is; the ``finally``
blocks on the way out stop the data layer's reader, release the lease and record the run as
interrupted. The previous handlers come back at once, so a second signal acts as it always did
(SIGTERM kills, SIGINT raises KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

from contract.errors import RunInterrupted

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def interruptible(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises RunInterrupted (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        # Signal handlers belong to the main thread; elsewhere the process's own handling stays.
        yield
        return
    previous: dict[signal.Signals, Any] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous.clear()

    def stop(signum: int, _frame: FrameType | None) -> None:
        restore()
        raise RunInterrupted(signum)

    for signum in signals:
        previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        restore()
