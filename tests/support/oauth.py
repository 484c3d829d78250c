"""OAuth in tests: the simulators' authorization server turned on, settings and env that use it.

``pleo_oauth`` gives the Pleo simulator an ``OAuthServer`` and returns settings whose processes
call Pleo with stored OAuth tokens (no static token); ``seed`` stores a token set the server
issued, as ``pleo-export auth login`` would; ``oauth_env`` is the environment a subprocess needs
for the same (``env_for`` leaves OAuth out).
"""

from __future__ import annotations

import time

import redis
from cryptography.fernet import Fernet

from contract.credentials import CredentialStore
from contract.oauth import token_set
from contract.settings import Settings
from devtools.oauth_server import OAuthServer
from devtools.simulator import SimState
from tests.conftest import with_settings

CLIENT_ID = "export-producer-test"
CLIENT_SECRET = "client-secret-b2f1c9"
KEY = Fernet.generate_key().decode()


def pleo_oauth(
    settings: Settings, state: SimState, *, lifetime: float, ahead: float = 1.0
) -> Settings:
    """Turn on the simulator's OAuth (access tokens live ``lifetime`` s) and use it."""
    state.oauth = OAuthServer(CLIENT_ID, CLIENT_SECRET, access_lifetime=lifetime)
    return with_settings(
        settings,
        api_token=None,
        credentials_key=KEY,
        pleo_oauth_client_id=CLIENT_ID,
        pleo_oauth_client_secret=CLIENT_SECRET,
        pleo_oauth_authorize_url=f"{settings.api_url}/oauth/authorize",
        pleo_oauth_token_url=f"{settings.api_url}/oauth/token",
        token_refresh_ahead=ahead,
    )


def seed(
    client: redis.Redis, server: OAuthServer, kind: str = "pleo", name: str = "default"
) -> str:
    """Store a token set ``server`` issued (as a login would); returns its refresh token."""
    tokens = token_set(server.issue(), now=time.time())
    CredentialStore(client, KEY).save(kind, name, tokens)
    assert tokens.refresh_token is not None
    return tokens.refresh_token


def oauth_env(settings: Settings) -> dict[str, str]:
    """The OAuth variables of ``settings`` for a subprocess (with ``env_for``)."""
    env = {
        "PLEO_CREDENTIALS_KEY": settings.credentials_key or "",
        "PLEO_TOKEN_REFRESH_AHEAD": str(settings.token_refresh_ahead),
    }
    if settings.pleo_oauth_client_id:
        env.update(
            PLEO_OAUTH_CLIENT_ID=settings.pleo_oauth_client_id,
            PLEO_OAUTH_CLIENT_SECRET=settings.pleo_oauth_client_secret or "",
            PLEO_OAUTH_AUTHORIZE_URL=settings.pleo_oauth_authorize_url,
            PLEO_OAUTH_TOKEN_URL=settings.pleo_oauth_token_url,
        )
    if settings.erp_oauth_client_id:
        env.update(
            ERP_OAUTH_CLIENT_ID=settings.erp_oauth_client_id,
            ERP_OAUTH_CLIENT_SECRET=settings.erp_oauth_client_secret or "",
            ERP_OAUTH_AUTHORIZE_URL=settings.erp_oauth_authorize_url or "",
            ERP_OAUTH_TOKEN_URL=settings.erp_oauth_token_url or "",
        )
    return env
