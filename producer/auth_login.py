"""The authorization-code flow with PKCE (S256) on a loopback redirect: the first OAuth tokens.

``login`` binds ``127.0.0.1`` on an ephemeral port, hands the authorize URL to ``show`` (and a
browser, if asked), waits for the one redirect that carries our ``state``, and trades its code
(with the PKCE verifier) for tokens at the token endpoint. What it stores is the caller's choice
(``producer/auth_cli.py`` puts them in the credential store).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from contract.errors import BadInput, PermanentUpstreamError
from contract.oauth import Pkce, TokenEndpoint, TokenSet, authorize_url

log = logging.getLogger(__name__)

CALLBACK_PATH = "/callback"
_PAGE = (
    b"<!doctype html><title>pleo-export</title><p>Signed in: you can close this window and go "
    b"back to the terminal.</p>"
)


@dataclass(frozen=True, slots=True)
class Client:
    """An OAuth client as ``login`` needs it: where to authorize, the token endpoint, the scope."""

    authorize: str
    endpoint: TokenEndpoint
    client_id: str
    scope: str


class _Redirects(HTTPServer):
    """The loopback server: it keeps the first redirect whose ``state`` is ours."""

    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.expected_state = state
        self.answer: dict[str, str] | None = None
        self.arrived = threading.Event()


class _Callback(BaseHTTPRequestHandler):
    server: _Redirects

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != CALLBACK_PATH or query.get("state") != self.server.expected_state:
            # Not our redirect (a stray request, a stale tab): ignored, the wait goes on.
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_PAGE)))
        self.end_headers()
        self.wfile.write(_PAGE)
        if self.server.answer is None:
            self.server.answer = query
            self.server.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        # The query holds the code: never written anywhere.
        return


def login(
    client: Client,
    *,
    show: Callable[[str], None],
    open_browser: Callable[[str], object] | None = None,
    timeout: float = 300.0,
) -> TokenSet:
    """Run the flow once; the tokens, or one-sentence errors (BadInput, PermanentUpstreamError)."""
    pkce = Pkce.new()
    state = secrets.token_urlsafe(24)
    server = _Redirects(state)
    port = server.server_address[1]
    redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    thread = threading.Thread(target=server.serve_forever, name="oauth-redirect", daemon=True)
    thread.start()
    try:
        url = authorize_url(
            client.authorize,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=state,
            pkce=pkce,
            scope=client.scope,
        )
        show(url)
        if open_browser is not None:
            open_browser(url)
        if not server.arrived.wait(timeout):
            raise BadInput(f"No sign-in came back to {redirect_uri} within {timeout:g} s.")
    finally:
        server.shutdown()
        server.server_close()
    answer = server.answer or {}
    if "error" in answer:
        raise PermanentUpstreamError(
            f"The authorization server refused the sign-in ({answer['error'][:80]})."
        )
    code = answer.get("code")
    if not code:
        raise PermanentUpstreamError("The authorization server redirected back without a code.")
    log.info("oauth_code_received port=%d", port)
    return client.endpoint.exchange(code, verifier=pkce.verifier, redirect_uri=redirect_uri)
