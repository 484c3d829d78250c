"""Identifiers as Pleo writes them: canonical UUIDs, checked before anything acts on them."""

from __future__ import annotations

import re

from contract.errors import BadInput, shown

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid(value: object) -> bool:
    """True when ``value`` is a string in the canonical 8-4-4-4-12 hexadecimal UUID form."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def validate_uuid(value: object, what: str) -> str:
    """Return ``value`` lower-cased if it is a UUID, else raise BadInput naming ``what``."""
    if not isinstance(value, str) or not is_uuid(value):
        raise BadInput(f"{what} {shown(value)} is not a UUID.")
    return value.lower()


def validate_job_id(job_id: str) -> str:
    """Return the job id if it is a UUID, else raise BadInput."""
    return validate_uuid(job_id, "Job id")
