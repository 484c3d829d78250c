"""Standard Webhooks signatures, as Pleo signs its deliveries: pure functions, clock passed in.

The scheme (``standard-webhooks/spec/standard-webhooks.md``): the secret is ``whsec_<base64>``,
whose decoded bytes are the HMAC key; the signed content is ``"{webhook-id}.{webhook-timestamp}."``
followed by the raw body bytes; the signature is base64(HMAC-SHA256(key, content)); the
``webhook-signature`` header is a space-separated list of ``v1,<signature>`` entries (several
while a secret is being rotated), and any one matching is enough. Timestamps more than five
minutes away from now, either way, are refused, so a captured delivery cannot be replayed later.

The reference package ``standardwebhooks`` is not used: it reads the wall clock itself (no
injected ``now``), raises ``ValueError``/``binascii.Error``/``UnicodeDecodeError`` rather than its
own error on malformed headers or a non-UTF-8 body, and accepts malformed secrets silently.

No message raised here contains the secret, the key or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

from contract.errors import BadInput

SECRET_PREFIX: Final = "whsec_"  # noqa: S105  # the scheme's prefix, not a secret
TOLERANCE_SECONDS: Final = 300
ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"

# Printable ASCII without spaces: the id is signed as text and later used in a Redis key.
_MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,256}")
# Whole seconds since the epoch, as the scheme sends them.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


class SignatureInvalid(BadInput):
    """A delivery (or the secret) failed verification; ``reason`` says why, without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Webhook signature rejected: {reason}.")
        self.reason = reason


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; anything else raises SignatureInvalid."""
    if not secret.startswith(SECRET_PREFIX):
        raise SignatureInvalid("the secret does not start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the secret is not whsec_ followed by base64") from None
    if not key:
        raise SignatureInvalid("the secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(msg_id: str, timestamp: int | str, body: bytes, secret: str) -> str:
    """The ``webhook-signature`` header value (``v1,<base64>``) Pleo would send for ``body``."""
    digest = _signature(decode_secret(secret), msg_id, str(timestamp), body)
    return f"v1,{base64.b64encode(digest).decode('ascii')}"


def verify(headers: Mapping[str, str], body: bytes, secret: str, *, now: float) -> None:
    """Return if ``body`` is validly and freshly signed by ``secret``; else raise SignatureInvalid.

    ``headers`` may be any mapping (names are matched case-insensitively); ``now`` is the
    current time in seconds since the epoch.
    """
    key = decode_secret(secret)
    wanted = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    # A multi-valued mapping (an HTTP request's headers) lists a repeated header once per value;
    # which copy counts would differ between this check and its caller, so refuse the ambiguity.
    names = [name.lower() for name, _ in headers.items()]
    repeated = [name for name in wanted if names.count(name) > 1]
    if repeated:
        raise SignatureInvalid(f"repeated header {', '.join(repeated)}")
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in wanted if not lowered.get(name)]
    if missing:
        raise SignatureInvalid(f"missing header {', '.join(missing)}")
    msg_id, timestamp, header = (lowered[name] for name in wanted)
    if _MESSAGE_ID.fullmatch(msg_id) is None:
        raise SignatureInvalid("webhook-id is not 1-256 printable ASCII characters")
    if _TIMESTAMP.fullmatch(timestamp) is None:
        raise SignatureInvalid("webhook-timestamp is not a whole number of seconds")
    age = now - int(timestamp)
    if age > TOLERANCE_SECONDS:
        raise SignatureInvalid("webhook-timestamp is too old")
    if age < -TOLERANCE_SECONDS:
        raise SignatureInvalid("webhook-timestamp is in the future")
    expected = _signature(key, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(header)):
        raise SignatureInvalid("no signature matches")


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of the header; other versions and bad base64 are skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found
