"""OAuth credentials against the simulator over HTTP and the real Redis: store, refresh, login.

The store keeps tokens encrypted; a token close to its expiry is refreshed once however many
holders see it expire at once (the rotating refresh token is never presented twice); a 401 is
refreshed and retried once; a refused refresh is ``AuthenticationFailed``; ``auth login`` runs the
authorization-code flow with PKCE against the simulator, driven here with httpx instead of a
browser.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from consumers.erp import ERPAuthenticationFailed
from consumers.erp_http import from_settings
from contract.credentials import Credential, CredentialStore, credential_for
from contract.errors import AuthenticationFailed, BadInput
from contract.keys import credentials_key
from contract.oauth import Pkce, TokenEndpoint
from contract.settings import Settings
from devtools.oauth_server import OAuthServer
from devtools.simulator import JobSpec, SimState
from pleo.client import PleoClient, make_http_client
from tests.conftest import ROOT, env_for, with_settings
from tests.support.erp_sim import entries
from tests.support.oauth import CLIENT_ID, CLIENT_SECRET, KEY, oauth_env, pleo_oauth, seed

pytestmark = pytest.mark.integration


def counts(state: SimState) -> dict[str, int]:
    assert state.oauth is not None
    return dict(state.oauth.counts)


def test_tokens_are_encrypted_at_rest_and_never_shown(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, cli_in_process: Any
) -> None:
    """Neither token is readable in Redis, in a repr, in the settings' repr or in auth status."""
    oauth = pleo_oauth(settings, sim_state, lifetime=600)
    assert sim_state.oauth is not None
    refresh = seed(rdb, sim_state.oauth)
    store = CredentialStore(rdb, KEY)
    tokens = store.load("pleo", "default")
    assert tokens is not None
    assert tokens.refresh_token == refresh
    raw = b"".join(k + v for k, v in rdb.hgetall(credentials_key("pleo", "default")).items())
    secrets = (tokens.access_token, refresh, KEY, CLIENT_SECRET)
    credential = credential_for(oauth, "pleo", rdb)
    shown = " ".join(map(repr, (tokens, store, credential, oauth, sim_state.oauth)))
    result = cli_in_process("auth", "status", "--json", **oauth_env(oauth))
    assert result.exit_code == 0, result.output
    for secret in secrets:
        assert secret.encode() not in raw
        assert secret not in shown
        assert secret not in result.output
    view = json.loads(result.stdout)["credentials"]
    assert [(v["kind"], v["name"], v["has_refresh_token"]) for v in view] == [
        ("pleo", "default", True)
    ]
    assert 590 < view[0]["expires_in"] <= 600


def test_expiring_token_is_refreshed_ahead_and_a_401_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Every request goes through: a token near expiry is refreshed first; one revoked early
    (a 401) is refreshed once and the request retried."""
    oauth = pleo_oauth(settings, sim_state, lifetime=1.0, ahead=0.4)
    assert sim_state.oauth is not None
    seed(rdb, sim_state.oauth)
    job_id = sim_state.add_job(JobSpec(items=3))
    with make_http_client(oauth) as http:
        client = PleoClient(http, oauth)
        started = time.monotonic()
        # Tokens good for 0.6 s each before their refresh: requests until three were refreshed
        # (a count, not a span: a loaded machine may make few requests in a given span).
        while counts(sim_state).get("refresh_token", 0) < 3:
            assert time.monotonic() - started < 30, "fewer than three refreshes in 30 s"
            assert client.get_job(job_id).status == "pending"
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        # Never late (no request met an expired token) and never early (one per 0.6 s at most).
        assert counts(sim_state).get("expired_or_unknown_token", 0) == 0
        assert counts(sim_state)["refresh_token"] <= elapsed / 0.6 + 1
        before = counts(sim_state)["refresh_token"]
        sim_state.oauth.access_lifetime = 600
        client.get_job(job_id)  # a long-lived token now
        before = counts(sim_state)["refresh_token"]
        with sim_state.oauth._lock:  # the server forgets its access tokens: the next is a 401
            sim_state.oauth._access.clear()
        assert client.get_job(job_id).status == "pending"
    assert counts(sim_state)["refresh_token"] == before + 1
    assert counts(sim_state)["expired_or_unknown_token"] == 1
    assert [c.status for c in sim_state.calls][-2:] == [401, 200]


def test_concurrent_refresh_of_a_rotating_token_calls_the_server_once(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Eight holders (as eight processes: each its own cache) see the token expire at once,
    three times over: one refresh each time, the rotated token never presented again."""
    oauth = pleo_oauth(settings, sim_state, lifetime=0.8, ahead=0.3)
    assert sim_state.oauth is not None
    seed(rdb, sim_state.oauth)
    holders: list[Credential] = [credential_for(oauth, "pleo", rdb) for _ in range(8)]
    for holder in holders:
        holder.current()
    for generation in range(1, 4):
        time.sleep(0.55)  # every holder's token is now within `ahead` of its expiry
        gate = threading.Barrier(len(holders))
        got: list[str] = []

        def use(holder: Credential, gate: threading.Barrier, got: list[str]) -> None:
            gate.wait()
            got.append(holder.current().access_token)

        threads = [threading.Thread(target=use, args=(h, gate, got)) for h in holders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(got) == len(holders)
        assert len(set(got)) == 1, f"generation {generation}: {counts(sim_state)}"
        assert counts(sim_state)["refresh_token"] == generation
    assert sum(h.refreshes for h in holders) == 3
    assert counts(sim_state).get("reused_refresh", 0) == 0
    assert counts(sim_state).get("refused_refresh", 0) == 0


def test_a_refused_refresh_is_authentication_failed(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """A revoked grant: the 401 is refreshed once, the refusal is AuthenticationFailed (exit 3)
    naming the login command, with no token in it."""
    oauth = pleo_oauth(settings, sim_state, lifetime=600)
    assert sim_state.oauth is not None
    refresh = seed(rdb, sim_state.oauth)
    job_id = sim_state.add_job(JobSpec(items=3))
    sim_state.oauth.revoke()
    with make_http_client(oauth) as http, pytest.raises(AuthenticationFailed) as failed:
        PleoClient(http, oauth).get_job(job_id)
    assert failed.value.exit_code == 3
    assert "invalid_grant" in failed.value.message
    assert "pleo-export auth login" in failed.value.message
    assert refresh not in failed.value.message
    assert counts(sim_state)["refused_refresh"] == 1
    assert [c.status for c in sim_state.calls] == [401]


def test_static_token_wins_over_oauth_settings(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """PLEO_API_TOKEN set: it is sent as before, and nothing is asked of the store or server."""
    oauth = with_settings(pleo_oauth(settings, sim_state, lifetime=600), api_token="tok-static")
    sim_state.token = "tok-static"
    sim_state.oauth = None  # the static check only
    job_id = sim_state.add_job(JobSpec(items=1))
    assert not oauth.pleo_uses_oauth
    with make_http_client(oauth) as http:
        assert PleoClient(http, oauth).get_job(job_id).status == "pending"


def test_oauth_settings_refused_in_one_sentence() -> None:
    """A client id without a key, or a key that is not one: BadInput, one sentence, no echo."""
    with pytest.raises(BadInput, match=r"PLEO_CREDENTIALS_KEY") as no_key:
        Settings.from_env({"PLEO_OAUTH_CLIENT_ID": "c"})
    assert no_key.value.message.count(". ") == 0
    with pytest.raises(BadInput, match=r"Fernet keys") as bad:
        Settings.from_env({"PLEO_CREDENTIALS_KEY": "not-a-key-xyz"})
    assert "not-a-key-xyz" not in bad.value.message
    with pytest.raises(BadInput, match=r"ERP_OAUTH_TOKEN_URL"):
        Settings.from_env({"PLEO_CREDENTIALS_KEY": KEY, "ERP_OAUTH_CLIENT_ID": "c"})


def test_token_endpoint_checks_pkce_and_client(sim: Any, sim_state: SimState) -> None:
    """The simulator's token endpoint refuses a wrong PKCE verifier and a wrong client secret."""
    sim_state.oauth = OAuthServer(CLIENT_ID, CLIENT_SECRET)
    pkce = Pkce.new()
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": "http://127.0.0.1:9/callback",
        "state": "s1",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(base_url=sim.url) as http:
        plain = http.get("/oauth/authorize", params={**params, "code_challenge_method": "plain"})
        assert plain.status_code == 400
        location = httpx.URL(http.get("/oauth/authorize", params=params).headers["location"])
    code = location.params["code"]
    assert location.params["state"] == "s1"
    wrong_client = TokenEndpoint(f"{sim.url}/oauth/token", client_id=CLIENT_ID, client_secret="x")
    with pytest.raises(Exception, match="invalid_client"):
        wrong_client.exchange(code, verifier=pkce.verifier, redirect_uri=params["redirect_uri"])
    endpoint = TokenEndpoint(
        f"{sim.url}/oauth/token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    with pytest.raises(Exception, match="invalid_grant"):
        endpoint.exchange(code, verifier=Pkce.new().verifier, redirect_uri=params["redirect_uri"])
    # The code was spent by the failed try: codes are good once.
    with pytest.raises(Exception, match="invalid_grant"):
        endpoint.exchange(code, verifier=pkce.verifier, redirect_uri=params["redirect_uri"])


def test_login_end_to_end_then_status(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, cli_in_process: Any
) -> None:
    """`auth login --no-browser` prints the authorize URL; following it (httpx, no browser) to
    the loopback redirect stores a token set that then serves Pleo requests."""
    oauth = pleo_oauth(settings, sim_state, lifetime=900)
    env = env_for(oauth, **oauth_env(oauth))
    login = subprocess.Popen(
        [sys.executable, "-m", "producer", "auth", "login", "--no-browser", "--timeout", "20"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stdout is not None
        url = httpx.URL(login.stdout.readline().strip())
        assert url.params["code_challenge_method"] == "S256"
        assert url.params["redirect_uri"].startswith("http://127.0.0.1:")
        # The user's consent: the authorize endpoint redirects to the loopback with the code.
        consent = httpx.get(str(url))
        assert consent.status_code == 302
        landing = httpx.get(consent.headers["location"])
        assert landing.status_code == 200
        _, err = login.communicate(timeout=20)
    finally:
        login.kill()
    assert login.returncode == 0, err
    assert "Stored the pleo credential 'default'" in err
    assert sim_state.oauth is not None
    assert not [t for t in sim_state.oauth.issued() if t in err or t in str(url)]
    assert counts(sim_state)["authorization_code"] == 1
    job_id = sim_state.add_job(JobSpec(items=1))
    with make_http_client(oauth) as http:
        assert PleoClient(http, oauth).get_job(job_id).status == "pending"
    status = cli_in_process("auth", "status", **oauth_env(oauth))
    assert status.exit_code == 0
    assert "pleo default: access token expires in" in status.stdout
    assert ", refresh token," in status.stdout


def test_login_refused_or_misconfigured_exits_with_a_sentence(
    settings: Settings, sim_state: SimState, rdb: redis.Redis, cli_in_process: Any
) -> None:
    """No client id: exit 2 naming the setting; a sign-in that never comes back: exit 2."""
    result = cli_in_process("auth", "login", "--no-browser", PLEO_CREDENTIALS_KEY=KEY)
    assert result.exit_code == 2
    assert "PLEO_OAUTH_CLIENT_ID" in result.stderr
    oauth = pleo_oauth(settings, sim_state, lifetime=60)
    waited = cli_in_process("auth", "login", "--no-browser", "--timeout", "1", **oauth_env(oauth))
    assert waited.exit_code == 2
    assert "No sign-in came back" in waited.stderr


def test_erp_adapter_refreshes_its_connection_token(
    settings: Settings, rdb: redis.Redis, erp_sim: Any
) -> None:
    """The HTTP adapter with ERP_OAUTH_*: posts across several token lifetimes all book, with
    refreshes ahead of expiry; a revoked grant is ERPAuthenticationFailed, not 'unavailable'."""
    erp = erp_sim()
    erp.state.oauth = OAuthServer(CLIENT_ID, CLIENT_SECRET, access_lifetime=0.6)
    erp_settings = with_settings(
        settings,
        erp_http_url=erp.url,
        credentials_key=KEY,
        erp_oauth_client_id=CLIENT_ID,
        erp_oauth_client_secret=CLIENT_SECRET,
        erp_oauth_token_url=f"{erp.url}/oauth/token",
        token_refresh_ahead=0.2,
    )
    assert erp_settings.erp_uses_oauth
    seed(rdb, erp.state.oauth, kind="erp", name=erp_settings.erp_connection)
    journal = from_settings(erp_settings)
    try:
        for entry in entries(12):
            journal.post(entry)
            time.sleep(0.1)
        assert len(erp.state.bookings()) == 12
        assert 2 <= erp.state.oauth.counts["refresh_token"] <= 4
        assert erp.state.oauth.counts.get("expired_or_unknown_token", 0) == 0
        erp.state.oauth.revoke()
        with pytest.raises(ERPAuthenticationFailed, match="auth login --erp"):
            journal.post(entries(13)[-1])
    finally:
        journal.close()


_RACER = """
import hashlib, sys, time
import redis
from contract.credentials import credential_for
from contract.settings import Settings

settings = Settings.from_env()
credential = credential_for(settings, "pleo", redis.Redis.from_url(settings.redis_url))
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(hashlib.sha256(credential.current().access_token.encode()).hexdigest(), credential.refreshes)
"""


def test_processes_refreshing_at_once_make_one_refresh(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """Four processes see the stored token expiring at the same instant: one refresh, all four
    use its token, the rotated refresh token is never presented again (no lockout)."""
    oauth = pleo_oauth(settings, sim_state, lifetime=600, ahead=1.0)
    assert sim_state.oauth is not None
    sim_state.oauth.access_lifetime = 0.5  # the stored token is already within `ahead`
    seed(rdb, sim_state.oauth)
    sim_state.oauth.access_lifetime = 600
    env = env_for(oauth, **oauth_env(oauth))
    start = time.time() + 4.0  # every process imported and waiting by then
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, repr(start)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    answers = [racer.communicate(timeout=30) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0, 0], answers
    tokens = {out.split()[0] for out, _ in answers}
    refreshed_here = sum(int(out.split()[1]) for out, _ in answers)
    assert len(tokens) == 1
    assert refreshed_here == 1
    assert counts(sim_state)["refresh_token"] == 1
    assert counts(sim_state).get("reused_refresh", 0) == 0
