"""A simulated OAuth 2.0 authorization server, mounted by the Pleo and the ERP simulators.

What Pleo documents (``../shared/pleo-api/DIGEST.md`` §6), and Xero, QuickBooks Online and
Business Central do alike: the authorization-code grant with PKCE (S256 only), the
``refresh_token`` grant, the client authenticated with ``Basic base64(client_id:client_secret)``.

- ``GET  {prefix}/authorize?response_type=code&client_id&redirect_uri&state&code_challenge
  &code_challenge_method=S256``: the user "consents" at once; 302 to ``redirect_uri?code&state``
  (a code lives 60 s and is good once);
- ``POST {prefix}/token`` (form): ``grant_type=authorization_code`` with ``code``,
  ``redirect_uri``, ``code_verifier``; or ``grant_type=refresh_token`` with ``refresh_token``.
  Answers ``{access_token, token_type, expires_in, refresh_token, scope}``; a refused grant is
  400 ``{"error": "invalid_grant"}``, a bad client 401 ``invalid_client``.
  Refresh tokens ROTATE: each refresh answers a new one and the one used is refused from then on,
  so two processes refreshing with the same token lock each other out (the second gets
  ``invalid_grant``): what the producer's single refresher must avoid.
- Access tokens expire ``access_lifetime`` seconds after issue on the injected ``clock``.
- Control (``/_sim/oauth``): ``GET`` the counters (grants by kind, refusals, live tokens);
  ``POST`` ``{"access_lifetime": s}``; ``POST /_sim/oauth/revoke`` ends every refresh token (and
  access token, unless the body is ``{"access": false}``) issued so far;
  ``POST /_sim/oauth/grants`` hands a fresh token set to a test without the browser step.
  Counters: ``refresh_token`` (refreshes granted), ``refused_refresh``, ``reused_refresh`` (a
  token rotated away presented again: two refreshers raced), ``expired_or_unknown_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CODE_LIFETIME: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: str
    issued: float


class OAuthServer:
    """Clients, codes, access and refresh tokens behind one lock; counters for the tests."""

    def __init__(
        self,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",  # noqa: S107 - a simulator's fixed test credential
        *,
        access_lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.access_lifetime = access_lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, float] = {}  # token -> expiry (clock seconds)
        self._refresh: dict[str, str] = {}  # live refresh token -> scope
        # Refresh tokens given up by rotation: one presented again is a lockout in the making.
        self._used: set[str] = set()
        self.counts: Counter[str] = Counter()
        # Every token issued, so a test can look for any of them where none may be (logs).
        self._issued: list[str] = []

    def __repr__(self) -> str:
        return f"OAuthServer(client_id={self.client_id!r}, access_lifetime={self.access_lifetime})"

    def accepts(self, header: str | None) -> bool:
        """Whether ``Authorization: Bearer <token>`` names an access token alive now."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self._lock:
            expiry = self._access.get(token.strip())
            alive = expiry is not None and self._clock() < expiry
            if not alive:
                self.counts["expired_or_unknown_token"] += 1
            return alive

    def issue(self, scope: str = "") -> dict[str, Any]:
        """A fresh token set, as the token endpoint answers it."""
        with self._lock:
            return self._issue(scope)

    def issued(self) -> list[str]:
        """Every access and refresh token issued so far (for tests: none may show anywhere)."""
        with self._lock:
            return list(self._issued)

    def revoke(self, *, access: bool = True) -> int:
        """End every refresh token issued so far (and access token, unless ``access`` is False:
        a grant withdrawn lets its access tokens live out their lifetime); returns how many."""
        with self._lock:
            ended = len(self._refresh)
            self._refresh.clear()
            if access:
                self._access.clear()
            self.counts["revocations"] += 1
            return ended

    def _issue(self, scope: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        self._access[access] = self._clock() + self.access_lifetime
        self._refresh[refresh] = scope
        self._issued += [access, refresh]
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": refresh,
            "scope": scope,
        }

    def authorize(self, params: dict[str, str]) -> tuple[int, str | dict[str, Any]]:
        """The authorize step: (302, redirect URL) or (400, error body)."""
        redirect = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id or not redirect:
            return 400, {"error": "invalid_request", "error_description": "Unknown client."}
        if params.get("response_type") != "code":
            return 400, {"error": "unsupported_response_type"}
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or len(challenge) < 43:
            return 400, {"error": "invalid_request", "error_description": "PKCE S256 required."}
        code = secrets.token_urlsafe(16)
        with self._lock:
            scope = params.get("scope", "")
            self._codes[code] = _Code(self.client_id, redirect, challenge, scope, self._clock())
        query = {"code": code, **({"state": params["state"]} if "state" in params else {})}
        return 302, f"{redirect}{'&' if '?' in redirect else '?'}{urlencode(query)}"

    def token(self, authorization: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint: (200, token set) or (400/401, OAuth error body)."""
        if not self._client_ok(authorization):
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        with self._lock:
            if grant == "authorization_code":
                return self._exchange(form)
            if grant == "refresh_token":
                return self._refreshed(form.get("refresh_token", ""))
        return 400, {"error": "unsupported_grant_type"}

    def _exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = self._codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if (
            code is None
            or self._clock() - code.issued > CODE_LIFETIME
            or code.redirect_uri != form.get("redirect_uri")
            or not hmac.compare_digest(challenge, code.challenge)
        ):
            self.counts["refused_code"] += 1
            return 400, {"error": "invalid_grant"}
        self.counts["authorization_code"] += 1
        return 200, self._issue(code.scope)

    def _refreshed(self, refresh: str) -> tuple[int, dict[str, Any]]:
        scope = self._refresh.pop(refresh, None)
        if scope is None:
            self.counts["refused_refresh"] += 1
            if refresh in self._used:
                self.counts["reused_refresh"] += 1
            return 400, {"error": "invalid_grant", "error_description": "Refresh token refused."}
        self._used.add(refresh)
        self.counts["refresh_token"] += 1
        return 200, self._issue(scope)

    def _client_ok(self, header: str | None) -> bool:
        scheme, _, credential = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self.client_id}:{self._secret}"
        return hmac.compare_digest(decoded.encode(), expected.encode())

    def view(self) -> dict[str, Any]:
        """The counters and sizes ``GET /_sim/oauth`` shows (no token)."""
        with self._lock:
            return {
                "counts": dict(self.counts),
                "access_lifetime": self.access_lifetime,
                "live_refresh_tokens": len(self._refresh),
            }


def routes(current: Callable[[], OAuthServer | None], prefix: str = "/oauth") -> list[Route]:
    """The authorize and token endpoints under ``prefix``, and the ``/_sim/oauth`` control, of
    the server ``current()`` gives at each request (404 while it gives None: OAuth is off)."""

    def serving(
        handler: Callable[[OAuthServer, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            server = current()
            if server is None:
                return JSONResponse({"error": "OAuth is not enabled"}, status_code=404)
            return await handler(server, request)

        return run

    async def authorize(server: OAuthServer, request: Request) -> Response:
        status, answer = server.authorize(dict(request.query_params))
        if status == 302 and isinstance(answer, str):
            return RedirectResponse(answer, status_code=302)
        return JSONResponse(answer, status_code=status)

    async def token(server: OAuthServer, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        status, body = server.token(request.headers.get("authorization"), form)
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    async def view(server: OAuthServer, request: Request) -> Response:
        return JSONResponse(server.view())

    async def configure(server: OAuthServer, request: Request) -> Response:
        body = await request.json()
        lifetime = body.get("access_lifetime") if isinstance(body, dict) else None
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            return JSONResponse({"error": "access_lifetime must be > 0"}, status_code=400)
        server.access_lifetime = float(lifetime)
        return JSONResponse(server.view())

    async def revoke(server: OAuthServer, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw.strip() else {}
        access = body.get("access", True) if isinstance(body, dict) else True
        return JSONResponse({"revoked": server.revoke(access=access is not False)})

    async def grant(server: OAuthServer, request: Request) -> Response:
        return JSONResponse(server.issue(), status_code=201)

    return [
        Route(f"{prefix}/authorize", serving(authorize), methods=["GET"]),
        Route(f"{prefix}/token", serving(token), methods=["POST"]),
        Route("/_sim/oauth", serving(view), methods=["GET"]),
        Route("/_sim/oauth", serving(configure), methods=["POST"]),
        Route("/_sim/oauth/revoke", serving(revoke), methods=["POST"]),
        Route("/_sim/oauth/grants", serving(grant), methods=["POST"]),
    ]
