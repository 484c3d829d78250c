"""Retention's pure parts: every per-job key is accounted for, and the pool's log line is cut."""

from __future__ import annotations

import logging

from contract import keys
from contract.log_filters import HIDDEN, POOL_LOGGER, HideTaskArguments

JOB = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"


def test_every_per_job_key_is_either_retained_dropped_or_a_lease() -> None:
    """Closing and purge know every key a job can have: none is left behind by either."""
    functions = [
        value
        for name, value in vars(keys).items()
        if name.endswith("_key") and callable(value) and name not in {"job_key", "lease_key"}
    ]
    made = {fn(JOB) for fn in functions} | {keys.lease_key(JOB)}
    made |= {key for lease in keys.LEASES for key in keys.lease_keys(JOB, lease)}
    assert made - {keys.webhook_delivery_key(JOB)} == set(keys.job_keys(JOB))
    assert not set(keys.RETAINED) & set(keys.DROPPED_AT_CLOSE)
    assert "payloads" in keys.DROPPED_AT_CLOSE


def test_the_pool_line_keeps_its_task_and_loses_its_arguments() -> None:
    """``TaskPool: Apply`` shows the function, never the message body; other lines pass as is."""
    body = '{"export_item": {"note": "Team lunch"}}'
    record = logging.LogRecord(
        POOL_LOGGER,
        logging.DEBUG,
        __file__,
        1,
        "TaskPool: Apply %s (args:%s kwargs:%s)",
        ("<function fast_trace_task>", f"('consumers.export_item', {body!r})", "{}"),
        None,
    )
    assert HideTaskArguments().filter(record)
    shown = record.getMessage()
    assert "Team lunch" not in shown
    assert shown == f"TaskPool: Apply <function fast_trace_task> (args:{HIDDEN} kwargs:{HIDDEN})"
    other = logging.LogRecord(POOL_LOGGER, logging.INFO, __file__, 1, "pool %s", ("up",), None)
    assert HideTaskArguments().filter(other)
    assert other.getMessage() == "pool up"
