"""Hostile input (chaos item 6): whatever the network sends, nothing is enqueued or written unless
it is a validly, freshly signed ``v1.export-job.created`` naming a UUID, and nothing answers 5xx.

The webhook receiver runs for real (uvicorn on loopback, the test Redis, real Celery messages) and
hypothesis throws forged deliveries at it (headers missing, repeated, huge, non-ASCII, wrongly
prefixed, several signatures; bodies of random bytes, invalid UTF-8, non-objects, deep nesting,
wrong types, sizes around the 1 MiB cap; Content-Type and Content-Encoding lies), then validly
signed hostile bodies, so the parsing after verification is fuzzed too. Job ids and cursors that
reach the code from outside are checked before they can become part of a Redis key or a URL.
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st

from contract.celery_app import make_app
from contract.errors import BadInput, ContractViolation
from contract.names import PRODUCER_QUEUE
from contract.settings import Settings
from devtools.simulator import SimState
from pleo.client import PleoClient, make_http_client
from producer.components import produce
from producer.signature import sign
from producer.triggers import enqueue
from producer.webhook import MAX_BODY_BYTES, create_app
from tests.chaos.conftest import scale, tally
from tests.support.cli import invoke
from tests.support.queues import redis_queue
from tests.support.serving import start_in_thread

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"chaos-hostile-input-key-0042").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody-else's-subscription").decode()
CREATED = "v1.export-job.created"
JOB = "3f1c2a9e-7b4d-4e8a-9c01-5d6e7f8a9b0c"
COMPANY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
# The spec's cursor pattern, written out here so the test does not borrow the code's regex.
CURSOR_PATTERN = re.compile(r"[A-Z2-7=~]+")
UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

# Job ids that try to escape a Redis key or a URL path; none is a UUID.
HOSTILE_JOB_IDS = [
    "*",
    "pleo-export:job:*",
    "..",
    "../../v3/export-jobs",
    "a/b",
    f"{JOB}/items",
    "%2F",
    f"{JOB}%2Fitems",
    "{}",
    "{" + JOB + "}",
    f"{JOB}\n",
    "line\nbreak",
    "\r\nFLUSHALL\r\n",
    f"{JOB}?after=AAAA",
    f"{JOB}#fragment",
    f" {JOB}",
    JOB.replace("a", "\uff41"),  # fullwidth letters that look like a UUID
    JOB[:-1] + "*",
    "x" * 10_000,
    "",
]

FUZZ_SETTINGS = fuzzing(
    max_examples=scale(150, 2500),
    deadline=None,
    database=None,
    # One receiver serves every example of a test; each example cleans up after itself.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# --- the receiver and deliveries ----------------------------------------------------------------

Headers = list[tuple[str, str | bytes]]


@dataclass
class Receiver:
    """A running webhook receiver, an HTTP client for it, and the Redis behind it."""

    http: httpx.Client
    store: redis.Redis

    def post(self, body: bytes, headers: Headers) -> httpx.Response:
        """Deliver ``body`` with exactly ``headers`` (repeats kept, order kept)."""
        raw = [
            (name.encode(), value if isinstance(value, bytes) else value.encode("latin-1"))
            for name, value in headers
        ]
        return self.http.post("/webhooks/pleo", content=body, headers=raw)

    def written(self) -> list[bytes]:
        """Every key the receiver wrote for a delivery or a job, and the producer queue."""
        return sorted(self.store.scan_iter(match="pleo-export*"))

    def forget(self) -> None:
        """Drop what an accepted delivery wrote (Celery's queue bindings stay declared)."""
        keys = self.written()
        if keys:
            self.store.delete(*keys)


@pytest.fixture
def receiver(redis_url: str, rdb: redis.Redis) -> Iterator[Receiver]:
    """The webhook receiver over real HTTP on loopback, backed by the test Redis."""
    served = start_in_thread(
        create_app(Settings(redis_url=redis_url, broker_url=redis_url, webhook_secret=SECRET))
    )
    with httpx.Client(base_url=served.url, timeout=30) as http:
        yield Receiver(http, rdb)
    served.stop()


def signed_headers(
    body: bytes, *, msg_id: str | None = None, timestamp: int | None = None, secret: str = SECRET
) -> Headers:
    """The three Standard Webhooks headers Pleo would send for ``body``."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(timestamp)),
        ("webhook-signature", sign(msg_id, timestamp, body, secret)),
    ]


def created_event(job_id: object = JOB, company_id: object = COMPANY) -> bytes:
    """A ``v1.export-job.created`` body naming ``job_id``."""
    data = {"id": job_id, "companyId": company_id, "status": "pending", "numberOfItems": 3}
    return json.dumps({"eventId": str(uuid.uuid4()), "eventType": CREATED, "data": data}).encode()


# --- strategies ---------------------------------------------------------------------------------


def _header_safe(raw: bytes) -> bytes:
    """``raw`` as a header value the HTTP client can send: no NUL or line breaks, no edge blanks."""
    return raw.translate(None, b"\x00\r\n\x0b\x0c").strip(b" \t")


header_values = st.one_of(
    st.binary(max_size=200).map(_header_safe),
    st.text(st.characters(codec="latin-1", exclude_characters="\x00\r\n\x0b\x0c"), max_size=200)
    .map(str.strip)
    .map(lambda text: text.encode("latin-1")),
    st.integers(1, 64 * 1024).map(lambda size: b"v1," + b"A" * size),
    st.sampled_from([b"", b"v1,", b"v1", b",", b"v1, v1,", "caf\u00e9".encode(), b"\xff\xfe"]),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)

id_like = st.one_of(
    st.just(JOB),
    st.just(JOB.upper()),
    st.sampled_from(HOSTILE_JOB_IDS),
    st.uuids().map(str),
    json_values,
)


@st.composite
def event_shaped(draw: st.DrawFn) -> bytes:
    """A JSON object that looks like a Pleo event, with any field missing or of the wrong type."""
    event: dict[str, Any] = {}
    if draw(st.booleans()):
        event["eventType"] = draw(
            st.one_of(st.just(CREATED), st.just("v1.vendor.created"), json_values)
        )
    data_kind = draw(st.sampled_from(["object", "missing", "other"]))
    if data_kind == "object":
        data: dict[str, Any] = {}
        if draw(st.integers(0, 4)):
            data["id"] = draw(id_like)
        if draw(st.booleans()):
            data["companyId"] = draw(st.one_of(st.none(), id_like))
        data.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
        event["data"] = data
    elif data_kind == "other":
        event["data"] = draw(json_values)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32", "utf-8-sig"]))
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode(encoding)


def _nested(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = "[" * depth if opener == "[" else '{"a":' * depth
    return (inner + "0" + closer * depth).encode()


def _padded(event: bytes, size: int) -> bytes:
    return b" " * max(0, size - len(event)) + event


bodies = st.one_of(
    st.binary(max_size=2000),
    st.binary(min_size=1, max_size=200).map(lambda raw: b"\xc3\x28" + raw + b"\xed\xa0\x80"),
    json_values.map(lambda value: json.dumps(value).encode()),
    event_shaped(),
    st.builds(_nested, st.integers(1, 200_000), st.sampled_from(["[", "{"])),
    st.builds(
        _padded,
        st.just(created_event()),
        st.sampled_from(
            [MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 2 * MAX_BODY_BYTES]
        ),
    ),
)

content_headers = st.lists(
    st.tuples(
        st.sampled_from(["content-type", "content-encoding", "x-forwarded-for", "x-pleo-trace"]),
        st.sampled_from(
            [
                "application/json",
                "text/plain; charset=latin-1",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=zz",
                "gzip",
                "br",
                "deflate, gzip",
                "identity",
            ]
        ),
    ),
    max_size=3,
)


@st.composite
def forged(draw: st.DrawFn) -> tuple[bytes, Headers, str]:
    """A delivery whose signature cannot verify, and how it was spoiled."""
    body = draw(bodies)
    now = int(time.time())
    good = signed_headers(body, msg_id=f"msg_{uuid.uuid4().hex}", timestamp=now)
    defect = draw(
        st.sampled_from(
            ["missing", "wrong-secret", "tampered", "stale", "garbage", "repeated", "bad-id"]
        )
    )
    headers: Headers
    if defect == "missing":
        dropped = draw(st.sets(st.sampled_from([name for name, _ in good]), min_size=1))
        headers = [(name, value) for name, value in good if name not in dropped]
    elif defect == "wrong-secret":
        headers = signed_headers(body, timestamp=now, secret=OTHER_SECRET)
    elif defect == "tampered":
        headers = signed_headers(body + draw(st.binary(min_size=1, max_size=8)), timestamp=now)
    elif defect == "stale":
        skew = draw(st.integers(301, 10**9)) * draw(st.sampled_from([-1, 1]))
        headers = signed_headers(body, timestamp=now + skew)
    elif defect == "garbage":
        signature = str(good[2][1])
        spoilt = draw(
            st.one_of(
                header_values,
                st.just(signature.replace("v1,", "v2,")),
                st.just(signature.replace("v1,", "v1")),
                st.just(signature.replace("v1,", "V1,")),
                # One changed character early in the digest: the last ones may only be padding.
                st.just(signature[:8] + ("B" if signature[8] == "A" else "A") + signature[9:]),
                st.lists(header_values, min_size=2, max_size=5).map(b" ".join).map(_header_safe),
            )
        )
        headers = [*good[:2], ("webhook-signature", spoilt)]
    elif defect == "repeated":
        name, value = draw(st.sampled_from(good))
        again = draw(st.one_of(header_values, st.just(str(value).encode())))
        headers = [(name, again), *good] if draw(st.booleans()) else [*good, (name, again)]
    else:
        # An id that is not 1-256 printable ASCII characters, correctly signed.
        bad_id = draw(
            st.one_of(
                st.just("x" * 257), st.just("with space"), st.just("caf\u00e9"), st.just("a\tb")
            )
        )
        headers = [
            ("webhook-id", bad_id.encode("latin-1")),
            ("webhook-timestamp", str(now)),
            ("webhook-signature", sign(bad_id, now, body, SECRET)),
        ]
    if draw(st.booleans()):
        headers = [(name.title(), value) for name, value in headers]
    return body, [*headers, *draw(content_headers)], defect


# --- what the documented receiver must do with a verified body ----------------------------------


@dataclass(frozen=True)
class Expected:
    """The documented answer to a verified body: status, response status field, job enqueued."""

    status: int
    outcome: str | None = None
    job_id: str | None = None
    company_id: str | None = None


def _is_uuid(value: object) -> bool:
    return isinstance(value, str) and UUID_PATTERN.fullmatch(value) is not None


def expected_for(body: bytes) -> Expected:
    """The README's rules: 413 over 1 MiB, 400 unreadable, 202 ignored or enqueued."""
    if len(body) > MAX_BODY_BYTES:
        return Expected(413)
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("eventType"), str):
        return Expected(400)
    if event["eventType"] != CREATED:
        return Expected(202, "ignored")
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    job, company = data.get("id"), data.get("companyId")
    if not _is_uuid(job) or (company is not None and not _is_uuid(company)):
        return Expected(400)
    return Expected(202, "enqueued", str(job).lower(), str(company).lower() if company else None)


# --- the webhook, fuzzed ------------------------------------------------------------------------


@pytest.mark.timeout(300)
@FUZZ_SETTINGS
@given(delivery=forged())
def test_unverifiable_deliveries_never_enqueue_nor_fail(
    receiver: Receiver, delivery: tuple[bytes, Headers, str]
) -> None:
    """Every forged, stale, tampered or malformed-header delivery gets a 4xx and writes nothing."""
    body, headers, defect = delivery
    response = receiver.post(body, headers)
    assert 400 <= response.status_code < 500, (defect, response.status_code, response.text)
    expected = 413 if len(body) > MAX_BODY_BYTES else 401
    assert response.status_code == expected, (defect, response.text)
    assert receiver.written() == [], defect
    tally("webhook inputs fuzzed")


@pytest.mark.timeout(300)
@FUZZ_SETTINGS
@given(body=bodies, extra=content_headers)
def test_signed_hostile_bodies_enqueue_only_well_formed_events(
    receiver: Receiver, body: bytes, extra: Headers
) -> None:
    """A validly signed body enqueues only a well-formed event; others get 4xx or 202 ignored."""
    expected = expected_for(body)
    response = receiver.post(body, [*signed_headers(body), *extra])
    assert response.status_code == expected.status, (response.text, body[:200])
    if expected.outcome is not None:
        assert response.json()["status"] == expected.outcome
    queued = redis_queue(receiver.store, PRODUCER_QUEUE)
    if expected.outcome == "enqueued":
        [message] = queued
        assert message.args == [expected.job_id]
        assert message.kwargs == {"company_id": expected.company_id}
    else:
        assert queued == []
        assert receiver.written() == []
    receiver.forget()
    tally("webhook inputs fuzzed")


def test_deeply_nested_signed_json_is_a_400(receiver: Receiver) -> None:
    """JSON nested deeper than Python's stack is refused as a bad payload, not a 500."""
    for body in (_nested(100_000, "["), _nested(100_000, "{")):
        response = receiver.post(body, signed_headers(body))
        assert response.status_code == 400, response.text
    assert receiver.written() == []


def test_repeated_webhook_id_cannot_bypass_delivery_dedup(receiver: Receiver) -> None:
    """A second, unsigned webhook-id beside a signed delivery is refused: no unchecked Redis key.

    Otherwise the signature is checked against one copy and the delivery marked under the other,
    so a captured delivery replays under fresh ids and any header bytes reach a Redis key.
    """
    body = created_event()
    headers = signed_headers(body)
    for extra in ("evil id *", "another"):
        for arranged in ([("webhook-id", extra), *headers], [*headers, ("webhook-id", extra)]):
            response = receiver.post(body, arranged)
            assert response.status_code == 401, response.text
            assert response.json() == {"error": "repeated header webhook-id"}
    assert receiver.written() == []


# --- replays ------------------------------------------------------------------------------------


def test_replays_outside_five_minutes_are_refused(receiver: Receiver) -> None:
    """Signed deliveries 301 s old or ahead get 401 and enqueue nothing; 299 s old is taken."""
    for offset, reason in ((-301, "too old"), (301, "in the future")):
        body = created_event()
        # Rounded away from now, so the time the request takes cannot bring it back in.
        stamp = math.floor(time.time()) - 301 if offset < 0 else math.ceil(time.time()) + 301
        response = receiver.post(body, signed_headers(body, timestamp=stamp))
        assert response.status_code == 401
        assert response.json() == {"error": f"webhook-timestamp is {reason}"}
        assert receiver.written() == []
    body = created_event()
    response = receiver.post(body, signed_headers(body, timestamp=math.ceil(time.time()) - 299))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "enqueued"
    assert [m.args for m in redis_queue(receiver.store, PRODUCER_QUEUE)] == [[JOB]]


def test_tolerance_edges_on_a_fixed_clock(redis_url: str, rdb: redis.Redis) -> None:
    """On a pinned clock, ages of exactly ±300 s are accepted and ±301 s refused."""
    now = 1_900_000_000
    app = create_app(
        Settings(redis_url=redis_url, broker_url=redis_url, webhook_secret=SECRET),
        clock=lambda: float(now),
    )
    served = start_in_thread(app)
    try:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            pinned = Receiver(http, rdb)
            answers = {}
            for offset in (-301, -300, 300, 301):
                body = created_event(str(uuid.uuid4()))
                response = pinned.post(body, signed_headers(body, timestamp=now + offset))
                answers[offset] = response.status_code
    finally:
        served.stop()
    assert answers == {-301: 401, -300: 202, 300: 202, 301: 401}
    assert len(redis_queue(rdb, PRODUCER_QUEUE)) == 2


# --- job ids from outside -----------------------------------------------------------------------


def test_hostile_job_ids_are_refused_before_redis_or_pleo(
    settings: Settings, sim_state: SimState, rdb: redis.Redis
) -> None:
    """enqueue, produce and the Pleo client refuse non-UUID ids; no Redis write, no request."""
    app = make_app(settings)
    # One client for every id: building one loads the CA bundle, 50 ms each time.
    with make_http_client(settings) as http:
        client = PleoClient(http, settings)
        for job_id in HOSTILE_JOB_IDS:
            with pytest.raises(BadInput, match="not a UUID"):
                enqueue(job_id, settings=settings)
            with pytest.raises(BadInput, match="not a UUID"):
                enqueue(JOB, company_id=job_id, settings=settings)
            with pytest.raises(BadInput, match="not a UUID"):
                produce(job_id, settings=settings, app=app)
            for call in (client.get_job, client.iter_job_items, client.iter_export_items):
                with pytest.raises(BadInput, match="not a UUID"):
                    call(job_id)
            assert rdb.dbsize() == 0, repr(job_id)
            tally("hostile job ids refused")
    app.close()
    assert sim_state.calls == []


def assert_refused_as_bad_input(command: list[str], code: int, stdout: str, stderr: str) -> None:
    """Exit 2, nothing on stdout, one sentence on stderr saying the id is not a UUID."""
    assert code == 2, (command, stderr)
    assert stdout == ""
    [line] = stderr.splitlines()
    assert line.startswith("pleo-export: "), line
    assert line.endswith("is not a UUID."), line


def test_cli_refuses_hostile_job_ids_with_exit_2(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    settings: Settings,
    sim_state: SimState,
    rdb: redis.Redis,
) -> None:
    """pleo-export run/enqueue/status exit 2, one sentence on stderr; nothing written or sent."""
    commands = [
        [command, job_id] for job_id in HOSTILE_JOB_IDS for command in ("run", "enqueue", "status")
    ]
    commands += [["enqueue", JOB, "--company-id", job_id] for job_id in HOSTILE_JOB_IDS]
    # Every id through the same entry point in this process (an interpreter start each would
    # cost seconds), and each of the four command shapes once more as a real process.
    for command in commands:
        result = invoke(settings, *command)
        assert_refused_as_bad_input(command, result.exit_code, result.stdout, result.stderr)
    real = [["run", "*"], ["enqueue", "\r\nFLUSHALL\r\n"], ["status", "../../v3/export-jobs"]]
    real += [["enqueue", JOB, "--company-id", "pleo-export:job:*"]]
    # Two at a time: each is a separate interpreter, and the machine has two cores.
    with ThreadPoolExecutor(2) as pool:
        finished = list(pool.map(lambda command: cli(*command), real))
    for command, done in zip(real, finished, strict=True):
        assert_refused_as_bad_input(command, done.returncode, done.stdout, done.stderr)
    assert rdb.dbsize() == 0
    assert sim_state.calls == []
    tally("hostile job ids refused", len({command[-1] for command in commands}))


def test_webhook_refuses_hostile_job_ids_with_400(receiver: Receiver) -> None:
    """A signed created event naming a hostile job or company id gets 400 and writes nothing."""
    before = receiver.store.dbsize()
    for hostile in HOSTILE_JOB_IDS:
        for body in (created_event(hostile), created_event(JOB, company_id=hostile)):
            response = receiver.post(body, signed_headers(body))
            assert response.status_code == 400, (hostile, response.text)
            assert "not a UUID" in response.json()["error"]
        tally("hostile job ids refused")
    assert receiver.store.dbsize() == before
    assert receiver.written() == []


# --- cursors from Pleo --------------------------------------------------------------------------


def _page(end_cursor: object, *, has_next: bool) -> dict[str, Any]:
    info = {
        "currentRequestPagination": {"parameters": {}},
        "hasNextPage": has_next,
        "hasPreviousPage": False,
        "endCursor": end_cursor,
        "total": None,
    }
    entry = str(uuid.uuid4())
    return {
        "data": [{"accountingEntryId": entry, "exportJobId": JOB, "status": "pending"}],
        "pagination": info,
    }


def _walk_with_cursor(cursor: object) -> tuple[list[httpx.Request], Exception | None]:
    """Walk a job whose first page hands out ``cursor``; the requests sent and the error raised."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(
            200, json=_page(cursor if len(requests) == 1 else None, has_next=len(requests) == 1)
        )

    config = Settings(api_url="https://pleo.test", api_token="t", retry_attempts=1)
    with make_http_client(config, transport=httpx.MockTransport(answer)) as http:
        try:
            list(PleoClient(http, config).iter_job_items(JOB))
        except ContractViolation as exc:
            return requests, exc
    return requests, None


HOSTILE_CURSORS: list[object] = [
    "ABC/DEF",
    "../..",
    "AB?limit=100000",
    "AB&after=CD",
    "AB%2FCD",
    "AB CD",
    "AB\nCD",
    "AB\r\nHost: evil",
    "abc",
    "AB1",
    "AB8",
    "AB#x",
    "\uff21\uff22",
    "",
    12345,
    ["AB"],
    {"after": "AB"},
    True,
]


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS, ids=repr)
def test_hostile_cursor_stops_the_walk_before_another_request(cursor: object) -> None:
    """A page whose endCursor breaks ^[A-Z2-7=~]+$ raises ContractViolation after one request."""
    requests, error = _walk_with_cursor(cursor)
    assert isinstance(error, ContractViolation)
    assert "endCursor" in error.message
    assert error.job_id == JOB
    assert len(requests) == 1
    tally("hostile cursors refused")


@fuzzing(max_examples=scale(300, 3000), deadline=None, database=None)
@given(cursor=st.one_of(st.text(max_size=60), st.from_regex(CURSOR_PATTERN, fullmatch=True)))
def test_only_pattern_cursors_are_ever_sent_back(cursor: str) -> None:
    """Any endCursor: in the pattern, it is sent back verbatim as after=; else the walk stops."""
    requests, error = _walk_with_cursor(cursor)
    if CURSOR_PATTERN.fullmatch(cursor):
        assert error is None
        assert len(requests) == 2
        assert requests[1].url.path == f"/v3/export-jobs/{JOB}/items"
        assert requests[1].url.params.get_list("after") == [cursor]
    else:
        assert isinstance(error, ContractViolation)
        assert len(requests) == 1
        tally("hostile cursors refused")
