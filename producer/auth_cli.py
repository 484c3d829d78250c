"""``pleo-export auth``: sign in with OAuth (``login``), see what is stored (``status``), a key.

Registered by ``producer/cli.py``, which hands in its error guard and settings loader. Tokens go
to the credential store (``contract/credentials.py``); no command prints a token or a secret.
"""

from __future__ import annotations

import json
import time
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from cryptography.fernet import Fernet

from contract.credentials import CredentialStore, StoredInfo
from contract.errors import BadInput
from contract.oauth import TokenEndpoint
from contract.settings import Settings
from contract.store import ledger_client
from producer.auth_login import Client, login


def auth_group(
    guard: Callable[[Callable[..., Any]], Callable[..., Any]],
    load_settings: Callable[[], Settings],
) -> click.Group:
    """The ``auth`` commands, errors turned into sentences by ``guard``."""

    @click.group("auth")
    def auth() -> None:
        """OAuth credentials for Pleo and the ERP, kept encrypted in Redis."""

    @auth.command("login")
    @click.option("--erp", is_flag=True, help="Sign in to the ERP (ERP_OAUTH_*), not Pleo.")
    @click.option(
        "--company",
        default=None,
        help="Store Pleo's tokens as this company's (PLEO_OAUTH_COMPANY).",
    )
    @click.option("--no-browser", is_flag=True, help="Only print the URL to open.")
    @click.option(
        "--timeout",
        default=300.0,
        show_default=True,
        type=click.FloatRange(1),
        help="Seconds to wait for the sign-in to come back.",
    )
    @guard
    def login_command(erp: bool, company: str | None, no_browser: bool, timeout: float) -> None:
        """Sign in (authorization code with PKCE S256, loopback redirect) and store the tokens."""
        settings = load_settings()
        kind = "erp" if erp else "pleo"
        client, name = _client(settings, kind, company)
        store = _store(settings)

        def show(url: str) -> None:
            click.echo("Open this URL to sign in:", err=True)
            click.echo(url)

        try:
            tokens = login(
                client,
                show=show,
                open_browser=None if no_browser else webbrowser.open,
                timeout=timeout,
            )
        finally:
            client.endpoint.close()
        store.save(kind, name, tokens)
        left = tokens.expires_at - time.time()
        refresh = "with" if tokens.refresh_token else "without"
        click.echo(
            f"Stored the {kind} credential {name!r}: its access token expires in {left:.0f} s; "
            f"{refresh} a refresh token.",
            err=True,
        )

    @auth.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
    @guard
    def status_command(as_json: bool) -> None:
        """What is stored: each credential's expiry and whether it has a refresh token."""
        stored = _store(load_settings()).stored()
        now = time.time()
        if as_json:
            click.echo(json.dumps({"credentials": [_view(info, now) for info in stored]}))
            return
        if not stored:
            click.echo("No credentials stored; run 'pleo-export auth login'.")
            return
        for info in stored:
            view = _view(info, now)
            state = "expired" if view["expired"] else f"expires in {view['expires_in']:.0f} s"
            refresh = "refresh token" if info.has_refresh else "no refresh token"
            click.echo(
                f"{info.kind} {info.name}: access token {state} ({view['expires_at']}), "
                f"{refresh}, stored {view['updated_at']} (generation {info.generation})"
            )

    @auth.command("new-key")
    def new_key() -> None:
        """Print a new key for PLEO_CREDENTIALS_KEY (Fernet: 32 url-safe base64 bytes)."""
        click.echo(Fernet.generate_key().decode())

    return auth


def _client(settings: Settings, kind: str, company: str | None) -> tuple[Client, str]:
    """The OAuth client of ``kind`` from Settings, and the name its tokens are stored under."""
    authorize: str | None
    token: str | None
    if kind == "pleo":
        client_id, secret = settings.pleo_oauth_client_id, settings.pleo_oauth_client_secret
        authorize, token = settings.pleo_oauth_authorize_url, settings.pleo_oauth_token_url
        scope, name = settings.pleo_oauth_scope, company or settings.pleo_oauth_company
    else:
        client_id, secret = settings.erp_oauth_client_id, settings.erp_oauth_client_secret
        authorize, token = settings.erp_oauth_authorize_url, settings.erp_oauth_token_url
        scope, name = settings.erp_oauth_scope, settings.erp_connection
    side = kind.upper()
    if client_id is None:
        raise BadInput(f"{side}_OAUTH_CLIENT_ID must name the OAuth client to sign in with.")
    if authorize is None or token is None:
        raise BadInput(f"{side}_OAUTH_AUTHORIZE_URL and {side}_OAUTH_TOKEN_URL must be set.")
    endpoint = TokenEndpoint(
        token, client_id=client_id, client_secret=secret, timeout=settings.http_timeout
    )
    return Client(authorize, endpoint, client_id, scope), name


def _store(settings: Settings) -> CredentialStore:
    if settings.credentials_key is None:
        raise BadInput(
            "PLEO_CREDENTIALS_KEY must be set (make one with 'pleo-export auth new-key')."
        )
    return CredentialStore(ledger_client(settings), settings.credentials_key)


def _view(info: StoredInfo, now: float) -> dict[str, Any]:
    """A stored credential as ``status`` shows it; no token."""
    return {
        "kind": info.kind,
        "name": info.name,
        "expires_at": _iso(info.expires_at),
        "expires_in": round(info.expires_at - now, 1),
        "expired": info.expires_at <= now,
        "has_refresh_token": info.has_refresh,
        "scope": info.scope,
        "updated_at": _iso(info.updated_at),
        "generation": info.generation,
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
