"""The relaxed cyclic GC: set by the first block in, restored by the last one out."""

from __future__ import annotations

import gc
import threading

from producer.gc_tuning import RUN_THRESHOLDS, relaxed_cyclic_gc


def test_overlapping_blocks_restore_the_thresholds_from_before_the_first() -> None:
    """Two runs in threads, ending in either order, leave the process as they found it."""
    before = gc.get_threshold()
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()

    def first() -> None:
        with relaxed_cyclic_gc():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with relaxed_cyclic_gc():
        second_in.set()
        first_out.wait(5)
        # The first run ended while this one runs: still relaxed.
        assert gc.get_threshold() == RUN_THRESHOLDS
    thread.join(5)
    assert gc.get_threshold() == before
