"""The closed vocabularies of Pleo's Export API v3, as the specs and the digest list them."""

from __future__ import annotations

from typing import Final

from pleo.models import EXPORT_ITEM_TYPES

JOB_STATUSES: Final = frozenset(
    {"pending", "in_progress", "failed", "completed", "completed_with_errors"}
)
TERMINAL_JOB_STATUSES: Final = frozenset({"failed", "completed", "completed_with_errors"})
OPEN_JOB_STATUSES: Final = JOB_STATUSES - TERMINAL_JOB_STATUSES

JOB_EVENTS: Final = frozenset({"started", "failed", "completed", "completed_with_errors"})

ITEM_STATUSES: Final = frozenset({"pending", "in_progress", "failed", "successful", "abandoned"})
# Items a failed job leaves behind become "abandoned" (the spec's wording for that status).
UNFINISHED_ITEM_STATUSES: Final = frozenset({"pending", "in_progress"})

JOB_FAILURE_REASON_TYPES: Final = frozenset(
    {
        "invalid_configuration",
        "missing_configuration",
        "authentication_failure",
        "accounting_system_authentication_failure",
        "pleo_rate_limit",
        "accounting_system_rate_limit",
        "service_unreachable",
        "accounting_system_unreachable",
        "validation_failure",
        "authorization_failure",
        "integration_unusable",
        "job_expired",
        "service_timeout",
        "accounting_system_timeout",
        "canceled_by_user",
    }
)


# EXPORT_ITEM_TYPES (imported above) is a tuple in the spec's order: the data generator picks from
# it with a seeded RNG. It lives in pleo.models, which checks every export item against it.
__all__ = ["EXPORT_ITEM_TYPES"]
