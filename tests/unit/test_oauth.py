"""OAuth's pure parts and the token endpoint's answers, over httpx.MockTransport (no services)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from contract.errors import TransientUpstreamError
from contract.oauth import GrantRefused, Pkce, TokenEndpoint, authorize_url, s256, token_set

URL = "https://auth.example.test/oauth/token"


def endpoint(handler: Callable[[httpx.Request], httpx.Response]) -> TokenEndpoint:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return TokenEndpoint(
        URL, client_id="cid", client_secret="csecret", http=http, clock=lambda: 1000.0
    )


def test_s256_is_rfc_7636s_example() -> None:
    """The challenge of RFC 7636 appendix B's verifier is the one the RFC gives."""
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
    pair = Pkce.new()
    assert 43 <= len(pair.verifier) <= 128
    assert pair.challenge == s256(pair.verifier)
    assert pair.verifier not in repr(pair)


def test_authorize_url_asks_for_code_with_s256() -> None:
    """The URL carries the code flow, the client, the loopback redirect, state and challenge."""
    pair = Pkce.new()
    url = httpx.URL(
        authorize_url(
            "https://auth.example.test/oauth/authorize",
            client_id="cid",
            redirect_uri="http://127.0.0.1:5000/callback",
            state="st",
            pkce=pair,
            scope="export-jobs:read",
        )
    )
    assert dict(url.params) == {
        "response_type": "code",
        "client_id": "cid",
        "redirect_uri": "http://127.0.0.1:5000/callback",
        "state": "st",
        "code_challenge": pair.challenge,
        "code_challenge_method": "S256",
        "scope": "export-jobs:read",
    }


def test_token_answers_read_and_refused() -> None:
    """expires_in counts from now; a refresh without a new refresh token keeps the old one; an
    answer without an access token is transient; the repr shows no token."""
    tokens = token_set({"access_token": "at", "expires_in": 30}, now=100.0, previous_refresh="rt")
    assert (tokens.expires_at, tokens.refresh_token) == (130.0, "rt")
    assert "at" not in repr(tokens).replace("expires_at", "")
    assert tokens.expiring(now=110.0, ahead=20.0)
    assert not tokens.expiring(now=105.0, ahead=20.0)
    for bad in ({}, {"access_token": ""}, {"access_token": "a", "expires_in": 0}, []):
        with pytest.raises(TransientUpstreamError):
            token_set(bad, now=0.0)


def test_refresh_grant_is_sent_with_basic_client_auth() -> None:
    """The refresh grant is a form post with Basic base64(client_id:client_secret)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"access_token": "a2", "expires_in": 60, "refresh_token": "r2"}
        )

    tokens = endpoint(handler).refresh("r1")
    assert (tokens.access_token, tokens.refresh_token, tokens.expires_at) == ("a2", "r2", 1060.0)
    request = seen[0]
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["r1"],
    }


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (httpx.Response(400, json={"error": "invalid_grant"}), GrantRefused),
        (httpx.Response(401, json={"error": "invalid_client"}), GrantRefused),
        (httpx.Response(403), GrantRefused),
        (httpx.Response(503), TransientUpstreamError),
        (httpx.Response(200, content=b"<html>"), TransientUpstreamError),
    ],
)
def test_refusals_are_permanent_and_outages_transient(
    answer: httpx.Response, kind: type[Exception]
) -> None:
    """invalid_grant/invalid_client/4xx: GrantRefused (log in again); 5xx, bad JSON: retry."""
    with pytest.raises(kind) as raised:
        endpoint(lambda _: answer).refresh("r-secret-1")
    assert "r-secret-1" not in str(raised.value)
    assert not isinstance(raised.value, GrantRefused) or kind is GrantRefused


def test_unreachable_token_endpoint_is_transient() -> None:
    """A refused connection is TransientUpstreamError, retried by the request's retry layer."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransientUpstreamError, match="could not be reached"):
        endpoint(handler).refresh("r1")
