"""Standard Webhooks verification: what passes, what is refused and why, with a fixed clock."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.errors import BadInput
from producer.signature import TOLERANCE_SECONDS, SignatureInvalid, decode_secret, sign, verify

# The secret from Pleo's get-subscription-secret example.
SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OTHER_SECRET = "whsec_" + base64.b64encode(b"another key of the same size!!").decode()
NOW = 1_760_000_000
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
BODY = json.dumps(
    {
        "data": {"id": "b4c4d068-6a3b-4a8e-9f3c-0e6f1d2c3b4a", "status": "pending"},
        "eventId": "a257a31e-e8a6-4c36-a98d-451250e5b5c4",
        "eventType": "v1.export-job.created",
    }
).encode()


def headers(
    body: bytes = BODY, *, timestamp: int = NOW, secret: str = SECRET, msg_id: str = MSG_ID
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, secret),
    }


def reason(hdrs: dict[str, str], body: bytes = BODY, secret: str = SECRET) -> str:
    with pytest.raises(SignatureInvalid) as caught:
        verify(hdrs, body, secret, now=NOW)
    return caught.value.reason


def test_valid_signature_is_accepted() -> None:
    """A delivery signed with the subscription's secret, sent now, verifies."""
    verify(headers(), BODY, SECRET, now=NOW)


def test_matches_the_standard_webhooks_reference_vector() -> None:
    """sign() reproduces the signature the scheme's reference library computes for these inputs."""
    # The id, timestamp and signature of Pleo's documented example (DIGEST section 5); the same
    # value as standardwebhooks 1.1.0's Webhook.sign() gives for this key and body.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, secret) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_header_names_are_case_insensitive() -> None:
    """Headers spelt in any case (as proxies may rewrite them) still verify."""
    verify({k.upper(): v for k, v in headers().items()}, BODY, SECRET, now=NOW)


def test_one_valid_among_several_signatures_is_enough() -> None:
    """A space-separated list (secret rotation) passes when any v1 entry matches."""
    good = headers()
    wrong = sign(MSG_ID, NOW, BODY, OTHER_SECRET)
    good["webhook-signature"] = f"v2,abc {wrong} v1,not-base64!! {good['webhook-signature']}"
    verify(good, BODY, SECRET, now=NOW)


def test_tampered_body_is_refused() -> None:
    """Changing the body after signing breaks the signature."""
    assert reason(headers(), BODY.replace(b"pending", b"started")) == "no signature matches"


def test_tampered_id_is_refused() -> None:
    """The webhook id is signed too: replaying the body under another id fails."""
    hdrs = headers()
    hdrs["webhook-id"] = "msg_other"
    assert reason(hdrs) == "no signature matches"


def test_wrong_secret_is_refused() -> None:
    """A signature made with another secret does not verify."""
    assert reason(headers(secret=OTHER_SECRET)) == "no signature matches"


def test_tolerance_edges() -> None:
    """Exactly five minutes old or ahead passes; one second more either way is refused."""
    verify(headers(timestamp=NOW - TOLERANCE_SECONDS), BODY, SECRET, now=NOW)
    verify(headers(timestamp=NOW + TOLERANCE_SECONDS), BODY, SECRET, now=NOW)
    assert reason(headers(timestamp=NOW - TOLERANCE_SECONDS - 1)) == "webhook-timestamp is too old"
    assert reason(headers(timestamp=NOW + TOLERANCE_SECONDS + 1)) == (
        "webhook-timestamp is in the future"
    )


def test_timestamp_must_be_whole_seconds() -> None:
    """A timestamp that is not an integer is refused before any HMAC is computed."""
    hdrs = headers()
    hdrs["webhook-timestamp"] = f"{NOW}.5"
    assert reason(hdrs) == "webhook-timestamp is not a whole number of seconds"


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(name: str) -> None:
    """Each of the three headers is required, and an empty one counts as missing."""
    hdrs = headers()
    del hdrs[name]
    assert reason(hdrs) == f"missing header {name}"
    assert reason({**headers(), name: ""}) == f"missing header {name}"


def test_no_headers_names_all_three() -> None:
    """With no headers at all, the reason lists every missing one."""
    assert reason({}) == "missing header webhook-id, webhook-timestamp, webhook-signature"


@pytest.mark.parametrize(
    "secret",
    ["C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "whsec_", "whsec_not base64!", "whsec_abc", "Whsec_QUJD"],
)
def test_malformed_secret_is_refused(secret: str) -> None:
    """A secret that is not whsec_ followed by non-empty base64 is refused, and never echoed."""
    with pytest.raises(SignatureInvalid) as caught:
        verify(headers(), BODY, secret, now=NOW)
    assert secret not in str(caught.value)
    with pytest.raises(SignatureInvalid):
        decode_secret(secret)


def test_signature_invalid_is_bad_input_without_secrets() -> None:
    """SignatureInvalid sits under BadInput and its message carries neither secret nor signature."""
    hdrs = headers(secret=OTHER_SECRET)
    with pytest.raises(BadInput) as caught:
        verify(hdrs, BODY, SECRET, now=NOW)
    text = str(caught.value)
    assert SECRET[6:] not in text
    assert hdrs["webhook-signature"][3:] not in text


@given(
    body=st.binary(min_size=1, max_size=512),
    index=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_byte_flip_of_a_signed_body_fails(body: bytes, index: int, flip: int) -> None:
    """Changing any byte of a signed body, to any other value, makes verification fail."""
    hdrs = headers(body)
    mutated = bytearray(body)
    mutated[index % len(body)] ^= flip
    with pytest.raises(SignatureInvalid):
        verify(hdrs, bytes(mutated), SECRET, now=NOW)


@given(body=st.binary(max_size=512), other=st.binary(max_size=512))
def test_any_other_body_fails(body: bytes, other: bytes) -> None:
    """The signed body passes and any other body (longer, shorter, changed) fails."""
    hdrs = headers(body)
    verify(hdrs, body, SECRET, now=NOW)
    if other != body:
        with pytest.raises(SignatureInvalid):
            verify(hdrs, other, SECRET, now=NOW)
