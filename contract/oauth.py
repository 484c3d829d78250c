"""OAuth 2.0 as Pleo (and Xero, QuickBooks Online, Business Central) do it: PKCE S256, tokens.

Pure parts first (the PKCE pair, the authorize URL, reading a token answer); then ``TokenEndpoint``,
the two grants over an injected httpx client, with the client authenticated by
``Basic base64(client_id:client_secret)``. A grant the server refuses (``invalid_grant``: the
refresh token was revoked, rotated away or expired) is ``GrantRefused``; a server that cannot be
reached or answers 5xx is ``TransientUpstreamError`` (retried by the caller's one retry layer).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from contract.errors import PermanentUpstreamError, TransientUpstreamError, cause


class GrantRefused(PermanentUpstreamError):
    """The token endpoint refused the grant (``invalid_grant``, ``invalid_client``): log in anew."""


@dataclass(frozen=True, slots=True)
class TokenSet:
    """An access token, when it expires (epoch seconds), and the refresh token; repr hides all."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(default=None, repr=False)
    scope: str = ""

    def expiring(self, now: float, ahead: float) -> bool:
        """Whether the access token expires within ``ahead`` seconds of ``now``."""
        return self.expires_at - now <= ahead


@dataclass(frozen=True, slots=True)
class Pkce:
    """A PKCE pair: the verifier kept here, the S256 challenge sent with the authorize request."""

    verifier: str = field(repr=False)
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        """A fresh pair (RFC 7636: 43 to 128 unreserved characters; 64 bytes of randomness)."""
        verifier = secrets.token_urlsafe(64)[:128]
        return cls(verifier, s256(verifier))


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: BASE64URL(SHA256(verifier)), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    base: str, *, client_id: str, redirect_uri: str, state: str, pkce: Pkce, scope: str
) -> str:
    """The URL a user opens to consent: code flow, PKCE S256, our loopback redirect."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    if scope:
        query["scope"] = scope
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"


def token_set(body: object, *, now: float, previous_refresh: str | None = None) -> TokenSet:
    """A token answer as a TokenSet; a refresh answer without a refresh token keeps the old one."""
    if not isinstance(body, dict):
        raise TransientUpstreamError("The token endpoint answered without a JSON object.")
    access, expires_in = body.get("access_token"), body.get("expires_in", 3600)
    if not isinstance(access, str) or not access:
        raise TransientUpstreamError("The token endpoint answered without an access_token.")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
        raise TransientUpstreamError("The token endpoint answered an unusable expires_in.")
    refresh = body.get("refresh_token")
    scope = body.get("scope")
    return TokenSet(
        access_token=access,
        expires_at=now + float(expires_in),
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        scope=scope if isinstance(scope, str) else "",
    )


class TokenEndpoint:
    """One OAuth client's token endpoint: the code exchange and the refresh grant."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str | None,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
        clock: Any = time.time,
    ) -> None:
        self.url = url
        self._auth = httpx.BasicAuth(client_id, client_secret or "")
        # Without a client given, each grant opens its own: they are minutes apart, and nothing
        # is left open by a process that drops the endpoint.
        self._http = http
        self._timeout = timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenEndpoint(url={self.url!r})"

    def close(self) -> None:
        """Close the HTTP client given, if any."""
        if self._http is not None:
            self._http.close()

    def exchange(self, code: str, *, verifier: str, redirect_uri: str) -> TokenSet:
        """Trade an authorization code (and the PKCE verifier) for tokens."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        return token_set(self._post(form), now=self._clock())

    def refresh(self, refresh_token: str) -> TokenSet:
        """A new access token (and, where tokens rotate, a new refresh token)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return token_set(self._post(form), now=self._clock(), previous_refresh=refresh_token)

    def _post(self, form: dict[str, str]) -> object:
        started = self._clock()
        headers = {"Accept": "application/json"}
        try:
            if self._http is not None:
                response = self._http.post(self.url, data=form, auth=self._auth, headers=headers)
            else:
                with httpx.Client(timeout=self._timeout) as http:
                    response = http.post(self.url, data=form, auth=self._auth, headers=headers)
        except httpx.TransportError as exc:
            raise TransientUpstreamError(
                f"The token endpoint {self.url} could not be reached ({type(exc).__name__})."
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code in (400, 401) and isinstance(error, str):
            raise GrantRefused(
                f"The token endpoint {self.url} refused the {form['grant_type']} grant ({error}).",
                status=response.status_code,
                url=self.url,
            )
        if not response.is_success:
            kind = TransientUpstreamError if response.status_code >= 500 else GrantRefused
            raise kind(
                f"The token endpoint {self.url} answered {response.status_code} after "
                f"{self._clock() - started:.1f} s.",
                status=response.status_code,
                url=self.url,
            )
        try:
            return body if body is not None else response.json()
        except ValueError as exc:
            raise TransientUpstreamError(
                f"The token endpoint {self.url} answered a body that is not JSON: {cause(exc)}."
            ) from exc
