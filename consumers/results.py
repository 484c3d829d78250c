"""An entry's outcome as the ERP workers write it: the update Pleo is sent, and the record kept.

``success_update``/``failure_update`` build the ``UpdateExportJobItemV3`` that waits in the job's
``:outbox`` for ``PUT /v3/export-jobs/{id}/items``. ``:results`` keeps the same object plus the
audit manifest's times (``AUDIT_FIELDS``, never sent to Pleo), written by the two scripts here,
which ``consumers/reporting.py`` runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

# What a results record holds beyond the update sent to Pleo (see RECORD, STAMP_REPORTED).
AUDIT_FIELDS: Final = ("recordedAt", "erpAttempts", "reportedAt")

# KEYS[1] results, KEYS[2] outbox, KEYS[3] counters; ARGV[1] entry, ARGV[2] update JSON,
# ARGV[3] counter to bump ("successful" or "failed"), ARGV[4] ttl ms, ARGV[5] the outcome JSON
# kept in results (the update and when it was recorded).
# Keeps the entry's first outcome only; returns the outbox size, or 0 if the entry had one already.
RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return redis.call('HLEN', KEYS[2])
"""

# KEYS[1] results; ARGV[1] epoch seconds, ARGV[2..] entries whose update Pleo accepted.
# Adds "reportedAt" to each one's kept outcome (a JSON object), once: the outcome stays the first.
STAMP_REPORTED = """
for i = 2, #ARGV do
  local kept = redis.call('HGET', KEYS[1], ARGV[i])
  if kept and not string.find(kept, '"reportedAt"', 1, true) then
    local stamped = string.sub(kept, 1, -2) .. ',"reportedAt":' .. ARGV[1] .. '}'
    redis.call('HSET', KEYS[1], ARGV[i], stamped)
  end
end
return 0
"""


def record_args(
    update: Mapping[str, Any], *, attempt: int, now: float, ttl_ms: int
) -> list[str | int]:
    """RECORD's ARGV for ``update``, recorded at ``now`` by a message's ``attempt``-th take."""
    # The outcome's time and tries ride in its results record (the audit manifest reads them),
    # never in the update sent to Pleo; epoch seconds and no "1 try" keep it small.
    audit: dict[str, int] = {"recordedAt": int(now)}
    if attempt > 1:
        audit["erpAttempts"] = attempt
    kept = json.dumps({**update, **audit})
    return [update["accountingEntryId"], json.dumps(update), update["status"], ttl_ms, kept]


def success_update(
    entry_id: str, external_id: str, external_url: str | None, at: str
) -> dict[str, Any]:
    """The ``UpdateExportJobItemV3`` of an entry the ERP booked."""
    update: dict[str, Any] = {
        "accountingEntryId": entry_id,
        "status": "successful",
        "externalId": external_id,
        "exportedAt": at,
    }
    if external_url is not None:
        update["externalUrl"] = external_url
    return update


def failure_update(entry_id: str, reason_type: str, reason: str) -> dict[str, Any]:
    """The ``UpdateExportJobItemV3`` of an entry the ERP refused."""
    return {
        "accountingEntryId": entry_id,
        "status": "failed",
        "failureReasonType": reason_type,
        "failureReason": reason,
    }
