"""The cyclic garbage collector, relaxed for the length of a run: opted into by the process owner.

Decoding a 1,000-item page allocates ~100,000 objects, none in a cycle, so at the default
thresholds the collector ran every 700 allocations and often re-scanned the run's growing heap:
25-30% of a 100,000-entry run's CPU (bench/run_job.py: fetch 9.3 s → 6.9 s). It cannot be switched
off: each httpx response sits in a cycle with its stream and holds its 2.5 MB page until collected
(peak RSS went from 170 to 400 MB with the collector off; 183 MB with these thresholds).

The thresholds are the whole process's, so only the owner of the process sets them (the ``run``
command, the producer task in its pool process), never ``run_job`` itself. Nested or overlapping
blocks (two runs in threads of one process) share one relaxation: the first in sets it, the last
out restores what was there before the first.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Python's defaults are (700, 10, 10).
RUN_THRESHOLDS = (50_000, 20, 100)

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def relaxed_cyclic_gc() -> Iterator[None]:
    """Run the cyclic garbage collector less often within the block."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(*RUN_THRESHOLDS)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
