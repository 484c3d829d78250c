"""Retention's pure parts: every per-job key is accounted for, and the pool's log line is cut."""

from __future__ import annotations

import logging

import pytest

from contract import keys
from contract.errors import BadInput
from contract.lease import FENCE_TTL
from contract.log_filters import HIDDEN, POOL_LOGGER, HideTaskArguments
from contract.retrying import RETRY_CAP
from contract.settings import Settings

JOB = "0b9f6c1e-2a5d-4f0e-8c3b-7d1e2f3a4b5c"


def test_every_per_job_key_is_either_retained_dropped_or_a_lease() -> None:
    """Closing and purge know every key a job can have: none is left behind by either."""
    # An ERP connection's keys (its budget, slots and claims, its OAuth credential) are per
    # connection, not per job.
    not_per_job = {"job_key", "lease_key", "erp_key", "erp_claims_key", "erp_companies_key"}
    not_per_job |= {"credentials_key"}  # per Pleo company or ERP connection (OAuth)
    functions = [
        value
        for name, value in vars(keys).items()
        if name.endswith("_key") and callable(value) and name not in not_per_job
    ]
    made = {fn(JOB) for fn in functions} | {keys.lease_key(JOB)}
    made |= {key for lease in keys.LEASES for key in keys.lease_keys(JOB, lease)}
    assert made - {keys.webhook_delivery_key(JOB), keys.schema_reader_key(JOB)} == set(
        keys.job_keys(JOB)
    )
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


def test_default_retention_outlasts_every_redelivery_of_a_finished_job() -> None:
    """At the defaults, ``:final`` outlives any late copy: kombu's redelivery plus a retry's wait.

    The e2e test closes jobs every 0.5 s with an hour of retention; this is the arithmetic at the
    defaults: 7 days against 3,600 s of visibility timeout + 300 s of the longest retry countdown
    + 10 s until the closing step (which only shortens lifetimes from 30 days to 7).
    """
    defaults = Settings()
    latest_copy = defaults.visibility_timeout + RETRY_CAP + defaults.close_interval
    assert defaults.retention == 7 * 24 * 3600
    assert latest_copy == 3910
    assert defaults.retention > 100 * latest_copy
    assert defaults.dedup_ttl >= defaults.retention  # closing never makes a record live longer
    # A fencing counter lives at least as long as the lease it fences.
    assert min(defaults.dedup_ttl, FENCE_TTL) > defaults.lease_ttl


def test_retention_settings_parse_zero_and_refuse_nonsense() -> None:
    """``PLEO_RETENTION=0`` means delete once closed; a negative or non-number is bad input."""
    assert Settings.from_env({"PLEO_RETENTION": "0"}).retention == 0
    assert Settings.from_env({"PLEO_CLOSE_INTERVAL": "2.5"}).close_interval == 2.5
    for name, value in (("PLEO_RETENTION", "-1"), ("PLEO_RETENTION", "7d")):
        with pytest.raises(BadInput, match=name):
            Settings.from_env({name: value})
