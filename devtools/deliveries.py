"""Webhook deliveries as Pleo sends them: ``v1.export-job.created``, signed, for a receiver to take.

What the demo fires at its receiver and what ``pleo-export deliver`` sends to yours: the body is
``{"data": <the export job>, "eventId": <uuid>, "eventType": "v1.export-job.created"}`` (Pleo's
webhook guide), signed the Standard Webhooks way (``producer/signature.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from producer import signature
from producer.webhook import EXPORT_JOB_CREATED


def export_job_created(job: Mapping[str, Any]) -> bytes:
    """The body of a ``v1.export-job.created`` delivery for ``job`` (Pleo's ExportJob fields)."""
    event = {"data": dict(job), "eventId": str(uuid.uuid4()), "eventType": EXPORT_JOB_CREATED}
    return json.dumps(event).encode()


def signed_headers(body: bytes, secret: str, *, now: float | None = None) -> dict[str, str]:
    """The headers Pleo sends with ``body``: a fresh ``webhook-id``, the time, the signature."""
    msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time() if now is None else now)
    return {
        signature.ID_HEADER: msg_id,
        signature.TIMESTAMP_HEADER: str(stamp),
        signature.SIGNATURE_HEADER: signature.sign(msg_id, stamp, body, secret),
        "content-type": "application/json",
    }


def deliver(
    url: str, job: Mapping[str, Any], secret: str, *, timeout: float = 10
) -> httpx.Response:
    """POST a signed ``v1.export-job.created`` for ``job`` to the receiver at ``url``."""
    body = export_job_created(job)
    return httpx.post(url, content=body, headers=signed_headers(body, secret), timeout=timeout)
