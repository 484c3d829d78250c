"""Credential checks for the simulated API: a Bearer token or an API key sent as Basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac


def authorized(header: str | None, *, token: str | None, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header value is acceptable.

    With ``token`` set, ``Bearer <token>`` passes; with ``api_key`` set, ``Basic base64(<key>:)``
    passes (Pleo's API keys: the key as user name, an empty password). With neither set, any
    non-empty Bearer or Basic credential passes, which is what local runs and most tests want.
    """
    scheme, _, credential = (header or "").strip().partition(" ")
    scheme, credential = scheme.lower(), credential.strip()
    if not credential or scheme not in {"bearer", "basic"}:
        return False
    if token is None and api_key is None:
        return True
    if scheme == "bearer":
        return token is not None and hmac.compare_digest(credential.encode(), token.encode())
    if api_key is None:
        return False
    try:
        decoded = base64.b64decode(credential, validate=True)
    except binascii.Error:
        return False
    return hmac.compare_digest(decoded, f"{api_key}:".encode())
