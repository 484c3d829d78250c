"""OAuth credentials shared by every process: stored encrypted in Redis, refreshed by one at a time.

``CredentialStore`` keeps, per Pleo company (kind ``pleo``) and per ERP connection (kind ``erp``),
the access token, its expiry and the refresh token (``keys.credentials_key``): the two tokens
Fernet-encrypted with ``PLEO_CREDENTIALS_KEY`` (a comma-separated list: the first encrypts, any
decrypts, so the key can be rotated), the expiry and whether a refresh token exists in clear, for
``pleo-export auth status``.

``Credential`` is one of them as a process uses it: the token it holds in memory until it comes
within ``ahead`` seconds of its expiry, then a refresh. A refresh is made under the credential's
fenced lease (``contract/lease.py``): whoever gets the lease first reads the store again and
refreshes only if the stored token is still the stale one, so N processes that see a token
expire make ONE call to the token endpoint and the others read its result; with rotating
refresh tokens, a second refresh with the used token would be refused and lock the integration
out. ``OAuthAuth`` is the httpx auth flow: the current token on every request, and on a 401 one
refresh and one retry. Only a refused refresh (``GrantRefused``) is the caller's failure, as the
error ``refused`` builds (Pleo's ``AuthenticationFailed``, the ERP's own).

No token is ever in a repr, a log line, an error or a metric.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import redis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from contract.errors import BadInput, PleoExportError, TransientUpstreamError
from contract.keys import (
    CREDENTIALS_INDEX_KEY,
    CREDENTIALS_TTL,
    credentials_key,
    credentials_refresh_keys,
)
from contract.lease import Leases
from contract.oauth import GrantRefused, TokenEndpoint, TokenSet
from contract.settings import Settings
from contract.store import redis_call

log = logging.getLogger(__name__)

KINDS = ("pleo", "erp")
# Seconds a refresher may hold the lease without a heartbeat (the heartbeat renews it).
_LEASE_TTL = 10.0
_STORE = "the credential store"
# How often a process waiting for another's refresh reads the store.
_POLL = 0.05


def cipher(keys: str) -> MultiFernet:
    """The Fernet keys of ``PLEO_CREDENTIALS_KEY``; BadInput, one sentence, for a bad one."""
    parts = [part.strip() for part in keys.split(",") if part.strip()]
    try:
        return MultiFernet([Fernet(part.encode()) for part in parts])
    except (ValueError, TypeError):
        raise BadInput(
            "PLEO_CREDENTIALS_KEY must be one or more comma-separated Fernet keys (32 url-safe "
            "base64 bytes each; make one with 'pleo-export auth new-key')."
        ) from None


@dataclass(frozen=True, slots=True)
class StoredInfo:
    """What ``auth status`` shows of a stored credential: nothing secret."""

    kind: str
    name: str
    expires_at: float
    has_refresh: bool
    scope: str
    updated_at: float
    generation: int


class CredentialStore:
    """Credentials in Redis, their tokens encrypted; see the module docstring."""

    def __init__(self, client: redis.Redis, keys: str) -> None:
        self._r = client
        self._cipher = cipher(keys)

    def __repr__(self) -> str:
        return "CredentialStore(keys='***')"

    def load(self, kind: str, name: str) -> TokenSet | None:
        """The stored tokens, or None when nothing is stored."""
        raw = redis_call(
            lambda: self._r.hmget(credentials_key(kind, name), "secret", "expires_at"), _STORE
        )
        secret, expires = raw
        if secret is None or expires is None:
            return None
        try:
            tokens = json.loads(self._cipher.decrypt(secret))
        except InvalidToken:
            raise BadInput(
                f"The stored {kind} credential {name!r} cannot be read with PLEO_CREDENTIALS_KEY "
                "(another key wrote it); run 'pleo-export auth login' again."
            ) from None
        return TokenSet(
            access_token=tokens["access"],
            expires_at=float(expires),
            refresh_token=tokens.get("refresh"),
            scope=tokens.get("scope", ""),
        )

    def save(self, kind: str, name: str, tokens: TokenSet) -> None:
        """Store ``tokens`` (replacing what was there) and list the credential in the index."""
        secret = self._cipher.encrypt(
            json.dumps(
                {
                    "access": tokens.access_token,
                    "refresh": tokens.refresh_token,
                    "scope": tokens.scope,
                }
            ).encode()
        )
        key = credentials_key(kind, name)
        ttl_ms = CREDENTIALS_TTL * 1000

        def write() -> None:
            with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "secret": secret,
                        "expires_at": repr(tokens.expires_at),
                        "has_refresh": int(tokens.refresh_token is not None),
                        "scope": tokens.scope,
                        "updated_at": repr(time.time()),
                    },
                )
                pipe.hincrby(key, "generation", 1)
                pipe.pexpire(key, ttl_ms)
                pipe.sadd(CREDENTIALS_INDEX_KEY, f"{kind}:{name}")
                pipe.pexpire(CREDENTIALS_INDEX_KEY, ttl_ms)
                pipe.execute()

        redis_call(write, _STORE)

    def stored(self) -> list[StoredInfo]:
        """Every stored credential, by kind and name: expiry, refresh token or not; no secret."""
        listed = sorted(
            m.decode() if isinstance(m, bytes) else str(m)
            for m in redis_call(lambda: self._r.smembers(CREDENTIALS_INDEX_KEY), _STORE)
        )
        found = []
        for member in listed:
            kind, _, name = member.partition(":")
            key = credentials_key(kind, name)
            raw: dict[Any, Any] = redis_call(partial(self._r.hgetall, key), _STORE)
            info = {_text(k): _text(v) for k, v in raw.items()}
            if "expires_at" not in info:
                continue
            found.append(
                StoredInfo(
                    kind=kind,
                    name=name,
                    expires_at=float(info["expires_at"]),
                    has_refresh=info.get("has_refresh") == "1",
                    scope=info.get("scope", ""),
                    updated_at=float(info.get("updated_at", 0)),
                    generation=int(info.get("generation", 0)),
                )
            )
        return found


class Credential:
    """One stored credential as this process uses it: cached, refreshed ahead of its expiry."""

    def __init__(
        self,
        store: CredentialStore,
        leases: Leases,
        endpoint: TokenEndpoint,
        *,
        kind: str,
        name: str,
        ahead: float,
        wait: float = 30.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._leases = leases
        self._endpoint = endpoint
        self.kind = kind
        self.name = name
        self._ahead = ahead
        self._wait = wait
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens: TokenSet | None = None
        self._refused = False
        # Refreshes this process made (the token endpoint called), for tests and logs.
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"Credential(kind={self.kind!r}, name={self.name!r})"

    def current(self) -> TokenSet:
        """A token good for at least ``ahead`` more seconds (refreshed first if need be)."""
        with self._lock:
            tokens = self._tokens
            if tokens is None or tokens.expiring(self._clock(), self._ahead):
                tokens = self._store.load(self.kind, self.name)
                if tokens is None:
                    raise GrantRefused(
                        f"No {self.kind} credential {self.name!r} is stored; run "
                        f"'pleo-export auth login{' --erp' if self.kind == 'erp' else ''}'."
                    )
                if tokens.expiring(self._clock(), self._ahead):
                    tokens = self._refresh_ahead(tokens)
                self._tokens = tokens
            return tokens

    def _refresh_ahead(self, tokens: TokenSet) -> TokenSet:
        """A refresh ahead of expiry. Refused, it raises once; the token still alive is then sent
        until it expires, so the job's end (its final event, say) can still reach the server."""
        if self._refused and tokens.expires_at > self._clock():
            return tokens
        try:
            fresh = self._refresh(tokens.access_token)
        except GrantRefused:
            self._refused = True
            raise
        self._refused = False
        return fresh

    def refreshed(self, stale: str) -> TokenSet:
        """A token other than ``stale`` (the server refused it), refreshed unless already."""
        with self._lock:
            self._tokens = self._refresh(stale)
            return self._tokens

    def _refresh(self, stale: str) -> TokenSet:
        """A token other than ``stale``: the one another process just stored, or a new one.

        Only the holder of the credential's lease calls the token endpoint; the others read the
        store every ``_POLL`` s until its new token is there (so N processes make one call, and a
        rotating refresh token is never presented twice).
        """
        lease_key, fence_key = credentials_refresh_keys(self.kind, self.name)
        deadline = self._clock() + self._wait
        while True:
            stored = self._stored()
            if self._usable(stored, stale):
                log.info("credential_read_refreshed kind=%s name=%s", self.kind, self.name)
                return stored
            lease = self._leases.try_acquire(
                lease_key, fence_key, who=f"refresh {self.kind}:{self.name}"
            )
            if lease is not None:
                with self._leases.kept(lease):
                    # Re-read under the lease: a refresher may have finished since the last look.
                    stored = self._stored()
                    return stored if self._usable(stored, stale) else self._grant(stored)
            if self._clock() >= deadline:
                raise TransientUpstreamError(
                    f"The {self.kind} credential {self.name!r} is being refreshed by another "
                    f"process that has not finished in {self._wait:g} s."
                )
            self._sleep(_POLL)

    def _usable(self, stored: TokenSet, stale: str) -> bool:
        return stored.access_token != stale and not stored.expiring(self._clock(), self._ahead)

    def _stored(self) -> TokenSet:
        stored = self._store.load(self.kind, self.name)
        if stored is None:
            raise GrantRefused(
                f"The {self.kind} credential {self.name!r} is gone from the store; run "
                "'pleo-export auth login' again."
            )
        return stored

    def _grant(self, stored: TokenSet) -> TokenSet:
        """The refresh grant itself (under the lease), its answer stored for every process."""
        if stored.refresh_token is None:
            raise GrantRefused(
                f"The {self.kind} credential {self.name!r} has expired and has no refresh "
                "token; run 'pleo-export auth login' again."
            )
        tokens = self._endpoint.refresh(stored.refresh_token)
        self._store.save(self.kind, self.name, tokens)
        self.refreshes += 1
        log.info(
            "credential_refreshed kind=%s name=%s expires_in=%.0f",
            self.kind,
            self.name,
            tokens.expires_at - self._clock(),
        )
        return tokens


class OAuthAuth(httpx.Auth):
    """httpx auth flow: ``Bearer`` the current token; on a 401, one refresh and one retry.

    ``refused(error)`` turns a refused refresh into the caller's own error (the job's end).
    """

    def __init__(
        self,
        credential: Credential,
        *,
        refused: Callable[[GrantRefused], PleoExportError],
        header: str = "Authorization",
    ) -> None:
        self._credential = credential
        self._refused = refused
        self._header = header

    def __repr__(self) -> str:
        return f"OAuthAuth({self._credential!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._mapped():
            tokens = self._credential.current()
        request.headers[self._header] = f"Bearer {tokens.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        log.info(
            "credential_refused kind=%s name=%s; refreshing once",
            self._credential.kind,
            self._credential.name,
        )
        with self._mapped():
            tokens = self._credential.refreshed(tokens.access_token)
        request.headers[self._header] = f"Bearer {tokens.access_token}"
        yield request

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """A block in which a refused grant becomes the caller's error (its cause kept)."""
        try:
            yield
        except GrantRefused as refused:
            raise self._refused(refused) from refused


def with_login_hint(message: str, command: str) -> str:
    """``message``, ending with the command that signs in again unless it names it already."""
    if "pleo-export auth login" in message:
        return message
    return f"{message} Run '{command}' to sign in again."


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def credential_for(
    settings: Settings,
    kind: str,
    client: redis.Redis,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Credential:
    """The stored credential ``kind`` (``pleo``: PLEO_OAUTH_COMPANY, ``erp``: ERP_CONNECTION)."""
    if settings.credentials_key is None:
        raise BadInput("PLEO_CREDENTIALS_KEY must be set to use stored OAuth credentials.")
    token_url: str | None
    if kind == "pleo":
        client_id, secret = settings.pleo_oauth_client_id, settings.pleo_oauth_client_secret
        token_url, name = settings.pleo_oauth_token_url, settings.pleo_oauth_company
    else:
        client_id, secret = settings.erp_oauth_client_id, settings.erp_oauth_client_secret
        token_url, name = settings.erp_oauth_token_url, settings.erp_connection
    if client_id is None or token_url is None:
        side = kind.upper()
        raise BadInput(f"{side}_OAUTH_CLIENT_ID and {side}_OAUTH_TOKEN_URL must be set.")
    endpoint = TokenEndpoint(
        token_url,
        client_id=client_id,
        client_secret=secret,
        http=None if transport is None else httpx.Client(transport=transport),
        timeout=settings.http_timeout,
    )
    return Credential(
        CredentialStore(client, settings.credentials_key),
        Leases(client, ttl=_LEASE_TTL),
        endpoint,
        kind=kind,
        name=name,
        ahead=settings.token_refresh_ahead,
        wait=refresh_wait(settings),
    )


def refresh_wait(settings: Settings) -> float:
    """The longest a request waits for its credential's refresh (its own or another's), seconds."""
    return max(_LEASE_TTL, 3 * settings.http_timeout)
