"""The closed vocabularies of Pleo's Export API v3, as the specs and the digest list them."""

from __future__ import annotations

from typing import Final

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


# Tuples, not sets: the data generator picks from them with a seeded RNG, so their order matters.
EXPORT_ITEM_TYPES: Final = (
    "card_purchase",
    "card_invoice",
    "out_of_pocket",
    "mileage",
    "per_diem",
    "external_reimbursement",
    "direct_reimbursement",
    "invoice",
    "invoice_payment",
    "chargeback",
    "refund",
    "cashback",
    "atm_withdrawal",
    "wallet_topup",
    "wallet_unload",
    "personal_spend",
    "fee",
)
